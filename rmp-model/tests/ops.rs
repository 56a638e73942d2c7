//! Every return code of the page operations, and the state each success leaves in the raw
//! entries.

use rmp_model::hazard::LiveMapping;
use rmp_model::ops::{npf, AdjustAttrs, GuestCtx, GuestResult, RmpState};
use rmp_model::rmp::vmpl_perm;
use rmp_model::{PageSize, Rmp, RmpEntry, RmpStatus};

const K4: PageSize = PageSize::Size4K;
const M2: PageSize = PageSize::Size2M;
const OK: GuestResult = GuestResult::Status(RmpStatus::Success);

fn rmp() -> Rmp {
    Rmp::new(4096) // 16 MiB
}

fn st(s: RmpStatus) -> GuestResult {
    GuestResult::Status(s)
}

fn is_npf(r: GuestResult, sizem: bool) -> bool {
    matches!(r, GuestResult::NestedPageFault { error_code } if error_code & npf::RMP != 0 && (error_code & npf::SIZEM != 0) == sizem)
}

#[test]
fn rmpupdate_success_sets_fields_and_clears_validated_and_vmpl() {
    let mut r = rmp();
    assert_eq!(r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4)).status, RmpStatus::Success);
    let g = GuestCtx { asid: 7, vmpl: 0 };
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, true), OK);
    assert_eq!(r.rmpadjust(g, 0x5000, 0x9000, K4, AdjustAttrs { target_vmpl: 1, perms: vmpl_perm::READ, vmsa: false }), OK);
    let e = r.lookup(5).unwrap();
    assert!(e.assigned && e.validated && e.asid == 7 && e.gpa == 0x9000 && e.vmpl == [vmpl_perm::ALL, vmpl_perm::READ, 0, 0]);
    assert_eq!(r.asid_pages(7), 1);
    // Re-assigning clears Validated and the lower VMPLs' permissions.
    assert_eq!(r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4)).status, RmpStatus::Success);
    let e = r.lookup(5).unwrap();
    assert!(!e.validated && e.vmpl == [vmpl_perm::ALL, 0, 0, 0]);
    assert_eq!(r.rmpupdate(0x5000, &RmpState::shared(K4)).status, RmpStatus::Success);
    assert_eq!(*r.entry(5).unwrap(), RmpEntry::default());
    assert_eq!(r.asid_pages(7), 0);
}

#[test]
fn rmpupdate_fail_input() {
    let mut r = rmp();
    for (spa, st) in [
        (0x5008, RmpState::private(0x9000, 1, K4)),             // unaligned SPA
        (0x1000_0000, RmpState::private(0x9000, 1, K4)),        // outside the RMP
        (0x1000, RmpState::private(0x20_0000, 1, M2)),          // 2 MiB at a 4 KiB address
        (0x5000, RmpState::private(0x9000, 0x400, K4)),         // ASID too large
        (0x5000, RmpState { asid: 3, ..RmpState::shared(K4) }), // shared with an ASID
        (0x5000, RmpState { immutable: true, ..RmpState::shared(K4) }),
        (0x20_0000, RmpState::private(0x1000, 1, M2)), // 2 MiB GPA not aligned
        (0x5000, RmpState::private(0x9800, 1, K4)),    // GPA not 4 KiB aligned
        (0x5000, RmpState::private(1 << 52, 1, K4)),   // GPA past bit 51
    ] {
        assert_eq!(r.rmpupdate(spa, &st).status, RmpStatus::FailInput, "{spa:#x} {st:?}");
    }
    assert!((0..4096).all(|p| *r.entry(p).unwrap() == RmpEntry::default()), "nothing written");
    let mut short = Rmp::new(0x700); // 7 MiB: the 2 MiB page at 6 MiB runs past the end
    assert_eq!(short.rmpupdate(0x60_0000, &RmpState::private(0x20_0000, 1, M2)).status, RmpStatus::FailInput);
    assert_eq!(short.psmash(0x60_0000), RmpStatus::FailInput);
}

#[test]
fn rmpupdate_fail_permission_on_immutable_pages() {
    let mut r = rmp();
    assert!(r.firmware_set(9, RmpEntry::firmware()));
    assert_eq!(r.rmpupdate(0x9000, &RmpState::shared(K4)).status, RmpStatus::FailPermission);
    assert_eq!(r.rmpupdate(0, &RmpState::private(0, 1, M2)).status, RmpStatus::FailPermission, "2 MiB over it");
    assert_eq!(*r.entry(9).unwrap(), RmpEntry::firmware());
}

