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

/// What a guest instruction does when the RMP check itself fails: a nested page fault with the
/// RMP bit, not a return code (APM: the guest's access is checked before the instruction runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestResult {
    Status(RmpStatus),
    NestedPageFault,
}

impl Rmp {
    /// RMPUPDATE: set the RMP entry of the page at `spa` (hypervisor instruction).
    pub fn rmpupdate(&mut self, spa: u64, new: &RmpState) -> UpdateResult {
        let status = self.rmpupdate_checks(spa, new);
        if status != RmpStatus::Success {
            return UpdateResult { status, hazards: Vec::new() };
        }
        let pfn = spa >> 12;
        // Making a page private is allowed by the hardware even if a T=0 mapping is live.
        let hazards = if new.assigned {
            self.hazards
                .overlapping(spa, new.page_size.bytes())
                .into_iter()
                .flat_map(|m| {
                    let lo = m.spa.max(spa) >> 12;
                    let hi = (m.spa + m.size).min(spa + new.page_size.bytes()) >> 12;
                    (lo..hi).map(move |p| Hazard { spa: p << 12, asid: new.asid, mapping: m })
                })
                .collect()
        } else {
            Vec::new()
        };
        // RMPUPDATE clears Validated and VMSA; VMPL0 gets every permission on an assigned page
        // and the lower VMPLs none (choice: docs/rmp.md).
        let e = RmpEntry {
            assigned: new.assigned,
            page_size: new.page_size,
            immutable: new.immutable,
            gpa: if new.assigned { new.gpa & !0xfff } else { 0 },
            asid: new.asid,
            vmsa: false,
            validated: false,
            vmpl: if new.assigned { [vmpl_perm::ALL, 0, 0, 0] } else { [0; 4] },
            ..self.entries[pfn as usize]
        };
        self.entries[pfn as usize] = e;
        self.recount(pfn);
        UpdateResult { status: RmpStatus::Success, hazards }
    }

    fn rmpupdate_checks(&self, spa: u64, new: &RmpState) -> RmpStatus {
        let pfn = spa >> 12;
        let n = new.page_size.bytes() >> 12;
        if spa & (new.page_size.bytes() - 1) != 0 || pfn.saturating_add(n) > self.pages() {
            return RmpStatus::FailInput;
        }
        if new.asid > MAX_ASID || (!new.assigned && (new.asid != 0 || new.immutable)) {
            return RmpStatus::FailInput;
        }
        if new.gpa & 0xfff != 0 || (new.assigned && new.gpa & (new.page_size.bytes() - 1) != 0) {
            return RmpStatus::FailInput;
        }
        let head = pfn & !(PTES_PER_2M - 1);
        let head_e = self.entries[head as usize];
        // Entries an update touches: the page (and for 2 MiB its 511 followers).
        let touched = pfn..pfn + n;
        if touched.clone().any(|p| self.lookup(p).is_some_and(|e| e.immutable)) {
            return RmpStatus::FailPermission;
        }
        if touched.clone().any(|p| self.in_use.contains(&p)) || self.in_use.contains(&head) && head_e.page_size == PageSize::Size2M {
            return RmpStatus::FailInuse;
        }
        match new.page_size {
            // A 4 KiB update inside an assigned 2 MiB page must wait for PSMASH.
            PageSize::Size4K => {
                if head_e.page_size == PageSize::Size2M && head_e.assigned && (pfn != head || new.assigned) {
                    return RmpStatus::FailOverlap;
                }
            }
            // A 2 MiB entry needs its 511 followers in the hypervisor state (choice: the
            // "inconsistent 4 KiB entries" of FAIL_OVERLAP).
            PageSize::Size2M => {
                if (pfn + 1..pfn + n).any(|p| self.entries[p as usize].assigned) {
                    return RmpStatus::FailOverlap;
                }
            }
        }
        RmpStatus::Success
    }

