//! VT-d legacy-mode translation: one test per rule, on hand-made tables, and a property test that
//! random mappings in 39/48/57-bit tables translate back exactly.

use iommu_model::fmt::vtd_ss::{leaf, table};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::vtd::context::ContextEntry;
use iommu_model::vtd::root::RootEntry;
use iommu_model::vtd::{translate, FaultReason, FaultRecord, VtdOutcome};
use iommu_model::walk::{Access, Perm};
use proptest::prelude::*;

const RTADDR: u64 = 0x1000;
const CTX: u64 = 0x2000;
const SID: u16 = 0x0020; // 00:04.0

fn write_entry(m: &mut ByteMem, addr: u64, lo: u64, hi: u64) {
    m.write_u64(addr, lo).unwrap();
    m.write_u64(addr + 8, hi).unwrap();
}

fn setup(m: &mut ByteMem, ctx: ContextEntry) {
    let r = RootEntry::new(CTX);
    write_entry(m, RTADDR, r.lo, r.hi);
    write_entry(m, CTX + u64::from(SID & 0xff) * 16, ctx.lo, ctx.hi);
}

fn reason(o: VtdOutcome) -> FaultReason {
    match o {
        VtdOutcome::Fault { record, .. } => record.reason,
        VtdOutcome::Ok(t) => panic!("expected a fault, got {t:?}"),
    }
}

/// 48-bit (4-level) tables at 0x10_0000.. mapping IOVA 0x5000 -> 0x40_0000 and a 2 MiB superpage.
fn four_level(m: &mut ByteMem, pte_perm: Perm) {
    m.write_u64(0x10_0000, table(0x10_1000, Perm::RW)).unwrap();
    m.write_u64(0x10_1000, table(0x10_2000, Perm::RW)).unwrap();
    m.write_u64(0x10_2000, table(0x10_3000, Perm::RW)).unwrap();
    m.write_u64(0x10_3000 + 5 * 8, leaf(0x40_0000, pte_perm, false)).unwrap();
    m.write_u64(0x10_2000 + 8, leaf(0x60_0000, Perm::RW, true)).unwrap();
    setup(m, ContextEntry::new(0x10_0000, 2, 7, 0));
}

#[test]
fn second_stage_4k_and_superpages() {
    let mut m = ByteMem::new(0, 0x80_0000);
    four_level(&mut m, Perm::RW);
    let t = translate(&m, RTADDR, SID, 0x5abc, Access::Write).translation().unwrap();
    assert_eq!((t.spa, t.size_log2), (0x40_0abc, 12));
    let t = translate(&m, RTADDR, SID, 0x3f_fff0, Access::Read).translation().unwrap();
    assert_eq!((t.spa, t.size_log2, t.level), (0x7f_fff0, 21, 2));
}

#[test]
fn permission_faults_name_the_missing_right() {
    let mut m = ByteMem::new(0, 0x80_0000);
    four_level(&mut m, Perm::new(true, false));
    assert_eq!(reason(translate(&m, RTADDR, SID, 0x5000, Access::Write)), FaultReason::WriteDenied);
    four_level(&mut m, Perm::new(false, true));
    assert_eq!(reason(translate(&m, RTADDR, SID, 0x5000, Access::Read)), FaultReason::ReadDenied);
    // Not present (R=W=0) on a read: read not set.
    assert_eq!(reason(translate(&m, RTADDR, SID, 0x6000, Access::Read)), FaultReason::ReadDenied);
}

#[test]
fn root_and_context_faults() {
    let mut m = ByteMem::new(0, 0x80_0000);
    assert_eq!(reason(translate(&m, RTADDR, SID, 0, Access::Read)), FaultReason::RootNotPresent);
    four_level(&mut m, Perm::RW);
    assert_eq!(reason(translate(&m, RTADDR, SID + 1, 0, Access::Read)), FaultReason::ContextNotPresent);
    write_entry(&mut m, RTADDR, RootEntry::new(CTX).lo | 0x10, 0);
    assert_eq!(reason(translate(&m, RTADDR, SID, 0, Access::Read)), FaultReason::RootReserved);
    write_entry(&mut m, RTADDR, RootEntry::new(0x4000_0000).lo, 0);
    assert_eq!(reason(translate(&m, RTADDR, SID, 0, Access::Read)), FaultReason::ContextTableInvalid);
    assert_eq!(reason(translate(&m, 0x4000_0000, SID, 0, Access::Read)), FaultReason::RootTableInvalid);
    setup(&mut m, ContextEntry::new(0x10_0000, 5, 7, 0));
    assert_eq!(reason(translate(&m, RTADDR, SID, 0, Access::Read)), FaultReason::InvalidContext, "AW 5");
    setup(&mut m, ContextEntry::new(0x10_0000, 2, 7, 3));
    assert_eq!(reason(translate(&m, RTADDR, SID, 0, Access::Read)), FaultReason::InvalidContext, "TT 3");
    let mut c = ContextEntry::new(0x10_0000, 2, 7, 0);
    c.hi |= 1 << 40;
    setup(&mut m, c);
    assert_eq!(reason(translate(&m, RTADDR, SID, 0, Access::Read)), FaultReason::ContextReserved);
    setup(&mut m, ContextEntry::new(0, 2, 7, 2));
    assert_eq!(translate(&m, RTADDR, SID, 0x1234_5000, Access::Write).translation().unwrap().spa, 0x1234_5000, "TT 2 pass-through");
}

