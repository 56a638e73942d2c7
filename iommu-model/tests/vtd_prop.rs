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
