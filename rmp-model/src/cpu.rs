//! The CPU-side RMP check, for the TCG plugin: a host write to an assigned page is an RMP #PF
//! (error code bit 31, Linux X86_PF_RMP); host reads are not checked (APM vol. 2 §15.36.10:
//! encryption already protects them).

use crate::rmp::{PageSize, Rmp, RmpEntry, PTES_PER_2M};

/// #PF error-code bits (Linux arch/x86/include/asm/trap_pf.h).
pub mod pf {
    pub const PROT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const RMP: u64 = 1 << 31;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RmpPageFault {
    pub spa: u64,
    pub error_code: u64,
}

/// The check of one host write to `spa` through a 4 KiB mapping, given only a way to read RMP
/// entries by pfn (a process that sees the published raw entries, like the TCG plugin, has no
/// `Rmp`). Same answer as [`Rmp::host_access`] with a 4 KiB mapping.
pub fn host_write(lookup: impl Fn(u64) -> Option<RmpEntry>, spa: u64, user: bool) -> Result<(), (RmpPageFault, RmpEntry)> {
    let pfn = spa >> 12;
    let head = lookup(pfn & !(PTES_PER_2M - 1));
    let e = match head {
        Some(h) if h.page_size == PageSize::Size2M => h,
        _ => match lookup(pfn) {
            Some(e) => e,
            None => return Ok(()),
        },
    };
    if e.assigned {
        let error_code = pf::PROT | pf::WRITE | pf::RMP | if user { pf::USER } else { 0 };
        return Err((RmpPageFault { spa, error_code }, e));
    }
    Ok(())
}

impl Rmp {
    /// A host (hypervisor) access to `spa` through a mapping of `mapping` size. A write faults if
    /// the page is assigned (to a guest or the firmware), and, through a 2 MiB mapping, if any
    /// page of the 2 MiB region is (why Linux splits its direct map). Pages outside the RMP are
    /// not checked.
    pub fn host_access(&self, spa: u64, write: bool, user: bool, mapping: PageSize) -> Result<(), RmpPageFault> {
        if !write {
            return Ok(());
        }
        let pfn = spa >> 12;
        let Some(e) = self.lookup(pfn) else { return Ok(()) };
        let blocked = e.assigned || (mapping == PageSize::Size2M && self.assigned_in_region(pfn) != 0);
        if blocked {
            let error_code = pf::PROT | pf::WRITE | pf::RMP | if user { pf::USER } else { 0 };
            return Err(RmpPageFault { spa, error_code });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::RmpState;

    #[test]
    fn host_writes_to_assigned_pages_fault_reads_do_not() {
        let mut rmp = Rmp::new(2048);
        rmp.rmpupdate(0x5000, &RmpState::private(0x9000, 1, PageSize::Size4K));
        assert_eq!(rmp.host_access(0x5010, false, false, PageSize::Size4K), Ok(()));
        let f = rmp.host_access(0x5010, true, false, PageSize::Size4K).unwrap_err();
        assert_eq!(f.error_code, 0x8000_0003);
        assert_eq!(f.error_code >> 31 & 1, 1, "bit 31 = RMP");
        assert_eq!(rmp.host_access(0x6000, true, false, PageSize::Size4K), Ok(()));
        assert!(rmp.host_access(0x6000, true, true, PageSize::Size2M).is_err(), "2 MiB mapping over an assigned 4 KiB page");
        assert_eq!(rmp.host_access(0x20_0000, true, false, PageSize::Size2M), Ok(()));
        assert_eq!(rmp.host_access(0x1_0000_0000, true, false, PageSize::Size4K), Ok(()), "outside the RMP");
        // The same answers from raw entries alone.
        let raw = |pfn: u64| rmp.raw(pfn).map(|b| RmpEntry::from_raw(&b));
        for spa in [0x5010u64, 0x6000, 0x1_0000_0000] {
            assert_eq!(host_write(raw, spa, false).is_err(), rmp.host_access(spa, true, false, PageSize::Size4K).is_err(), "{spa:#x}");
        }
        rmp.rmpupdate(0x20_0000, &RmpState::private(0x20_0000, 1, PageSize::Size2M));
        let raw = |pfn: u64| rmp.raw(pfn).map(|b| RmpEntry::from_raw(&b));
        assert!(host_write(raw, 0x3f_f000, false).is_err(), "inside an assigned 2 MiB page");
    }
}
