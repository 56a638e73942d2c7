//! The IOAT engine as QEMU's vfio-user client reaches it: BAR0 accesses at any offset and width
//! (global and channel registers, CHANCMD, DMACOUNT doorbells), config-space accesses (the
//! CHANERR_INT registers, Initiate FLR), and descriptor chains in guest RAM that the channels
//! fetch and run through the secure IOMMU. The input is a list of accesses and the contents of
//! guest RAM. Whatever it holds, the engine must end, stay inside guest RAM and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_device::devices::ioat::Ioat;
use qemu_device::secure::SecureIommu;
use qemu_device::vfio::function::EventSink;
use qemu_device::vfio::guest_mem::GuestRam;
use qemu_device::vfio::server::{FunctionBackend, MsixIrq};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use vfio_user::ServerBackend;

struct Null;
impl EventSink for Null {
    fn emit(&self, _: abi::event::Event) {}
}

const RAM: u64 = 1 << 20;
/// Jobs run per input: a chain linked to itself with DMACOUNT far ahead would otherwise run
/// 65535 descriptors; the budget per job bounds each.
const MAX_JOBS: usize = 32;

/// Guest RAM: one file mapped once; each input rewrites its contents.
fn ram() -> &'static (GuestRam, File) {
    static RAM_FILE: OnceLock<(GuestRam, File)> = OnceLock::new();
    RAM_FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tiommu-fuzz-ioat-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(RAM).unwrap();
        let ram = GuestRam::default();
        ram.map(0, RAM, f.try_clone().unwrap(), 0).unwrap();
        (ram, f)
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.len() - data.len().min(4096);
    let (ops, image) = data.split_at(split);
    let (ram, file) = ram();
    let mut page = vec![0u8; RAM as usize];
    page[..image.len()].copy_from_slice(image);
    file.write_all_at(&page, 0).unwrap();

    // The AMD-Vi unit off: every IOVA is a guest physical address, so chains in the image run.
    let secure = Arc::new(Mutex::new(SecureIommu::new(Arc::new(Null), Arc::new(MsixIrq::default()))));
    let (tx, rx) = crossbeam_channel::bounded(64);
    let irq = Arc::new(MsixIrq::default());
    let mut dev = FunctionBackend::new("ioat", Ioat::new(0x30, secure, ram.clone(), irq.clone(), tx), ram.clone(), irq);
    let mut jobs = 0;
    for op in ops.chunks_exact(16) {
        // Region: BAR0 mostly, sometimes config space (7) or another index.
        let region = match op[0] % 8 {
            0..=5 => 0,
            6 => 7,
            _ => u32::from(op[0] >> 3) % 10,
        };
        let offset = u64::from(u32::from_le_bytes(op[2..6].try_into().unwrap())) % 0x5000;
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let value = &op[8..8 + len];
        if op[1] & 8 == 0 {
            let _ = dev.region_write(region, offset, value);
        } else {
            let mut out = [0u8; 8];
            let _ = dev.region_read(region, offset, &mut out[..len]);
        }
        // Doorbells queue jobs; run some as the worker would.
        while jobs < MAX_JOBS {
            let Ok(job) = rx.try_recv() else { break };
            job();
            jobs += 1;
        }
    }
    // The client goes: the channels stop, and what is still queued ends at once.
    drop(dev);
    while let Ok(job) = rx.try_recv() {
        job();
    }
});
