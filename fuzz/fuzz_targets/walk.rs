//! The walker over arbitrary memory, for both formats: any bytes, any root, any level count, any
//! IOVA must end in a translation or a fault, within the level bound, without panicking.
#![no_main]

use iommu_model::fmt::amdv1::AmdV1;
use iommu_model::fmt::vtd_ss::VtdSs;
use iommu_model::mem::ByteMem;
use iommu_model::walk::{walk_traced, Perm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let root = u64::from_le_bytes(data[0..8].try_into().unwrap()) & 0xffff_f000;
    let iova = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let levels = data[16] % 8;
    let vtd = data[17] & 1 == 1;
    let mem = ByteMem::from_bytes(0, data[18..].to_vec());
    let mut steps = 0u8;
    let res = if vtd {
        let fmt = VtdSs { haw: 39 + (data[17] >> 1) % 14, sp_2m: true, sp_1g: data[17] & 2 != 0 };
        walk_traced(&fmt, &mem, root, levels, iova, |_| steps += 1)
    } else {
        walk_traced(&AmdV1, &mem, root, levels, iova, |_| steps += 1)
    };
    assert!(steps <= levels.max(1));
    if let Ok(t) = res {
        assert!(t.size_log2 >= 12 && t.size_log2 < 64);
        let mask = (1u64 << t.size_log2) - 1;
        assert_eq!(t.spa & mask, iova & mask);
        assert_eq!(t.perm.and(Perm::RW), t.perm);
    }
});
