//! The SEV-TIO DMA rules, one test each, and the property that no sequence of page operations lets
//! a T=0 write reach an assigned page.

use proptest::prelude::*;
use rmp_model::dma_check::{DmaRefusal, DmaRequest, TdiBinding};
use rmp_model::ops::{AdjustAttrs, GuestCtx, RmpState};
use rmp_model::rmp::vmpl_perm;
use rmp_model::tdisp::TdiState;
use rmp_model::{PageSize, Rmp, RmpEntry};

const K4: PageSize = PageSize::Size4K;
const M2: PageSize = PageSize::Size2M;
const VTOM: u64 = 0x100_0000_0000;

fn t0(spa: u64, write: bool, map: u8) -> DmaRequest {
    DmaRequest { requester: 0x20, t: false, tdi: None, iova: spa, spa, write, mapping_size_log2: map }
}

fn t1(iova: u64, spa: u64, state: TdiState) -> DmaRequest {
    let tdi = TdiBinding { asid: 5, vtom: VTOM, state };
    DmaRequest { requester: 0x20, t: true, tdi: Some(tdi), iova, spa, write: true, mapping_size_log2: 12 }
}

fn reason(r: Result<(), rmp_model::dma_check::RmpFault>) -> DmaRefusal {
    r.expect_err("expected a refusal").reason
}

/// A guest (ASID 5) page at GPA 0x9000 on SPA 0x5000, validated.
fn with_private_page() -> Rmp {
    let mut r = Rmp::new(4096);
    r.rmpupdate(0x5000, &RmpState::private(0x9000, 5, K4));
    r.pvalidate(GuestCtx { asid: 5, vmpl: 0 }, 0x5000, 0x9000, K4, true);
    r
}

#[test]
fn t0_writes_to_assigned_pages_are_blocked_reads_are_not() {
    let mut r = with_private_page();
    let f = r.check_dma(&t0(0x5010, true, 12)).unwrap_err();
    assert_eq!((f.reason, f.devid, f.flags, f.gpa, f.flags_rmp), (DmaRefusal::AssignedPage, 0x20, 0x20, 0x5010, 0x01));
    assert!(r.check_dma(&t0(0x5010, false, 12)).is_ok(), "reads allowed (choice)");
    assert!(r.check_dma(&t0(0x6000, true, 12)).is_ok());
    r.firmware_set(7, RmpEntry { assigned: true, immutable: true, ..Default::default() });
    assert_eq!(reason(r.check_dma(&t0(0x7000, true, 12))), DmaRefusal::AssignedPage, "firmware page");
    assert!(r.check_dma(&t0(0x4000_0000, true, 12)).is_ok(), "outside the RMP (MMIO)");
}

#[test]
fn t0_mapping_larger_than_the_rmp_entry_over_assigned_pages_is_blocked() {
    let r = with_private_page();
    // A 2 MiB I/O mapping over the region holding the private page: the write to a
    // hypervisor page of it is blocked too.
    assert_eq!(reason(r.check_dma(&t0(0x6000, true, 21))), DmaRefusal::MappingSize);
    assert_eq!(reason(r.check_dma(&t0(0x4000, true, 14))), DmaRefusal::MappingSize, "16 KiB mapping 0x4000-0x7fff");
    assert!(r.check_dma(&t0(0x8000, true, 14)).is_ok(), "16 KiB mapping 0x8000-0xbfff");
    assert!(r.check_dma(&t0(0x20_0000, true, 21)).is_ok(), "a clean 2 MiB region");
}

