//! Both PCI functions as QEMU's vfio-user client reaches them: config-space reads and writes
//! (the DOE mailbox included) and BAR accesses at any offset and size (the AMD-Vi registers, the
//! RMP registers, the firmware mailbox with its buffer in guest RAM, the endpoint's registers and
//! doorbell). The input is a list of 16-byte accesses (byte 0 region, byte 1 width/function/
//! direction, bytes 2..6 offset, bytes 8..16 the value: any 64-bit value) followed by the first
//! 4 KiB of guest RAM.

use crate::{guest_ram, Null};
use qemu_device::devices::endpoint::Endpoint;
use qemu_device::devices::iommu::IommuFunction;
use qemu_device::secure::SecureIommu;
use qemu_device::vfio::guest_mem::GuestRam;
use qemu_device::vfio::server::{FunctionBackend, MsixIrq};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use vfio_user::ServerBackend;

const RAM: u64 = 1 << 20;

pub fn run(data: &[u8]) {
    static RAM_FILE: OnceLock<(GuestRam, File)> = OnceLock::new();
    let (ram, file) = RAM_FILE.get_or_init(|| guest_ram("functions", RAM));
    let split = data.len().saturating_sub(4096);
    let (ops, image) = data.split_at(split);
    let mut page = vec![0u8; RAM as usize];
    page[..image.len()].copy_from_slice(image);
    file.write_all_at(&page, 0).expect("RAM written");

    let secure = Arc::new(Mutex::new(SecureIommu::new(Arc::new(Null), Arc::new(MsixIrq::default()))));
    let (tx, rx) = crossbeam_channel::bounded(64);
    let mut iommu =
        FunctionBackend::new("iommu", IommuFunction::new(secure.clone(), ram.clone()), ram.clone(), Arc::new(MsixIrq::default()));
    let ep_irq = Arc::new(MsixIrq::default());
    let mut ep =
        FunctionBackend::new("endpoint", Endpoint::new(0x20, secure.clone(), ram.clone(), ep_irq.clone(), tx), ram.clone(), ep_irq);
    for op in ops.chunks_exact(16) {
        let region = u32::from(op[0] % 10);
        let offset = u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]])) % 0x5000;
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let value = &op[8..8 + len];
        let mut out = [0u8; 8];
        let f: &mut dyn ServerBackend = if op[1] & 4 == 0 { &mut iommu } else { &mut ep };
        if op[1] & 8 == 0 {
            let _ = f.region_write(region, offset, value);
        } else {
            let _ = f.region_read(region, offset, &mut out[..len]);
        }
        // Doorbells queue jobs; run them as the worker would.
        while let Ok(job) = rx.try_recv() {
            job();
        }
    }
    crate::secure_iommu::check_invariants(&secure, ram);
}
