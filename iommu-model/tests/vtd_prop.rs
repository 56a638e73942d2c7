//! Property: second-stage tables that a reference builder makes from random mappings, for 39-,
//! 48- and 57-bit widths and 4 KiB, 2 MiB and 1 GiB pages, translate back exactly, and every
//! address the mappings do not cover faults. The builder writes the entry bits itself (VT-d spec
//! §9.8) and shares no code with the model.

use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::vtd::{translate, Caps, FaultReason, VtdOutcome};
use iommu_model::walk::{Access, Perm};
use proptest::prelude::*;

const RTADDR: u64 = 0x1000;
const CTX: u64 = 0x2000;
const TOP: u64 = 0x10_0000;
const SID: u16 = 0x3a; // 00:07.2

struct Mapping {
    iova: u64,
    spa: u64,
    size_log2: u8,
    perm: Perm,
}

struct Builder {
    mem: ByteMem,
    next_table: u64,
    levels: u32,
    maps: Vec<Mapping>,
}

impl Builder {
    fn new(aw: u8) -> Builder {
        let mut mem = ByteMem::new(0, 0x40_0000);
        mem.write_u64(RTADDR, CTX | 1).unwrap();
        mem.write_u64(CTX + u64::from(SID & 0xff) * 16, TOP | 1).unwrap();
        mem.write_u64(CTX + u64::from(SID & 0xff) * 16 + 8, u64::from(aw) | 0x42 << 8).unwrap();
        Builder { mem, next_table: TOP + 0x1000, levels: u32::from(aw) + 2, maps: Vec::new() }
    }

    fn slot(table: u64, iova: u64, level: u32) -> u64 {
        table + ((iova >> (3 + 9 * level)) & 0x1ff) * 8
    }

    /// Map one page; refuse (false) if it would overlap a page already mapped.
    fn map(&mut self, iova: u64, spa: u64, size_log2: u8, perm: Perm) -> bool {
        let leaf_level = (u32::from(size_log2) - 12) / 9 + 1;
        let mut table = TOP;
        for level in (leaf_level + 1..=self.levels).rev() {
            let slot = Self::slot(table, iova, level);
            let e = self.mem.read_u64(slot).unwrap();
            if e == 0 {
                // Tables are R/W; the leaf alone restricts.
                self.mem.write_u64(slot, self.next_table | 3).unwrap();
                table = self.next_table;
                self.next_table += 0x1000;
            } else if e & 0x80 != 0 {
                return false;
            } else {
                table = e & 0x000f_ffff_ffff_f000;
            }
        }
        let slot = Self::slot(table, iova, leaf_level);
        if self.mem.read_u64(slot).unwrap() != 0 {
            return false;
        }
        let ps = if leaf_level > 1 { 0x80 } else { 0 };
        let rw = u64::from(perm.read) | u64::from(perm.write) << 1;
        self.mem.write_u64(slot, spa | ps | rw).unwrap();
        self.maps.push(Mapping { iova, spa, size_log2, perm });
        true
    }

    fn lookup(&self, iova: u64) -> Option<&Mapping> {
        self.maps.iter().find(|m| iova >> m.size_log2 == m.iova >> m.size_log2)
    }
}