#[test]
fn beyond_agaw_reserved_bits_and_missing_tables() {
    let mut m = ByteMem::new(0, 0x80_0000);
    four_level(&mut m, Perm::RW);
    assert_eq!(reason(translate(&m, RTADDR, SID, 1 << 48, Access::Read)), FaultReason::AddressBeyondMgaw);
    m.write_u64(0x10_3000 + 5 * 8, leaf(0x40_0000, Perm::RW, false) | 1 << 11).unwrap();
    assert_eq!(reason(translate(&m, RTADDR, SID, 0x5000, Access::Read)), FaultReason::PteReserved);
    m.write_u64(0x10_2000 + 8, leaf(0x60_1000, Perm::RW, true)).unwrap();
    assert_eq!(reason(translate(&m, RTADDR, SID, 0x20_0000, Access::Read)), FaultReason::PteReserved, "unaligned superpage");
    m.write_u64(0x10_0000, table(0x4000_0000, Perm::RW)).unwrap();
    assert_eq!(reason(translate(&m, RTADDR, SID, 0x5000, Access::Read)), FaultReason::NextTableInvalid);
}

#[test]
fn fault_records_encode_as_linux_decodes_them() {
    let r = FaultRecord::new(SID, 0x1234_5678, Access::Read, FaultReason::ReadDenied);
    let b = r.to_bytes();
    let hi = u64::from_le_bytes(b[8..].try_into().unwrap());
    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0x1234_5000);
    assert_eq!((hi & 0xffff, (hi >> 32) & 0xff, (hi >> 62) & 1, hi >> 63), (0x20, 6, 1, 1));
    assert_eq!(FaultRecord::from_bytes(&b), Some(r));
    let mut fpd = ByteMem::new(0, 0x80_0000);
    let mut c = ContextEntry::new(0x10_0000, 2, 7, 0);
    c.lo |= 2;
    setup(&mut fpd, c);
    assert!(matches!(translate(&fpd, RTADDR, SID, 0, Access::Read), VtdOutcome::Fault { recorded: false, .. }));
}

/// A reference builder for second-stage tables, independent of the walker.
fn map(m: &mut ByteMem, next: &mut u64, root: u64, levels: u8, iova: u64, spa: u64, size_log2: u8, perm: Perm) -> bool {
    let leaf_level = (size_log2 - 12) / 9 + 1;
    let mut t = root;
    for level in (leaf_level + 1..=levels).rev() {
        let slot = t + ((iova >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff) * 8;
        let e = m.read_u64(slot).unwrap();
        if e & 3 == 0 {
            m.write_u64(slot, table(*next, Perm::RW)).unwrap();
            t = *next;
            *next += 0x1000;
        } else if e & (1 << 7) != 0 {
            return false;
        } else {
            t = e & 0x000f_ffff_ffff_f000;
        }
    }
    let slot = t + ((iova >> (12 + 9 * (u32::from(leaf_level) - 1))) & 0x1ff) * 8;
    if m.read_u64(slot).unwrap() & 3 != 0 {
        return false;
    }
    m.write_u64(slot, leaf(spa, perm, leaf_level > 1)).unwrap();
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn mappings_translate_back(aw in 1u8..=3, maps in prop::collection::vec((prop::sample::select(vec![12u8, 21, 30]), any::<u64>(), any::<u64>(), any::<bool>()), 1..12), off in any::<u64>()) {
        let mut m = ByteMem::new(0, 0x80_0000);
        let levels = aw + 2;
        let width = 30 + 9 * u32::from(aw);
        let mut next = 0x11_0000;
        setup(&mut m, ContextEntry::new(0x10_0000, aw, 1, 0));
        let mut done = Vec::new();
        for (size_log2, i, s, ro) in maps {
            let mask = (1u64 << size_log2) - 1;
            let iova = i & ((1u64 << width) - 1) & !mask;
            let spa = s & 0x000f_ffff_ffff_f000 & !mask;
            let perm = Perm::new(true, !ro);
            if map(&mut m, &mut next, 0x10_0000, levels, iova, spa, size_log2, perm) {
                done.push((iova, spa, size_log2, perm));
            }
        }
        for (iova, spa, size_log2, perm) in done {
            let o = off & ((1u64 << size_log2) - 1);
            let t = translate(&m, RTADDR, SID, iova + o, Access::Read).translation();
            prop_assert_eq!(t.map(|t| (t.spa, t.size_log2)), Some((spa + o, size_log2)));
            prop_assert_eq!(translate(&m, RTADDR, SID, iova + o, Access::Write).translation().is_some(), perm.write);
        }
    }
}
