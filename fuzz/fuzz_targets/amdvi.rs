//! The AMD-Vi unit as a guest drives it: arbitrary register writes (including command-buffer
//! tails that run arbitrary commands from memory) and DMA translations over arbitrary memory.
#![no_main]

use iommu_model::amdvi::mmio::{AmdVi, MMIO_SIZE};
use iommu_model::mem::ByteMem;
use iommu_model::walk::Access;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let (ops, memory) = data.split_at(data.len().min(256));
    let mut mem = ByteMem::from_bytes(0, memory.to_vec());
    mem.bytes.resize(0x1_0000, 0);
    let mut vi = AmdVi::new();
    for op in ops.chunks_exact(16) {
        let off = u64::from(u16::from_le_bytes([op[0], op[1]])) % MMIO_SIZE;
        let val = u64::from_le_bytes(op[8..16].try_into().unwrap());
        match op[2] % 4 {
            0 => vi.mmio_write(&mut mem, off & !7, 8, val),
            1 => vi.mmio_write(&mut mem, off & !3, 4, val),
            2 => {
                let _ = vi.mmio_read(off, if op[3] & 1 == 0 { 4 } else { 8 });
            }
            _ => {
                let access = if op[3] & 1 == 0 { Access::Read } else { Access::Write };
                let _ = vi.translate(&mut mem, u16::from_le_bytes([op[4], op[5]]), val, access);
            }
        }
        assert!(vi.iotlb_len() <= iommu_model::iotlb::CAPACITY);
    }
});
