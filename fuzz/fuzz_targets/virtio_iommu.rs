//! The virtio-iommu function under a hostile driver: tiommu_fuzz_harness::virtio_iommu.
//! The body is shared with `cargo test`, which replays every kept input (fuzz/corpus/virtio_iommu,
//! fuzz/regressions/virtio_iommu).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiommu_fuzz_harness::virtio_iommu::run(data));
