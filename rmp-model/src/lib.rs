//! Security state of the secure IOMMU: the SEV-SNP RMP, the SEV-TIO DMA rules, TDX Connect page
//! ownership, TDISP interface states and the TIO firmware commands.
//!
//! A pure library: no I/O, no threads, no unsafe. Its state is plain data that the daemon owns.
#![forbid(unsafe_code)]
