//! The device-facing fuzz targets' bodies: each `run(data)` takes any bytes and must neither
//! panic (debug assertions on: an arithmetic overflow is a panic) nor hang. fuzz/fuzz_targets/
//! wraps them for libFuzzer; tests/replay.rs runs every input kept under fuzz/ (seeds, minimised
//! corpora, crash regressions) through them on each `cargo test`.

pub mod descriptors;
pub mod functions;
pub mod secure_iommu;
pub mod virtio_iommu;

pub use qemu_device::testing::{guest_ram, Null};