fn perm() -> impl Strategy<Value = Perm> {
    prop_oneof![Just(Perm::new(true, false)), Just(Perm::new(false, true)), Just(Perm::RW)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mappings_translate_back_and_nothing_else_does(
        aw in 1u8..=3,
        maps in prop::collection::vec((prop::sample::select(vec![12u8, 21, 30]), any::<u64>(), any::<u64>(), perm()), 1..16),
        offsets in prop::collection::vec(any::<u64>(), 4),
        probes in prop::collection::vec(any::<u64>(), 8),
    ) {
        let mut b = Builder::new(aw);
        let width = 30 + 9 * u32::from(aw);
        for (size_log2, i, s, perm) in maps {
            let mask = (1u64 << size_log2) - 1;
            b.map(i & ((1u64 << width) - 1) & !mask, s & 0x000f_ffff_ffff_f000 & !mask, size_log2, perm);
        }
        let caps = Caps::default();
        for m in &b.maps {
            for off in &offsets {
                let iova = m.iova | (off & ((1u64 << m.size_log2) - 1));
                for access in [Access::Read, Access::Write] {
                    let o = translate(&b.mem, &caps, RTADDR, SID, iova, access);
                    if m.perm.allows(access) {
                        let t = o.translation().expect("a mapped page translates");
                        prop_assert_eq!((t.spa, t.size_log2, t.perm), (m.spa | (iova - m.iova), m.size_log2, m.perm));
                    } else {
                        let want = if access == Access::Read { FaultReason::ReadDenied } else { FaultReason::WriteDenied };
                        prop_assert_eq!(o.reason(), Some(want));
                    }
                }
            }
        }
        // Addresses near the mappings and anywhere in the width: exactly the reference's answer.
        let near = b.maps.iter().flat_map(|m| [m.iova.wrapping_sub(1), m.iova + (1u64 << m.size_log2)]);
        let anywhere = probes.iter().map(|p| p & ((1u64 << width) - 1));
        for iova in near.chain(anywhere).filter(|i| i >> width == 0) {
            let o = translate(&b.mem, &caps, RTADDR, SID, iova, Access::Read);
            match b.lookup(iova) {
                Some(m) if m.perm.read => prop_assert_eq!(o.translation().map(|t| t.spa), Some(m.spa | (iova - m.iova))),
                _ => prop_assert_eq!(o.reason(), Some(FaultReason::ReadDenied)),
            }
        }
        for p in probes {
            let above = p | 1u64 << (width + u32::from(p as u8) % (64 - width));
            let o = translate(&b.mem, &caps, RTADDR, SID, above, Access::Read);
            prop_assert_eq!(o.reason(), Some(FaultReason::AddressBeyondMgaw));
        }
        prop_assert!(!matches!(translate(&b.mem, &caps, RTADDR, SID + 1, 0, Access::Read), VtdOutcome::Ok(_)));
    }
}

/// Context entry bits (lo, hi) around P and FPD, and one arbitrary entry per level along the
/// IOVA's path, each pointing (when its address bits say so) at the next table.
fn path_entries() -> impl Strategy<Value = (u64, u64, [u64; 5])> {
    let entry = prop_oneof![
        3 => (0u64..8, any::<u64>()).prop_map(|(i, bits)| (TOP + 0x1000 * (i + 1)) | (bits & 0xfff0_0000_0000_0fff)),
        1 => any::<u64>(),
    ];
    (any::<u64>(), any::<u64>(), [entry.clone(), entry.clone(), entry.clone(), entry.clone(), entry])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// FPD changes whether a fault is recorded, and only for qualified faults: never the
    /// translation, the reason or the level.
    #[test]
    fn fpd_only_decides_recording(
        (lo, hi, entries) in path_entries(),
        iova in prop_oneof![3 => any::<u64>().prop_map(|i| i & ((1 << 39) - 1)), 1 => any::<u64>()],
        write in any::<bool>(),
    ) {
        let mut m = ByteMem::new(0, 0x40_0000);
        m.write_u64(RTADDR, CTX | 1).unwrap();
        let ce = CTX + u64::from(SID & 0xff) * 16;
        // Mostly a usable context entry: SSPTPTR at TOP, AW 1..3, TT 0 three times in four.
        let tt = if lo >> 8 & 3 == 0 { lo & 0xc } else { 0 };
        let lo = if lo & 3 != 0 { TOP | 1 | tt } else { lo };
        let hi = if hi & 0x300 != 0 { 1 + hi % 3 } else { hi };
        m.write_u64(ce + 8, hi).unwrap();
        let levels = if (1..=3).contains(&(hi & 7)) { (hi & 7) as u32 + 2 } else { 5 };
        let mut table = TOP;
        for (i, e) in entries.iter().take(levels as usize).enumerate() {
            let level = levels - i as u32;
            m.write_u64(table + ((iova >> (3 + 9 * level)) & 0x1ff) * 8, *e).unwrap();
            table = TOP + 0x1000 * (i as u64 + 1);
        }
        let access = if write { Access::Write } else { Access::Read };
        let caps = Caps::default();
        m.write_u64(ce, lo & !2).unwrap();
        let without = translate(&m, &caps, RTADDR, SID, iova, access);
        m.write_u64(ce, lo | 2).unwrap();
        let with = translate(&m, &caps, RTADDR, SID, iova, access);
        match (without, with) {
            (VtdOutcome::Ok(a), VtdOutcome::Ok(b)) => prop_assert_eq!(a, b),
            (VtdOutcome::Fault { record: ra, level: la, recorded: rec_a }, VtdOutcome::Fault { record: rb, level: lb, recorded: rec_b }) => {
                prop_assert_eq!((ra, la), (rb, lb));
                prop_assert!(rec_a, "without FPD every fault is recorded");
                prop_assert_eq!(rec_b, !ra.reason.is_qualified());
            }
            (a, b) => prop_assert!(false, "FPD changed the outcome: {:?} vs {:?}", a, b),
        }
    }
}
