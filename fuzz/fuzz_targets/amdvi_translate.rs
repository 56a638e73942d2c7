//! AMD-Vi translation through tables the input writes: one device, three requests, each made
//! twice through the unit (DTE cache and IOTLB, cold then warm) and once uncached. Memory does not
//! change during a run (the event log is off), so every answer must equal the uncached one: a
//! cache that returned anything else would be a model bug, not a stale-entry case.
//!
//! Input: 29-byte header (DeviceID, Device Table Base register low bits, access bits, three
//! IOVAs), then 10-byte writes of a u64 into a 64 KiB memory (u16 slot index, u64 value).
#![no_main]

use iommu_model::amdvi::dte::DevTabBase;
use iommu_model::amdvi::mmio::{self, control, AmdVi};
use iommu_model::amdvi::{translate, Outcome};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::Access;
use libfuzzer_sys::fuzz_target;

const MEM: usize = 0x1_0000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 29 {
        return;
    }
    let (h, writes) = data.split_at(29);
    let devid = u16::from_le_bytes([h[0], h[1]]);
    let low = u16::from_le_bytes([h[2], h[3]]);
    // Size (bits 8:0) as given; the table in one of the 16 pages of memory.
    let devtab = u64::from(low >> 9 & 0xf) << 12 | u64::from(low & 0x1ff);
    let requests: Vec<(u64, Access)> = (0..3)
        .map(|i| {
            let iova = u64::from_le_bytes(h[5 + 8 * i..13 + 8 * i].try_into().unwrap());
            (iova, if h[4] >> i & 1 != 0 { Access::Write } else { Access::Read })
        })
        .collect();
    let mut mem = ByteMem::new(0, MEM);
    for w in writes.chunks_exact(10) {
        let slot = u64::from(u16::from_le_bytes([w[0], w[1]])) % (MEM as u64 / 8);
        mem.write_u64(slot * 8, u64::from_le_bytes(w[2..10].try_into().unwrap())).unwrap();
    }
    let before = mem.bytes.clone();

    let mut vi = AmdVi::new();
    vi.mmio_write(&mut mem, mmio::DEV_TABLE_BASE, 8, devtab);
    vi.mmio_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
    for _pass in 0..2 {
        for &(iova, access) in &requests {
            let want = translate(&mem, DevTabBase(devtab), devid, iova, access);
            let got = vi.translate(&mut mem, devid, iova, access);
            assert_eq!(got, want, "iova {iova:#x} {access:?}");
            if let Outcome::Ok(t) = got {
                assert!(t.perm.allows(access));
                let mask = t.page_size() - 1;
                assert_eq!(t.spa & mask, iova & mask);
            }
        }
    }
    assert!(mem.bytes == before, "a translation wrote memory with the event log off");
});
