//! Every return code of the page operations, and the state each success leaves.

use rmp_model::ops::{AdjustAttrs, GuestCtx, GuestResult, RmpState};
use rmp_model::rmp::vmpl_perm;
use rmp_model::{PageSize, Rmp, RmpEntry, RmpStatus};

const K4: PageSize = PageSize::Size4K;
const M2: PageSize = PageSize::Size2M;

fn rmp() -> Rmp {
    Rmp::new(4096) // 16 MiB
}

#[test]
fn rmpupdate_success_sets_fields_and_clears_validated_and_vmpl() {
    let mut r = rmp();
    assert_eq!(r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4)).status, RmpStatus::Success);
    let g = GuestCtx { asid: 7, vmpl: 0 };
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, true), GuestResult::Status(RmpStatus::Success));
    r.rmpadjust(g, 0x5000, 0x9000, K4, AdjustAttrs { target_vmpl: 1, perms: vmpl_perm::READ, vmsa: false });
    let e = r.lookup(5).unwrap();
    assert!(e.assigned && e.validated && e.asid == 7 && e.gpa == 0x9000 && e.vmpl[1] == vmpl_perm::READ);
    // Re-assigning clears Validated and the lower VMPLs' permissions.
    assert_eq!(r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4)).status, RmpStatus::Success);
    let e = r.lookup(5).unwrap();
    assert!(!e.validated && e.vmpl == [vmpl_perm::ALL, 0, 0, 0]);
    assert_eq!(r.rmpupdate(0x5000, &RmpState::shared(K4)).status, RmpStatus::Success);
    assert_eq!(*r.entry(5).unwrap(), RmpEntry::default());
}

#[test]
fn rmpupdate_fail_input() {
    let mut r = rmp();
    for (spa, st) in [
        (0x5008, RmpState::private(0x9000, 1, K4)),         // unaligned SPA
        (0x1000_0000, RmpState::private(0x9000, 1, K4)),    // outside the RMP
        (0x1000, RmpState::private(0x20_0000, 1, M2)),      // 2 MiB at a 4 KiB address
        (0x5000, RmpState::private(0x9000, 0x400, K4)),     // ASID too large
        (0x5000, RmpState { asid: 3, ..RmpState::shared(K4) }), // shared with an ASID
        (0x20_0000, RmpState::private(0x1000, 1, M2)),      // 2 MiB GPA not aligned
    ] {
        assert_eq!(r.rmpupdate(spa, &st).status, RmpStatus::FailInput, "{spa:#x} {st:?}");
    }
    let mut short = Rmp::new(0x700); // 7 MiB: the 2 MiB page at 6 MiB runs past the end
    assert_eq!(short.rmpupdate(0x60_0000, &RmpState::private(0x20_0000, 1, M2)).status, RmpStatus::FailInput);
    assert_eq!(short.psmash(0x60_0000), RmpStatus::FailInput);
}

#[test]
fn rmpupdate_fail_permission_on_immutable_pages() {
    let mut r = rmp();
    r.firmware_set(9, RmpEntry { assigned: true, immutable: true, ..Default::default() });
    assert_eq!(r.rmpupdate(0x9000, &RmpState::shared(K4)).status, RmpStatus::FailPermission);
    assert_eq!(r.rmpupdate(0, &RmpState::private(0, 1, M2)).status, RmpStatus::FailPermission, "2 MiB over it");
}

#[test]
fn rmpupdate_and_psmash_fail_inuse() {
    let mut r = rmp();
    r.rmpupdate(0x20_0000, &RmpState::private(0x40_0000, 2, M2));
    r.set_in_use(0x200, true);
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::shared(M2)).status, RmpStatus::FailInuse);
    assert_eq!(r.psmash(0x20_0000), RmpStatus::FailInuse);
    r.set_in_use(0x200, false);
    assert_eq!(r.psmash(0x20_0000), RmpStatus::Success);
}

#[test]
fn rmpupdate_fail_overlap() {
    let mut r = rmp();
    // A 2 MiB entry over a region whose 4 KiB entries are not all hypervisor-owned.
    r.rmpupdate(0x20_5000, &RmpState::private(0x5000, 1, K4));
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::private(0, 1, M2)).status, RmpStatus::FailOverlap);
    // A 4 KiB update inside an assigned 2 MiB page needs PSMASH first.
    assert_eq!(r.rmpupdate(0x40_0000, &RmpState::private(0x40_0000, 1, M2)).status, RmpStatus::Success);
    assert_eq!(r.rmpupdate(0x40_3000, &RmpState::shared(K4)).status, RmpStatus::FailOverlap);
    assert_eq!(r.psmash(0x40_0000), RmpStatus::Success);
    assert_eq!(r.rmpupdate(0x40_3000, &RmpState::shared(K4)).status, RmpStatus::Success);
}