#[test]
fn t1_private_rules() {
    let mut r = with_private_page();
    assert!(r.check_dma(&t1(0x9010, 0x5010, TdiState::Run)).is_ok());
    assert_eq!(reason(r.check_dma(&t1(0x9010, 0x5010, TdiState::ConfigLocked))), DmaRefusal::TdiNotRun);
    assert_eq!(reason(r.check_dma(&DmaRequest { tdi: None, ..t1(0x9010, 0x5010, TdiState::Run) })), DmaRefusal::TdiNotRun);
    assert_eq!(reason(r.check_dma(&t1(0xa000, 0x5000, TdiState::Run))), DmaRefusal::GpaMismatch);
    assert_eq!(reason(r.check_dma(&t1(0x9000, 0x6000, TdiState::Run))), DmaRefusal::AsidMismatch, "hypervisor page");
    r.rmpupdate(0x8000, &RmpState::private(0x8000, 6, K4));
    let f = r.check_dma(&t1(0x8000, 0x8000, TdiState::Run)).unwrap_err();
    assert_eq!((f.reason, f.vmg_tag), (DmaRefusal::AsidMismatch, 5), "another guest's page");
    r.rmpupdate(0xb000, &RmpState::private(0xb000, 5, K4));
    assert_eq!(reason(r.check_dma(&t1(0xb000, 0xb000, TdiState::Run))), DmaRefusal::NotValidated);
    let big = DmaRequest { mapping_size_log2: 21, ..t1(0x9000, 0x5000, TdiState::Run) };
    assert_eq!(reason(r.check_dma(&big)), DmaRefusal::MappingSize, "2 MiB I/O page over a 4 KiB private page");
}

#[test]
fn t1_at_or_above_vtom_is_shared() {
    let r = with_private_page();
    assert!(r.check_dma(&t1(VTOM + 0x6000, 0x6000, TdiState::Run)).is_ok());
    assert_eq!(reason(r.check_dma(&t1(VTOM + 0x5000, 0x5000, TdiState::Run))), DmaRefusal::SharedToPrivate);
    let read = DmaRequest { write: false, ..t1(VTOM + 0x5000, 0x5000, TdiState::Run) };
    assert_eq!(reason(r.check_dma(&read)), DmaRefusal::SharedToPrivate, "shared reads must land on hypervisor pages too");
    assert!(r.check_dma(&t1(VTOM - 0x1000, 0x6000, TdiState::Run)).is_err(), "just below vTOM is private");
    let big = DmaRequest { mapping_size_log2: 21, ..t1(VTOM + 0x6000, 0x6000, TdiState::Run) };
    assert_eq!(reason(r.check_dma(&big)), DmaRefusal::MappingSize, "shared 2 MiB I/O page over a private 4 KiB page");
    assert!(r.check_dma(&t1(VTOM + 0x4000_0000, 0x4000_0000, TdiState::Run)).is_ok(), "outside the RMP");
}

#[test]
fn refusals_carry_the_event_fields_and_the_asid_to_fence() {
    let r = with_private_page();
    let f = r.check_dma(&t1(0xa000, 0x5000, TdiState::Run)).unwrap_err();
    assert_eq!((f.devid, f.vmg_tag, f.flags, f.gpa, f.spa, f.fence_asid), (0x20, 5, 0x020, 0xa000, 0x5000, Some(5)));
    assert_eq!(f.flags_rmp, DmaRefusal::GpaMismatch as u8);
    let f = r.check_dma(&t1(0x9000, 0x5000, TdiState::ConfigLocked)).unwrap_err();
    assert_eq!(f.fence_asid, None, "a TDI not in RUN is refused, not fenced");
    let f = r.check_dma(&t0(0x5000, true, 12)).unwrap_err();
    assert_eq!((f.vmg_tag, f.fence_asid), (0, None));
    let f = r.check_dma(&DmaRequest { write: false, ..t1(0x9000, 0x6000, TdiState::Run) }).unwrap_err();
    assert_eq!(f.flags, 0, "read: RW clear");
    // The fields fit the event's widths (flags_rmp 8 bits, flags 12 bits).
    assert!(u16::from(f.flags_rmp) <= 0xff && f.flags <= 0xfff);
}

#[test]
fn t1_to_a_2m_private_page() {
    let mut r = Rmp::new(4096);
    r.rmpupdate(0x20_0000, &RmpState::private(0x40_0000, 5, M2));
    r.pvalidate(GuestCtx { asid: 5, vmpl: 0 }, 0x20_0000, 0x40_0000, M2, true);
    let big = |iova, spa| DmaRequest { mapping_size_log2: 21, ..t1(iova, spa, TdiState::Run) };
    assert!(r.check_dma(&big(0x40_5000, 0x20_5000)).is_ok(), "2 MiB I/O page on a 2 MiB private page");
    assert!(r.check_dma(&t1(0x40_5000, 0x20_5000, TdiState::Run)).is_ok(), "4 KiB I/O page inside it");
    assert_eq!(reason(r.check_dma(&big(0x40_6000, 0x20_5000))), DmaRefusal::GpaMismatch);
    assert_eq!(reason(r.check_dma(&t0(0x20_5000, true, 12))), DmaRefusal::AssignedPage);
    // After PSMASH the 2 MiB I/O page is larger than the RMP entries.
    r.psmash(0x20_0000);
    assert_eq!(reason(r.check_dma(&big(0x40_5000, 0x20_5000))), DmaRefusal::MappingSize);
}

