//! Property: any set of non-overlapping mappings written by the reference builder translates back
//! exactly, for every mode 1-6 and every page size the mode reaches; what is not mapped faults.

use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::{DevTabBase, Dte};
use iommu_model::amdvi::{translate, Outcome};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::{Access, Perm};
use proptest::prelude::*;

const DEVTAB: u64 = 0x1000;
const POOL: u64 = 0x10_0000;
const POOL_END: u64 = 0x40_0000;

/// Page sizes: natural ones (NextLevel 0) and sized ones (NextLevel 7), up to 2^39.
const SIZES: [u8; 9] = [12, 13, 16, 21, 22, 25, 30, 31, 39];

fn mapping() -> impl Strategy<Value = (u8, u64, u64, bool)> {
    (prop::sample::select(SIZES.to_vec()), any::<u64>(), any::<u64>(), any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn mappings_translate_back(mode in 1u8..=6, maps in prop::collection::vec(mapping(), 1..12), probe in any::<u64>()) {
        let mut m = ByteMem::new(0, POOL_END as usize);
        let mut b = V1Builder::new(&mut m, POOL, POOL_END, mode).unwrap();
        let reach = (12 + 9 * u32::from(mode)).min(64);
        let mut done: Vec<(u64, u64, u8, Perm)> = Vec::new();
        for (size_log2, iova_seed, spa_seed, ro) in maps {
            if u32::from(size_log2) >= reach {
                continue;
            }
            let mask = (1u64 << size_log2) - 1;
            let iova = if reach >= 64 { iova_seed } else { iova_seed & ((1u64 << reach) - 1) } & !mask;
            let spa = spa_seed & 0x000f_ffff_ffff_f000 & !mask;
            let end = iova + mask;
            if done.iter().any(|&(i, _, s, _)| iova <= i + ((1u64 << s) - 1) && i <= end) {
                continue;
            }
            let perm = Perm::new(true, !ro);
            // Levels that would have to split an existing large page are the builder's refusal.
            if b.map(&mut m, iova, spa, size_log2, perm).is_ok() {
                done.push((iova, spa, size_log2, perm));
            }
        }
        m.write(DEVTAB, &Dte::translated(b.root, mode, 1, Perm::RW).to_bytes()).unwrap();
        let devtab = DevTabBase(DEVTAB);
        for &(iova, spa, size_log2, perm) in &done {
            let off = probe & ((1u64 << size_log2) - 1);
            let t = translate(&m, devtab, 0, iova + off, Access::Read).translation();
            prop_assert!(t.is_some(), "{iova:#x} (2^{size_log2}) did not translate");
            let t = t.unwrap();
            prop_assert_eq!(t.spa, spa + off);
            prop_assert_eq!(t.size_log2, size_log2);
            prop_assert_eq!(t.perm, perm);
            let w = translate(&m, devtab, 0, iova + off, Access::Write);
            prop_assert_eq!(w.translation().is_some(), perm.write);
        }
        // An address no mapping covers faults.
        let unmapped = if reach >= 64 { probe } else { probe & ((1u64 << reach) - 1) };
        if !done.iter().any(|&(i, _, s, _)| unmapped >= i && unmapped - i < (1u64 << s)) {
            let o = translate(&m, devtab, 0, unmapped, Access::Read);
            prop_assert!(matches!(o, Outcome::Fault { .. }), "{unmapped:#x} translated: {o:?}");
        }
    }
}
