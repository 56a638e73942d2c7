//! Both PCI functions as QEMU's vfio-user client reaches them: config-space reads and writes
//! (the DOE mailbox included) and BAR accesses at any offset and size (the AMD-Vi registers, the
//! RMP registers, the firmware mailbox with its buffer in guest RAM, the endpoint's registers and
//! doorbell). The input is a list of accesses and the contents of guest RAM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_device::function::EventSink;
use qemu_device::functions::endpoint::Endpoint;
use qemu_device::functions::iommu::IommuFunction;
use qemu_device::guest_mem::GuestRam;
use qemu_device::secure::SecureIommu;
use qemu_device::vfio_server::{FunctionBackend, MsixIrq};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use vfio_user::ServerBackend;

struct Null;
impl EventSink for Null {
    fn emit(&self, _: serde_json::Value) {}
}

const RAM: u64 = 1 << 20;

/// Guest RAM: one file mapped once; each input rewrites its contents.
fn ram() -> &'static (GuestRam, File) {
    static RAM_FILE: OnceLock<(GuestRam, File)> = OnceLock::new();
    RAM_FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tiommu-fuzz-ram-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(RAM).unwrap();
        let ram = GuestRam::default();
        ram.map(0, RAM, f.try_clone().unwrap(), 0).unwrap();
        (ram, f)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.len().checked_sub(data.len().min(4096)) else { return };
    let (ops, image) = data.split_at(split.min(data.len()));
    let (ram, file) = ram();
    let mut page = vec![0u8; RAM as usize];
    page[..image.len()].copy_from_slice(image);
    file.write_all_at(&page, 0).unwrap();

    let secure = Arc::new(Mutex::new(SecureIommu::new(Arc::new(Null), Arc::new(MsixIrq::default()))));
    let (tx, rx) = crossbeam_channel::bounded(64);
    let mut iommu = FunctionBackend::new("iommu", IommuFunction::new(secure.clone(), ram.clone()), ram.clone(), Arc::new(MsixIrq::default()));
    let ep_irq = Arc::new(MsixIrq::default());
    let mut ep = FunctionBackend::new("endpoint", Endpoint::new(0x20, secure, ram.clone(), ep_irq.clone(), tx), ram.clone(), ep_irq);
    for op in ops.chunks_exact(16) {
        let region = u32::from(op[0] % 10);
        let offset = u64::from(u32::from_le_bytes(op[2..6].try_into().unwrap())) % 0x5000;
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
});
