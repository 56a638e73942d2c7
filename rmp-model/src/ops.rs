//! The page operations on the RMP with their architectural return codes (AMD APM vol. 3,
//! RMPUPDATE, PSMASH, RMPADJUST, PVALIDATE; codes as Linux arch/x86/include/asm/sev.h defines
//! them). Rules the public record does not settle are marked "choice" and listed in docs/rmp.md.

use crate::hazard::Hazard;
use crate::rmp::{vmpl_perm, PageSize, Rmp, RmpEntry, MAX_ASID, PTES_PER_2M};

/// Return codes of RMPUPDATE, PSMASH, RMPADJUST and PVALIDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RmpStatus {
    Success = 0,
    FailInput = 1,
    FailPermission = 2,
    FailInuse = 3,
    FailOverlap = 4,
    FailSizeMismatch = 6,
    /// PVALIDATE left the Validated bit as it was (CF=1); Linux reports it as 255
    /// (PVALIDATE_FAIL_NOUPDATE).
    NoUpdate = 255,
}

impl RmpStatus {
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn name(self) -> &'static str {
        match self {
            RmpStatus::Success => "SUCCESS",
            RmpStatus::FailInput => "FAIL_INPUT",
            RmpStatus::FailPermission => "FAIL_PERMISSION",
            RmpStatus::FailInuse => "FAIL_INUSE",
            RmpStatus::FailOverlap => "FAIL_OVERLAP",
            RmpStatus::FailSizeMismatch => "FAIL_SIZEMISMATCH",
            RmpStatus::NoUpdate => "FAIL_NOUPDATE",
        }
    }
}

/// RMPUPDATE's new state (Linux `struct rmp_state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmpState {
    pub gpa: u64,
    pub assigned: bool,
    pub page_size: PageSize,
    pub immutable: bool,
    pub asid: u16,
}

impl RmpState {
    /// rmp_make_private().
    pub fn private(gpa: u64, asid: u16, page_size: PageSize) -> RmpState {
        RmpState { gpa, assigned: true, page_size, immutable: false, asid }
    }
    /// rmp_make_shared().
    pub fn shared(page_size: PageSize) -> RmpState {
        RmpState { page_size, ..Default::default() }
    }
}

/// RMPUPDATE's result: the status, and the conversion hazards the update created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateResult {
    pub status: RmpStatus,
    pub hazards: Vec<Hazard>,
    /// The pfns whose raw entries the update rewrote (the page, the 2 MiB-aligned entry whose
    /// subpage_count moved, a split 2 MiB page): what a mirror of the table must copy again.
    pub changed: std::ops::Range<u64>,
}

/// Who runs RMPADJUST / PVALIDATE: a guest's ASID at a VMPL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCtx {
    pub asid: u16,
    pub vmpl: u8,
}

/// RMPADJUST's attributes (RDX): target VMPL, permission mask, VMSA bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdjustAttrs {
    pub target_vmpl: u8,
    pub perms: u8,
    pub vmsa: bool,
}

/// Bits of the #NPF error code (EXITINFO1) an RMP violation sets (Linux
/// arch/x86/include/asm/kvm_host.h PFERR_GUEST_*).
pub mod npf {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const RMP: u64 = 1 << 31;
    pub const FINAL: u64 = 1 << 32;
    pub const ENC: u64 = 1 << 34;
    /// The guest's access size differs from the RMP entry's (KVM PSMASHes on it).
    pub const SIZEM: u64 = 1 << 35;
    pub const VMPL: u64 = 1 << 36;
}

/// What a guest instruction does: a return code, or an exception instead (APM: the RMP check on
/// the instruction's own access comes before the instruction runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestResult {
    Status(RmpStatus),
    /// A nested page fault with these [`npf`] bits in its error code.
    NestedPageFault {
        error_code: u64,
    },
    /// #GP: PVALIDATE at a VMPL other than 0.
    GeneralProtection,
}

fn npf(extra: u64) -> GuestResult {
    GuestResult::NestedPageFault { error_code: npf::PRESENT | npf::RMP | npf::ENC | npf::FINAL | extra }
}

