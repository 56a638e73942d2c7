//! The endpoint's descriptor engine over arbitrary memory: the input is 32 bytes of registers
//! then guest RAM (device table, page tables, the ring and its descriptors all come from it),
//! plus a few RMP updates. Whatever it holds, the engine must end, stay inside memory, and keep
//! HEAD inside the ring.
//!
//! Registers: word 0 the device table base (bits 19:0 and the size field; with bit 63, all 64
//! bits), word 1 RMP updates, word 2 the engine's RING_SIZE/TAIL/HEAD (and a 20-bit ring base),
//! word 3 when not 0 the ring base as any 64-bit value, its bit 1 placing guest RAM at the top of
//! the address space (so that sums near 2^64 are tried on memory that is there).

use crate::Null;
use iommu_model::amdvi::mmio::{self, control};
use iommu_model::mem::ByteMem;
use qemu_device::devices::endpoint::{run_ring, Engine};
use qemu_device::secure::SecureIommu;
use rmp_model::ops::RmpState;
use rmp_model::{PageSize, Rmp};
use std::sync::{Arc, Mutex};

const RAM: usize = 1 << 20;

pub fn run(data: &[u8]) {
    if data.len() < 32 {
        return;
    }
    let (regs, image) = data.split_at(32);
    let word = |i: usize| u64::from_le_bytes(regs[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let top = word(3) & 2 != 0;
    let base = if top { 0u64.wrapping_sub(RAM as u64) } else { 0 };
    let mut mem = ByteMem::from_bytes(base, image.to_vec());
    mem.bytes.resize(RAM, 0);
    let mut s = SecureIommu::new(Arc::new(Null), Arc::new(Null));
    let devtab = if word(0) >> 63 != 0 { word(0) } else { base | (word(0) & 0xf_f1ff) };
    s.bar0_write(&mut mem, mmio::DEV_TABLE_BASE, 8, devtab);
    s.bar0_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
    if word(1) & 1 == 1 {
        let mut rmp = Rmp::new((RAM >> 12) as u64);
        for i in 0..4 {
            let w = word(1).rotate_left(i * 16);
            let size = if w & 2 == 0 { PageSize::Size4K } else { PageSize::Size2M };
            rmp.rmpupdate((w >> 4) & 0xf_f000, &RmpState::private(w & 0xf_f000, (w >> 20) as u16 & 0x3f, size));
        }
        s.enable_snp_with(rmp);
    }
    let w = word(2);
    let ring_base = if word(3) != 0 { word(3) & !0x1f } else { base | (w & 0xf_ffe0) };
    let engine = Mutex::new(Engine {
        ring_base,
        ring_size_log2: ((w >> 20) & 0xf) as u32,
        tail: ((w >> 24) & 0x1fff) as u32,
        head: ((w >> 40) & 0x1fff) as u32,
        ..Default::default()
    });
    let secure = Mutex::new(s);
    run_ring(0x20, &engine, &secure, &mut mem, &Null, &Null);
    let e = engine.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = (1..=12).contains(&e.ring_size_log2).then(|| 1u32 << e.ring_size_log2) {
        assert!(e.head < n.max(e.head.saturating_add(1)), "head {} outside a ring of {n}", e.head);
    }
    assert_eq!(mem.bytes.len(), RAM);
}
