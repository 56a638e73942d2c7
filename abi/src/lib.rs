//! The tiommu device ABI, in one place: what a driver, a test or a checker written against the
//! tiommu functions depends on. No I/O and no `unsafe`: definitions only.
//!
//! - [`Bdf`]: how every record, command line and table names a PCI function.
#![forbid(unsafe_code)]

mod bdf;

pub use bdf::Bdf;
