//! The device-facing fuzz targets' bodies: each `run(data)` takes any bytes and must neither
//! panic (debug assertions on: an arithmetic overflow is a panic) nor hang. fuzz/fuzz_targets/
//! wraps them for libFuzzer; tests/replay.rs runs every input kept under fuzz/ (seeds, minimised
//! corpora, crash regressions) through them on each `cargo test`.

pub mod descriptors;
pub mod functions;
pub mod secure_iommu;
pub mod virtio_iommu;

use qemu_device::vfio::function::{EventSink, Irq};
use qemu_device::vfio::guest_mem::GuestRam;
use std::fs::File;

/// Discards events and interrupts.
pub struct Null;
impl EventSink for Null {
    fn emit(&self, _: serde_json::Value) {}
}
impl Irq for Null {
    fn raise(&self, _: u16) {}
}

/// Guest RAM of `size` bytes at GPA 0 backed by an unlinked file, as QEMU's memfd is: mapped
/// once per process (each input rewrites its contents).
pub fn guest_ram(name: &str, size: u64) -> (GuestRam, File) {
    let path = std::env::temp_dir().join(format!("tiommu-fuzz-{name}-{}-{:?}", std::process::id(), std::thread::current().id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("a RAM file");
    let _ = std::fs::remove_file(&path);
    f.set_len(size).expect("RAM size");
    let ram = GuestRam::default();
    ram.map(0, size, f.try_clone().expect("RAM fd"), 0).expect("RAM mapped");
    (ram, f)
}