impl Rmp {
    /// RMPUPDATE: set the RMP entry of the page at `spa` (hypervisor instruction).
    pub fn rmpupdate(&mut self, spa: u64, new: &RmpState) -> UpdateResult {
        let status = self.rmpupdate_checks(spa, new);
        if status != RmpStatus::Success {
            return UpdateResult { status, hazards: Vec::new(), changed: 0..0 };
        }
        let pfn = spa >> 12;
        let n = new.page_size.pages();
        // Making a page private is allowed by the hardware even if a T=0 mapping is live; only
        // pages that were not assigned before are new hazards.
        let mut hazards = Vec::new();
        if new.assigned && !self.hazards.is_empty() {
            for m in self.hazards.overlapping(spa, new.page_size.bytes()) {
                let lo = m.spa.max(spa) >> 12;
                let hi = (m.spa.saturating_add(m.size)).min(spa.saturating_add(new.page_size.bytes())).div_ceil(0x1000);
                for p in lo..hi {
                    if !self.entries[p as usize].assigned {
                        hazards.push(Hazard { spa: p << 12, asid: new.asid, mapping: m });
                    }
                }
            }
        }
        let head = pfn & !(PTES_PER_2M - 1);
        let mut changed = head..pfn.saturating_add(n);
        // A 4 KiB update inside a hypervisor 2 MiB page splits it first (choice: docs/rmp.md).
        if new.page_size == PageSize::Size4K && self.entries[pfn as usize].page_size == PageSize::Size2M {
            changed = head..head.saturating_add(PTES_PER_2M);
            for p in head..head.saturating_add(PTES_PER_2M) {
                let e = RmpEntry { page_size: PageSize::Size4K, ..self.entries[p as usize] };
                self.put(p, e);
            }
        }
        // RMPUPDATE clears Validated and VMSA; VMPL0 gets every permission on an assigned page
        // and the lower VMPLs none (choice: docs/rmp.md).
        for i in 0..n {
            let e = RmpEntry {
                assigned: new.assigned,
                page_size: new.page_size,
                immutable: new.immutable,
                gpa: if new.assigned { (new.gpa & !0xfff).saturating_add(i << 12) } else { 0 },
                asid: new.asid,
                vmpl: if new.assigned { [vmpl_perm::ALL, 0, 0, 0] } else { [0; 4] },
                ..Default::default()
            };
            self.put(pfn.saturating_add(i), e);
        }
        UpdateResult { status: RmpStatus::Success, hazards, changed }
    }

    fn rmpupdate_checks(&self, spa: u64, new: &RmpState) -> RmpStatus {
        let pfn = spa >> 12;
        let n = new.page_size.pages();
        if spa & (new.page_size.bytes().wrapping_sub(1)) != 0 || pfn.saturating_add(n) > self.pages() {
            return RmpStatus::FailInput;
        }
        if new.asid > MAX_ASID || (!new.assigned && (new.asid != 0 || new.immutable)) {
            return RmpStatus::FailInput;
        }
        // GPA bits 51:12 only, aligned to the page size.
        if new.gpa >> 52 != 0 || (new.assigned && new.gpa & (new.page_size.bytes().wrapping_sub(1)) != 0) || new.gpa & 0xfff != 0 {
            return RmpStatus::FailInput;
        }
        let cur = self.entries[pfn as usize];
        // A 4 KiB update inside a 2 MiB page touches the whole page.
        let (first, count) = if cur.page_size == PageSize::Size2M { (pfn & !(PTES_PER_2M - 1), PTES_PER_2M) } else { (pfn, n) };
        let touched = first..first.saturating_add(count);
        if touched.clone().any(|p| self.entries[p as usize].immutable) {
            return RmpStatus::FailPermission;
        }
        if touched.clone().any(|p| self.in_use.contains(&p)) {
            return RmpStatus::FailInuse;
        }
        match new.page_size {
            // A 4 KiB update inside an assigned 2 MiB page must wait for PSMASH (Linux
            // sev_gmem_invalidate PSMASHes before converting a 4 KiB sub-page).
            PageSize::Size4K if cur.page_size == PageSize::Size2M && cur.assigned => RmpStatus::FailOverlap,
            // A 2 MiB entry needs its 511 followers not assigned as 4 KiB pages: the head's
            // subpage_count is 0 (the "inconsistent 4 KiB entries" of FAIL_OVERLAP).
            PageSize::Size2M if cur.page_size == PageSize::Size4K && cur.subpage_count != 0 => RmpStatus::FailOverlap,
            _ => RmpStatus::Success,
        }
    }

