//! Fault injection as the control channel takes it from a tool or, with run-vm --inject, from the
//! guest: arbitrary command lines (faults armed with arbitrary parameters and triggers, status,
//! clear), then arbitrary register writes and DMA requests that make armed faults fire over
//! arbitrary memory. Nothing may panic, and the armed faults and the fired history stay bounded.
//! An odd number of command bytes makes the IOMMU the VT-d unit (queued invalidation on), so the
//! VT-d faults fire too; an even one, the AMD-Vi unit.
#![no_main]

use iommu_model::amdvi::mmio::{self, control, MMIO_SIZE};
use iommu_model::mem::ByteMem;
use iommu_model::walk::Access;
use libfuzzer_sys::fuzz_target;
use qemu_device::daemon::control::{Control, Target};
use qemu_device::secure::SecureIommu;
use qemu_device::vfio::function::{EventSink, Irq};
use qemu_device::vfio::guest_mem::GuestRam;
use std::sync::{Arc, Mutex};

struct Null;
impl EventSink for Null {
    fn emit(&self, _: abi::event::Event) {}
}
impl Irq for Null {
    fn raise(&self, _: u16) {}
}

fuzz_target!(|data: &[u8]| {
    // Command lines up to the first NUL; register writes and requests after it.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (lines, ops) = data.split_at(split);
    let mut mem = ByteMem::new(0, 0x4_0000);
    let secure = Arc::new(Mutex::new(SecureIommu::new(Arc::new(Null), Arc::new(Null))));
    if split % 2 == 1 {
        use iommu_model::vtd::regs;
        let mut s = secure.lock().unwrap();
        s.use_vtd(iommu_model::vtd::unit::VtdUnit::default());
        s.bar0_write(&mut mem, regs::IQA, 8, 0x1_0000);
        s.bar0_write(&mut mem, regs::FECTL, 4, 0);
        s.bar0_write(&mut mem, regs::GCMD, 4, u64::from(regs::gcmd::QIE | regs::gcmd::TE));
    } else {
        let mut s = secure.lock().unwrap();
        s.bar0_write(&mut mem, mmio::CMD_BUF_BASE, 8, 0x1_0000 | 8 << 56);
        s.bar0_write(&mut mem, mmio::EVENT_LOG_BASE, 8, 0x2_0000 | 8 << 56);
        s.bar0_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN | control::CMD_BUF_EN | control::EVENT_LOG_EN | control::EVENT_INT_EN);
    }
    let channel = Control::default();
    channel.attach(Target { secure: secure.clone(), ram: GuestRam::default() });
    let mut id = 1000;
    for line in String::from_utf8_lossy(lines).lines() {
        let _ = channel.handle(line);
        // The same command armed over memory that is there, so what fires logs.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Ok((f, w)) = qemu_device::secure::inject::parse(&v) {
                id += 1;
                let _ = secure.lock().unwrap().arm(&mut mem, id, f, w);
            }
        }
    }
    let mut s = secure.lock().unwrap();
    for op in ops.get(1..).unwrap_or(&[]).chunks_exact(12) {
        let val = u64::from_le_bytes(op[4..12].try_into().unwrap());
        match op[0] % 3 {
            0 => {
                s.bar0_write(&mut mem, (u64::from(u16::from_le_bytes([op[1], op[2]])) % MMIO_SIZE) & !7, 8, val);
            }
            1 => {
                let access = if op[3] & 1 == 0 { Access::Read } else { Access::Write };
                let _ = s.page(&mut mem, u16::from_le_bytes([op[1], op[2]]), op[3] & 2 != 0, val, access);
            }
            _ => {
                s.clear_faults(&mut mem, (op[1] & 1 == 0).then_some(u32::from(op[2])));
            }
        }
        assert!(s.pending_faults().len() <= 2 * iommu_model::inject::MAX_ARMED);
        assert!(s.fired_faults().len() <= 256);
    }
});
