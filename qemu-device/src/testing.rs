//! Helpers for the unit tests, the integration tests, the benches and the fuzz targets, so each
//! does not carry its own copy: guest RAM in an unlinked temporary file (as QEMU's memfd), an
//! interrupt recorder, and event sinks that collect or discard.

use crate::vfio::function::{EventSink, Irq};
use crate::vfio::guest_mem::GuestRam;
use std::fs::File;
use std::sync::Mutex;

/// `size` bytes of zeroed guest RAM at GPA 0, backed by an unlinked temporary file (`name` keeps
/// concurrent users apart). The file is returned too, for callers that rewrite its contents.
pub fn guest_ram(name: &str, size: u64) -> (GuestRam, File) {
    let path = std::env::temp_dir().join(format!("tiommu-{name}-{}-{:?}", std::process::id(), std::thread::current().id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("a RAM file");
    let _ = std::fs::remove_file(&path);
    f.set_len(size).expect("RAM size");
    let ram = GuestRam::default();
    ram.map(0, size, f.try_clone().expect("RAM fd"), 0).expect("RAM mapped");
    (ram, f)
}

/// An `Irq` that records every vector raised, in order.
#[derive(Default)]
pub struct Irqs(pub Mutex<Vec<u16>>);

impl Irq for Irqs {
    fn raise(&self, v: u16) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(v);
    }
}

/// An event sink that keeps every record in memory, as JSON (the form the stream has).
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<serde_json::Value>>);

impl EventSink for Collect {
    fn emit(&self, event: abi::event::Event) {
        let v = serde_json::to_value(&event).unwrap_or_default();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(v);
    }
}

/// Discards events and interrupts.
pub struct Null;

impl EventSink for Null {
    fn emit(&self, _: abi::event::Event) {}
}

impl Irq for Null {
    fn raise(&self, _: u16) {}
}
