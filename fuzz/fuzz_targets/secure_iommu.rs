//! The secure IOMMU through driver-like register sequences (RMP window, SNP_CTL, mailbox,
//! command buffer, device table, event log, endpoint ring): tiommu_fuzz_harness::secure_iommu.
//! The body is shared with `cargo test`, which replays every kept input (fuzz/corpus/secure_iommu,
//! fuzz/regressions/secure_iommu).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiommu_fuzz_harness::secure_iommu::run(data));