    /// PSMASH: split the 2 MiB entry at `spa` into 512 4 KiB entries with the same state and
    /// consecutive GPAs (hypervisor instruction).
    pub fn psmash(&mut self, spa: u64) -> RmpStatus {
        let pfn = spa >> 12;
        if spa & (PageSize::Size2M.bytes() - 1) != 0 || pfn.saturating_add(PTES_PER_2M) > self.pages() {
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
        if (pfn..pfn + PTES_PER_2M).any(|p| self.in_use.contains(&p)) {
            return RmpStatus::FailInuse;
        }
        for i in 0..PTES_PER_2M {
            let mut e = head;
            e.page_size = PageSize::Size4K;
            if head.assigned {
                e.gpa = head.gpa + i * 0x1000;
            }
            // The VMSA bit stays with the first page only.
            e.vmsa = head.vmsa && i == 0;
            self.entries[(pfn + i) as usize] = e;
        }
        self.recount(pfn);
        RmpStatus::Success
    }

    /// RMPADJUST from a guest: set the permissions of a lower-privileged VMPL (and the VMSA bit)
    /// on the guest's page at `spa`, mapped at `gpa`.
    pub fn rmpadjust(&mut self, caller: GuestCtx, spa: u64, gpa: u64, size: PageSize, attrs: AdjustAttrs) -> GuestResult {
        let pfn = spa >> 12;
        if spa & (size.bytes() - 1) != 0 || attrs.perms & !vmpl_perm::ALL != 0 || attrs.target_vmpl > 3 {
            return GuestResult::Status(RmpStatus::FailInput);
        }
        let Some(e) = self.lookup(pfn) else { return GuestResult::NestedPageFault };
        if !e.assigned || e.asid != caller.asid || e.gpa != gpa & !0xfff {
            return GuestResult::NestedPageFault;
        }
        // Only a more privileged VMPL may adjust, and it cannot grant what it lacks.
        if attrs.target_vmpl <= caller.vmpl || attrs.perms & !e.vmpl[caller.vmpl as usize & 3] != 0 {
            return GuestResult::Status(RmpStatus::FailPermission);
        }
        if size != e.page_size {
            return GuestResult::Status(RmpStatus::FailSizeMismatch);
        }
        let target = if e.page_size == PageSize::Size2M { pfn & !(PTES_PER_2M - 1) } else { pfn };
        let slot = &mut self.entries[target as usize];
        slot.vmpl[attrs.target_vmpl as usize] = attrs.perms;
        slot.vmsa = attrs.vmsa;
        GuestResult::Status(RmpStatus::Success)
    }

    /// PVALIDATE from a guest: set or clear the Validated bit of its page at `spa` mapped at `gpa`.
    pub fn pvalidate(&mut self, caller: GuestCtx, spa: u64, gpa: u64, size: PageSize, validate: bool) -> GuestResult {
        let pfn = spa >> 12;
        if spa & (size.bytes() - 1) != 0 || gpa & (size.bytes() - 1) != 0 {
            return GuestResult::Status(RmpStatus::FailInput);
        }
        let Some(e) = self.lookup(pfn) else { return GuestResult::NestedPageFault };
        if !e.assigned || e.asid != caller.asid || e.gpa != gpa & !0xfff || e.immutable {
            return GuestResult::NestedPageFault;
        }
        // Choice: a size different from the RMP entry's, in either direction, is FAIL_SIZEMISMATCH
        // (Linux retries a 2 MiB PVALIDATE as 512 4 KiB ones on it).
        if size != e.page_size {
            return GuestResult::Status(RmpStatus::FailSizeMismatch);
        }
        let target = if e.page_size == PageSize::Size2M { pfn & !(PTES_PER_2M - 1) } else { pfn };
        let slot = &mut self.entries[target as usize];
        if slot.validated == validate {
            return GuestResult::Status(RmpStatus::NoUpdate);
        }
        slot.validated = validate;
        GuestResult::Status(RmpStatus::Success)
    }
}
