//! Both PCI functions at every BAR and config-space access: tiommu_fuzz_harness::functions.
//! The body is shared with `cargo test`, which replays every kept input (fuzz/corpus/functions,
//! fuzz/regressions/functions).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiommu_fuzz_harness::functions::run(data));