    /// PSMASH: split the 2 MiB entry at `spa` into 512 4 KiB entries with the same state and
    /// consecutive GPAs (hypervisor instruction).
    pub fn psmash(&mut self, spa: u64) -> RmpStatus {
        let pfn = spa >> 12;
        if spa & (PageSize::Size2M.bytes().wrapping_sub(1)) != 0 || pfn.saturating_add(PTES_PER_2M) > self.pages() {
            return RmpStatus::FailInput;
        }
        let head = self.entries[pfn as usize];
        // Choice: PSMASH of an entry that is not 2 MiB is FAIL_INPUT.
        if head.page_size != PageSize::Size2M {
            return RmpStatus::FailInput;
        }
        if head.immutable {
            return RmpStatus::FailPermission;
        }
        if (pfn..pfn.saturating_add(PTES_PER_2M)).any(|p| self.in_use.contains(&p)) {
            return RmpStatus::FailInuse;
        }
        for p in pfn..pfn.saturating_add(PTES_PER_2M) {
            let e = RmpEntry { page_size: PageSize::Size4K, ..self.entries[p as usize] };
            self.put(p, e);
        }
        RmpStatus::Success
    }

    /// The guest's page at `spa`, mapped at `gpa`, checked as the instruction's own access: the
    /// first 4 KiB entry of the page, or the nested page fault the access takes.
    fn guest_page(&self, caller: GuestCtx, spa: u64, gpa: u64, size: PageSize) -> Result<(u64, RmpEntry), GuestResult> {
        let pfn = spa >> 12;
        let Some(&e) = self.entry(pfn) else { return Err(npf(0)) };
        if !e.assigned || e.asid != caller.asid || e.gpa != gpa & !0xfff || e.immutable {
            return Err(npf(0));
        }
        // A 4 KiB access to a 2 MiB page faults with SIZEM (KVM sev_handle_rmp_fault PSMASHes
        // on it); a 2 MiB access to a 4 KiB page is FAIL_SIZEMISMATCH.
        if size == PageSize::Size4K && e.page_size == PageSize::Size2M {
            return Err(npf(npf::SIZEM));
        }
        if size == PageSize::Size2M && e.page_size == PageSize::Size4K {
            return Err(GuestResult::Status(RmpStatus::FailSizeMismatch));
        }
        Ok((pfn, e))
    }

    /// RMPADJUST from a guest: set the permissions of a lower-privileged VMPL (and the VMSA bit)
    /// on the guest's page at `spa`, mapped at `gpa`.
    pub fn rmpadjust(&mut self, caller: GuestCtx, spa: u64, gpa: u64, size: PageSize, attrs: AdjustAttrs) -> GuestResult {
        let align = size.bytes().wrapping_sub(1);
        if spa & align != 0 || gpa & align != 0 || attrs.perms & !vmpl_perm::ALL != 0 || attrs.target_vmpl > 3 || caller.vmpl > 3 {
            return GuestResult::Status(RmpStatus::FailInput);
        }
        // Choice: a VMSA is a 4 KiB page.
        if attrs.vmsa && size == PageSize::Size2M {
            return GuestResult::Status(RmpStatus::FailInput);
        }
        let (pfn, e) = match self.guest_page(caller, spa, gpa, size) {
            Ok(x) => x,
            Err(r) => return r,
        };
        // Only a more privileged VMPL may adjust, and it cannot grant what it lacks.
        if attrs.target_vmpl <= caller.vmpl || attrs.perms & !e.vmpl[usize::from(caller.vmpl)] != 0 {
            return GuestResult::Status(RmpStatus::FailPermission);
        }
        for p in pfn..pfn.saturating_add(size.pages()) {
            let mut s = self.entries[p as usize];
            s.vmpl[usize::from(attrs.target_vmpl)] = attrs.perms;
            s.vmsa = attrs.vmsa;
            self.put(p, s);
        }
        GuestResult::Status(RmpStatus::Success)
    }

    /// PVALIDATE from a guest: set or clear the Validated bit of its page at `spa` mapped at `gpa`.
    pub fn pvalidate(&mut self, caller: GuestCtx, spa: u64, gpa: u64, size: PageSize, validate: bool) -> GuestResult {
        // Only VMPL0 may execute PVALIDATE (lower VMPLs ask an SVSM to do it).
        if caller.vmpl != 0 {
            return GuestResult::GeneralProtection;
        }
        if spa & (size.bytes().wrapping_sub(1)) != 0 || gpa & (size.bytes().wrapping_sub(1)) != 0 {
            return GuestResult::Status(RmpStatus::FailInput);
        }
        let (pfn, e) = match self.guest_page(caller, spa, gpa, size) {
            Ok(x) => x,
            Err(r) => return r,
        };
        if e.validated == validate {
            return GuestResult::Status(RmpStatus::NoUpdate);
        }
        for p in pfn..pfn.saturating_add(size.pages()) {
            let s = RmpEntry { validated: validate, ..self.entries[p as usize] };
            self.put(p, s);
        }
        GuestResult::Status(RmpStatus::Success)
    }
}