#[test]
fn rmpupdate_and_psmash_fail_inuse() {
    let mut r = rmp();
    r.rmpupdate(0x20_0000, &RmpState::private(0x40_0000, 2, M2));
    r.set_in_use(0x203, true);
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::shared(M2)).status, RmpStatus::FailInuse);
    assert_eq!(r.psmash(0x20_0000), RmpStatus::FailInuse);
    r.set_in_use(0x203, false);
    assert_eq!(r.psmash(0x20_0000), RmpStatus::Success);
    r.set_in_use(0x5, true);
    assert_eq!(r.rmpupdate(0x5000, &RmpState::private(0, 2, K4)).status, RmpStatus::FailInuse);
}

#[test]
fn rmpupdate_fail_overlap() {
    let mut r = rmp();
    // A 2 MiB entry over a region whose 4 KiB entries are not all hypervisor-owned.
    r.rmpupdate(0x20_5000, &RmpState::private(0x5000, 1, K4));
    assert_eq!(r.entry(0x200).unwrap().subpage_count, 1);
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::private(0, 1, M2)).status, RmpStatus::FailOverlap);
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::shared(M2)).status, RmpStatus::FailOverlap);
    r.rmpupdate(0x20_5000, &RmpState::shared(K4));
    assert_eq!(r.entry(0x200).unwrap().subpage_count, 0);
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::private(0, 1, M2)).status, RmpStatus::Success);
    // A 4 KiB update inside an assigned 2 MiB page needs PSMASH first, the first page included.
    assert_eq!(r.rmpupdate(0x40_0000, &RmpState::private(0x40_0000, 1, M2)).status, RmpStatus::Success);
    assert_eq!(r.rmpupdate(0x40_3000, &RmpState::shared(K4)).status, RmpStatus::FailOverlap);
    assert_eq!(r.rmpupdate(0x40_0000, &RmpState::shared(K4)).status, RmpStatus::FailOverlap);
    assert!((0x400..0x600).all(|p| r.entry(p).unwrap().assigned), "still one private 2 MiB page");
    assert_eq!(r.psmash(0x40_0000), RmpStatus::Success);
    assert_eq!(r.rmpupdate(0x40_3000, &RmpState::shared(K4)).status, RmpStatus::Success);
    // A 2 MiB update replaces a 2 MiB page whole; the first page alone assigned is no overlap.
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::shared(M2)).status, RmpStatus::Success);
    r.rmpupdate(0x60_0000, &RmpState::private(0x1000, 1, K4));
    assert_eq!(r.rmpupdate(0x60_0000, &RmpState::private(0x60_0000, 1, M2)).status, RmpStatus::Success);
}

#[test]
fn two_mib_pages_fill_their_512_entries() {
    let mut r = rmp();
    r.rmpupdate(0x20_0000, &RmpState::private(0x80_0000, 4, M2));
    for i in 0..512u64 {
        let e = r.entry(0x200 + i).unwrap();
        assert!(e.assigned && e.page_size == M2 && e.asid == 4 && e.gpa == 0x80_0000 + (i << 12), "entry {i}");
    }
    assert_eq!(r.entry(0x200).unwrap().subpage_count, 0, "followers of a 2 MiB page are not 4 KiB pages");
    assert_eq!(r.asid_pages(4), 512);
    assert_eq!(r.assigned_in_region(0x3ff), 512);
    let rd = r.rmpread(0x20_5000).unwrap();
    assert_eq!((rd.gpa, rd.assigned, rd.page_size, rd.asid, rd.hpage_region_status), (0x80_5000, true, M2, 4, true));
    // The bookkeeping counter of ASID 4 is at RMP_BASE + 32.
    let bk = r.bookkeeping_raw();
    assert_eq!(bk.len(), 0x4000);
    assert_eq!(u64::from_le_bytes(bk[32..40].try_into().unwrap()), 512);
    let mut img = [0u8; 16];
    r.read_image(Rmp::entry_offset(0x201), &mut img);
    assert_eq!(img, r.raw(0x201).unwrap());
}

#[test]
fn a_4k_update_inside_a_shared_2m_page_splits_it() {
    let mut r = rmp();
    assert_eq!(r.rmpupdate(0x20_0000, &RmpState::shared(M2)).status, RmpStatus::Success);
    assert_eq!(r.entry(0x300).unwrap().page_size, M2);
    let before: Vec<_> = (0..4096).map(|p| r.raw(p).unwrap()).collect();
    let res = r.rmpupdate(0x20_7000, &RmpState::private(0x7000, 2, K4));
    assert_eq!(res.status, RmpStatus::Success);
    assert_eq!(res.changed, 0x200..0x400, "the whole split page is rewritten");
    assert!((0..4096u64).filter(|p| !res.changed.contains(p)).all(|p| r.raw(p).unwrap() == before[p as usize]), "nothing else changed");
    let res = r.rmpupdate(0x20_9000, &RmpState::private(0x9000, 2, K4));
    assert!(res.changed.contains(&0x200) && res.changed.contains(&0x209), "the page and the subpage_count it moved");
    assert!((0x200..0x400).all(|p| r.entry(p).unwrap().page_size == K4));
    assert_eq!(r.entry(0x200).unwrap().subpage_count, 2, "two 4 KiB private pages in the region");
    assert_eq!(r.lookup(0x207).unwrap().asid, 2);
}

