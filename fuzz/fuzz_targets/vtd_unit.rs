//! The VT-d register file as a guest drives it: arbitrary register writes (including queue
//! tails that run arbitrary descriptors from memory) and DMA translations over arbitrary memory.
//! The unit must not panic, and its caches and interrupt queue stay bounded.
#![no_main]

use iommu_model::mem::ByteMem;
use iommu_model::vtd::regs::MMIO_SIZE;
use iommu_model::vtd::unit::VtdUnit;
use iommu_model::walk::Access;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let (ops, memory) = data.split_at(data.len().min(512));
    let mut mem = ByteMem::from_bytes(0, memory.to_vec());
    mem.bytes.resize(0x1_0000, 0);
    let mut unit = VtdUnit::default();
    for op in ops.chunks_exact(16) {
        let off = u64::from(u16::from_le_bytes([op[0], op[1]])) % MMIO_SIZE;
        let val = u64::from_le_bytes(op[8..16].try_into().unwrap());
        match op[2] % 4 {
            0 => unit.mmio_write(&mut mem, off & !7, 8, val),
            1 => unit.mmio_write(&mut mem, off & !3, 4, val),
            2 => {
                let _ = unit.mmio_read(off, if op[3] & 1 == 0 { 4 } else { 8 });
            }
            _ => {
                let access = if op[3] & 1 == 0 { Access::Read } else { Access::Write };
                let _ = unit.translate(&mem, u16::from_le_bytes([op[4], op[5]]), val, access);
            }
        }
        assert!(unit.iotlb_len() <= iommu_model::iotlb::CAPACITY);
        assert!(unit.take_interrupts().len() <= 2);
    }
});
