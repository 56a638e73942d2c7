//! The endpoint's descriptor engine over arbitrary memory: tiommu_fuzz_harness::descriptors.
//! The body is shared with `cargo test`, which replays every kept input (fuzz/corpus/descriptors,
//! fuzz/regressions/descriptors).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiommu_fuzz_harness::descriptors::run(data));