#[test]
fn psmash_splits_with_consecutive_gpas() {
    let mut r = rmp();
    assert_eq!(r.psmash(0x20_1000), RmpStatus::FailInput, "not 2 MiB aligned");
    assert_eq!(r.psmash(0x20_0000), RmpStatus::FailInput, "not a 2 MiB entry");
    r.rmpupdate(0x20_0000, &RmpState::private(0x80_0000, 4, M2));
    let g = GuestCtx { asid: 4, vmpl: 0 };
    assert_eq!(r.pvalidate(g, 0x20_0000, 0x80_0000, M2, true), OK);
    assert!((0x200..0x400).all(|p| r.entry(p).unwrap().validated), "PVALIDATE of a 2 MiB page validates its 512 entries");
    assert_eq!(r.lookup(0x3ff).unwrap().gpa, 0x9f_f000);
    assert_eq!(r.psmash(0x20_0000), RmpStatus::Success);
    let e = r.lookup(0x3ff).unwrap();
    assert!(e.page_size == K4 && e.gpa == 0x9f_f000 && e.assigned && e.asid == 4 && e.validated);
    assert_eq!(r.entry(0x200).unwrap().subpage_count, 511, "now 511 assigned 4 KiB followers");
    assert_eq!(r.psmash(0x20_0000), RmpStatus::FailInput, "already split");
    assert!(r.firmware_set(0x600, RmpEntry { page_size: M2, ..RmpEntry::firmware() }));
    assert_eq!(r.psmash(0x60_0000), RmpStatus::FailPermission);
    // A shared 2 MiB page splits too.
    r.rmpupdate(0xa0_0000, &RmpState::shared(M2));
    assert_eq!(r.psmash(0xa0_0000), RmpStatus::Success);
    assert_eq!(r.entry(0xa00).unwrap().subpage_count, 0);
}

#[test]
fn rmpadjust_codes() {
    let mut r = rmp();
    r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4));
    let vmpl0 = GuestCtx { asid: 7, vmpl: 0 };
    let vmpl1 = GuestCtx { asid: 7, vmpl: 1 };
    let a = |target_vmpl, perms| AdjustAttrs { target_vmpl, perms, vmsa: false };
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, a(1, vmpl_perm::READ | vmpl_perm::WRITE)), OK);
    assert_eq!(r.rmpadjust(vmpl1, 0x5000, 0x9000, K4, a(1, vmpl_perm::READ)), st(RmpStatus::FailPermission), "same VMPL");
    assert_eq!(r.rmpadjust(vmpl1, 0x5000, 0x9000, K4, a(0, vmpl_perm::READ)), st(RmpStatus::FailPermission), "more privileged VMPL");
    assert_eq!(r.rmpadjust(vmpl1, 0x5000, 0x9000, K4, a(2, vmpl_perm::ALL)), st(RmpStatus::FailPermission), "grants more than it has");
    assert_eq!(r.rmpadjust(vmpl1, 0x5000, 0x9000, K4, a(2, vmpl_perm::READ)), OK);
    assert_eq!(r.entry(5).unwrap().vmpl, [vmpl_perm::ALL, vmpl_perm::READ | vmpl_perm::WRITE, vmpl_perm::READ, 0]);
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, a(4, 0)), st(RmpStatus::FailInput));
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, a(1, 0x80)), st(RmpStatus::FailInput));
    assert_eq!(r.rmpadjust(vmpl0, 0x5800, 0x9800, K4, a(1, 0)), st(RmpStatus::FailInput), "unaligned");
    assert!(is_npf(r.rmpadjust(vmpl0, 0x0, 0x0, M2, a(1, 0)), false), "not its page");
    assert!(is_npf(r.rmpadjust(GuestCtx { asid: 8, vmpl: 0 }, 0x5000, 0x9000, K4, a(1, 0)), false), "other ASID");
    assert!(is_npf(r.rmpadjust(vmpl0, 0x5000, 0xa000, K4, a(1, 0)), false), "other GPA");
    // Size: 2 MiB on a 4 KiB entry is FAIL_SIZEMISMATCH; 4 KiB on a 2 MiB entry faults with SIZEM.
    r.rmpupdate(0x20_0000, &RmpState::private(0x20_0000, 7, K4));
    assert_eq!(r.rmpadjust(vmpl0, 0x20_0000, 0x20_0000, M2, a(1, 0)), st(RmpStatus::FailSizeMismatch));
    r.rmpupdate(0x20_0000, &RmpState::shared(K4));
    r.rmpupdate(0x40_0000, &RmpState::private(0x40_0000, 7, M2));
    assert!(is_npf(r.rmpadjust(vmpl0, 0x40_0000, 0x40_0000, K4, a(1, 0)), true));
    assert_eq!(r.rmpadjust(vmpl0, 0x40_0000, 0x40_0000, M2, a(3, vmpl_perm::READ)), OK);
    assert!((0x400..0x600).all(|p| r.entry(p).unwrap().vmpl[3] == vmpl_perm::READ));
    let vmsa = AdjustAttrs { target_vmpl: 1, perms: 0, vmsa: true };
    assert_eq!(r.rmpadjust(vmpl0, 0x40_0000, 0x40_0000, M2, vmsa), st(RmpStatus::FailInput), "a VMSA is a 4 KiB page");
    assert_eq!(r.rmpadjust(vmpl0, 0x5000, 0x9000, K4, vmsa), OK);
    assert!(r.lookup(5).unwrap().vmsa);
}