#[derive(Clone, Debug)]
enum Op {
    Update { page: u64, big: bool, assigned: bool, asid: u16 },
    Psmash { region: u64 },
    Validate { page: u64, asid: u16, big: bool },
    Adjust { page: u64, asid: u16, vmsa: bool },
    Firmware { page: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..1024u64, any::<bool>(), any::<bool>(), 0..4u16).prop_map(|(page, big, assigned, asid)| Op::Update { page, big, assigned, asid }),
        1 => (0..2u64).prop_map(|region| Op::Psmash { region }),
        2 => (0..1024u64, 1..4u16, any::<bool>()).prop_map(|(page, asid, big)| Op::Validate { page, asid, big }),
        1 => (0..1024u64, 1..4u16, any::<bool>()).prop_map(|(page, asid, vmsa)| Op::Adjust { page, asid, vmsa }),
        1 => (0..1024u64).prop_map(|page| Op::Firmware { page }),
    ]
}

/// Assigned as a reader of the raw table sees it (Linux's rmpentry_raw: bit 0 of the page's own
/// entry), independently of the model's lookups.
fn oracle_assigned(r: &Rmp, pfn: u64) -> bool {
    r.raw(pfn).unwrap()[0] & 1 == 1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn no_t0_write_reaches_an_assigned_page(ops in prop::collection::vec(op(), 1..40), probes in prop::collection::vec((0..1024u64, 12..31u8, 0..4096u64), 64)) {
        let mut r = Rmp::new(1024);
        for o in ops {
            let size = |big: bool| if big { M2 } else { K4 };
            let at = |page: u64, big: bool| if big { page << 12 & !0x1f_ffff } else { page << 12 };
            match o {
                Op::Update { page, big, assigned, asid } => {
                    let spa = at(page, big);
                    let st = if assigned { RmpState::private(spa, asid, size(big)) } else { RmpState::shared(size(big)) };
                    r.rmpupdate(spa, &st);
                }
                Op::Psmash { region } => { r.psmash(region << 21); }
                Op::Validate { page, asid, big } => {
                    let spa = at(page, big);
                    r.pvalidate(GuestCtx { asid, vmpl: 0 }, spa, spa, size(big), true);
                }
                Op::Adjust { page, asid, vmsa } => {
                    let a = AdjustAttrs { target_vmpl: 1, perms: vmpl_perm::ALL, vmsa };
                    r.rmpadjust(GuestCtx { asid, vmpl: 0 }, page << 12, page << 12, K4, a);
                }
                Op::Firmware { page } => { r.firmware_set(page, RmpEntry::firmware()); }
            }
        }
        for pfn in 0..1024u64 {
            for map in [12u8, 14, 21, 30] {
                if r.check_dma(&t0(pfn << 12, true, map)).is_ok() {
                    prop_assert!(!oracle_assigned(&r, pfn), "T=0 write reached assigned page {:#x}", pfn);
                }
            }
            prop_assert_eq!(r.check_dma(&t0(pfn << 12, true, 12)).is_ok(), !oracle_assigned(&r, pfn));
        }
        // Any write through an allowed large mapping: no page of the mapping is assigned.
        for (pfn, map, off) in probes {
            let spa = pfn << 12 | (off & 0xfff);
            if r.check_dma(&t0(spa, true, map)).is_ok() {
                let first = (spa & !((1u64 << map) - 1)) >> 12;
                let last = (first + (1u64 << (map - 12))).min(1024);
                prop_assert!((first..last).all(|p| !oracle_assigned(&r, p)), "mapping {:#x}/{} covers an assigned page", spa, map);
            }
        }
    }
}