#[test]
fn psmash_splits_with_consecutive_gpas() {
    let mut r = rmp();
    assert_eq!(r.psmash(0x20_1000), RmpStatus::FailInput, "not 2 MiB aligned");
    assert_eq!(r.psmash(0x20_0000), RmpStatus::FailInput, "not a 2 MiB entry");
    r.rmpupdate(0x20_0000, &RmpState::private(0x80_0000, 4, M2));
    let g = GuestCtx { asid: 4, vmpl: 0 };
    assert_eq!(r.pvalidate(g, 0x20_0000, 0x80_0000, M2, true), GuestResult::Status(RmpStatus::Success));
    assert_eq!(r.lookup(0x3ff).unwrap().gpa, 0x9f_f000, "2 MiB lookup advances the GPA");
    assert_eq!(r.psmash(0x20_0000), RmpStatus::Success);
    let e = r.lookup(0x3ff).unwrap();
    assert!(e.page_size == K4 && e.gpa == 0x9f_f000 && e.assigned && e.asid == 4 && e.validated);
    r.firmware_set(0x600, RmpEntry { page_size: M2, immutable: true, assigned: true, ..Default::default() });
    assert_eq!(r.psmash(0x60_0000), RmpStatus::FailPermission);
}

#[test]
fn rmpadjust_codes() {
    let mut r = rmp();
    r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4));
    let vmpl0 = GuestCtx { asid: 7, vmpl: 0 };
    let vmpl1 = GuestCtx { asid: 7, vmpl: 1 };
    let a = |target_vmpl, perms| AdjustAttrs { target_vmpl, perms, vmsa: false };
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, a(1, vmpl_perm::READ | vmpl_perm::WRITE)), GuestResult::Status(RmpStatus::Success));
    assert_eq!(r.rmpadjust(vmpl1, 0x5000, 0x9000, K4, a(1, vmpl_perm::READ)), GuestResult::Status(RmpStatus::FailPermission), "same VMPL");
    assert_eq!(r.rmpadjust(vmpl1, 0x5000, 0x9000, K4, a(2, vmpl_perm::ALL)), GuestResult::Status(RmpStatus::FailPermission), "grants more than it has");
    assert_eq!(r.rmpadjust(vmpl1, 0x5000, 0x9000, K4, a(2, vmpl_perm::READ)), GuestResult::Status(RmpStatus::Success));
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, a(4, 0)), GuestResult::Status(RmpStatus::FailInput));
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, a(1, 0x80)), GuestResult::Status(RmpStatus::FailInput));
    assert_eq!(r.rmpadjust(vmpl0, 0x0, 0x0, M2, a(1, 0)), GuestResult::NestedPageFault, "not its page");
    r.rmpupdate(0x20_0000, &RmpState::private(0x20_0000, 7, M2));
    assert_eq!(r.rmpadjust(vmpl0, 0x20_0000, 0x20_0000, K4, a(1, 0)), GuestResult::Status(RmpStatus::FailSizeMismatch));
    let vmsa = AdjustAttrs { target_vmpl: 1, perms: 0, vmsa: true };
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, vmsa), GuestResult::Status(RmpStatus::Success));
    assert!(r.lookup(5).unwrap().vmsa);
    assert_eq!(r.rmpadjust(GuestCtx { asid: 8, vmpl: 0 }, 0x5000, 0x9000, K4, a(1, 0)), GuestResult::NestedPageFault, "other ASID");
}

#[test]
fn pvalidate_codes() {
    let mut r = rmp();
    r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4));
    let g = GuestCtx { asid: 7, vmpl: 0 };
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, true), GuestResult::Status(RmpStatus::Success));
    let again = r.pvalidate(g, 0x5000, 0x9000, K4, true);
    assert_eq!(again, GuestResult::Status(RmpStatus::NoUpdate));
    assert_eq!(RmpStatus::NoUpdate.code(), 255);
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, false), GuestResult::Status(RmpStatus::Success));
    assert_eq!(r.pvalidate(g, 0x0, 0x0, M2, true), GuestResult::NestedPageFault, "not assigned");
    assert_eq!(r.pvalidate(g, 0x5800, 0x9000, K4, true), GuestResult::Status(RmpStatus::FailInput));
    assert_eq!(r.pvalidate(g, 0x5000, 0xa000, K4, true), GuestResult::NestedPageFault, "GPA mismatch");
    r.rmpupdate(0x20_0000, &RmpState::private(0x20_0000, 7, K4));
    assert_eq!(r.pvalidate(g, 0x20_0000, 0x20_0000, M2, true), GuestResult::Status(RmpStatus::FailSizeMismatch));
}

#[test]
fn rmpupdate_reports_hazards_of_live_t0_mappings() {
    use rmp_model::hazard::LiveMapping;
    let mut r = rmp();
    let m = LiveMapping { requester: 0x20, iova: 0x1_0000, spa: 0x40_0000, size: 0x2000, write: true };
    r.hazards.register(m).unwrap();
    let res = r.rmpupdate(0x40_1000, &RmpState::private(0x1000, 3, K4));
    assert_eq!(res.status, RmpStatus::Success, "the hardware allows it");
    assert_eq!(res.hazards.len(), 1);
    assert_eq!((res.hazards[0].spa, res.hazards[0].asid, res.hazards[0].mapping), (0x40_1000, 3, m));
    assert!(r.rmpupdate(0x40_1000, &RmpState::shared(K4)).hazards.is_empty(), "making shared is no hazard");
    assert!(r.rmpupdate(0x50_0000, &RmpState::private(0, 3, K4)).hazards.is_empty(), "unmapped page");
    r.hazards.unregister(0x20, 0x1_0000);
    assert!(r.rmpupdate(0x40_0000, &RmpState::private(0, 3, K4)).hazards.is_empty());
}