#[test]
fn pvalidate_codes() {
    let mut r = rmp();
    r.rmpupdate(0x5000, &RmpState::private(0x9000, 7, K4));
    let g = GuestCtx { asid: 7, vmpl: 0 };
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, true), OK);
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, true), st(RmpStatus::NoUpdate), "already validated: CF=1");
    assert_eq!(RmpStatus::NoUpdate.code(), 255);
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, false), OK);
    assert_eq!(r.pvalidate(g, 0x5000, 0x9000, K4, false), st(RmpStatus::NoUpdate));
    assert_eq!(r.pvalidate(GuestCtx { asid: 7, vmpl: 1 }, 0x5000, 0x9000, K4, true), GuestResult::GeneralProtection);
    assert!(is_npf(r.pvalidate(g, 0x0, 0x0, M2, true), false), "not assigned");
    assert_eq!(r.pvalidate(g, 0x5800, 0x9000, K4, true), st(RmpStatus::FailInput));
    assert!(is_npf(r.pvalidate(g, 0x5000, 0xa000, K4, true), false), "GPA mismatch");
    r.rmpupdate(0x20_0000, &RmpState::private(0x20_0000, 7, K4));
    assert_eq!(r.pvalidate(g, 0x20_0000, 0x20_0000, M2, true), st(RmpStatus::FailSizeMismatch));
    r.rmpupdate(0x40_0000, &RmpState::private(0x40_0000, 7, M2));
    assert!(is_npf(r.pvalidate(g, 0x41_0000, 0x41_0000, K4, true), true), "4 KiB inside a 2 MiB page: #NPF with SIZEM");
    r.rmpupdate(0x60_0000, &RmpState { immutable: true, ..RmpState::private(0x60_0000, 7, K4) });
    assert!(is_npf(r.pvalidate(g, 0x60_0000, 0x60_0000, K4, true), false), "immutable");
}

#[test]
fn rmpupdate_reports_hazards_of_live_t0_mappings() {
    let mut r = rmp();
    let m = LiveMapping { requester: 0x20, iova: 0x1_0000, spa: 0x40_0000, size: 0x2000, write: true };
    r.hazards.register(m).unwrap();
    let res = r.rmpupdate(0x40_1000, &RmpState::private(0x1000, 3, K4));
    assert_eq!(res.status, RmpStatus::Success, "the hardware allows it");
    assert_eq!(res.hazards.len(), 1);
    assert_eq!((res.hazards[0].spa, res.hazards[0].asid, res.hazards[0].mapping), (0x40_1000, 3, m));
    assert!(r.rmpupdate(0x40_1000, &RmpState::private(0x1000, 3, K4)).hazards.is_empty(), "already private: no new hazard");
    assert!(r.rmpupdate(0x40_1000, &RmpState::shared(K4)).hazards.is_empty(), "making shared is no hazard");
    assert!(r.rmpupdate(0x80_0000, &RmpState::private(0, 3, K4)).hazards.is_empty(), "unmapped page");
    // A 2 MiB conversion reports every covered page.
    let res = r.rmpupdate(0x40_0000, &RmpState::private(0x40_0000, 3, M2));
    assert_eq!(res.hazards.iter().map(|h| h.spa).collect::<Vec<_>>(), vec![0x40_0000, 0x40_1000]);
    r.rmpupdate(0x40_0000, &RmpState::shared(M2));
    assert!(r.rmpupdate(0x60_0000, &RmpState::private(0x40_0000, 3, K4)).hazards.is_empty());
    r.hazards.unregister(0x20, 0x1_0000);
    assert!(r.rmpupdate(0x40_0000, &RmpState::private(0, 3, K4)).hazards.is_empty());
}
