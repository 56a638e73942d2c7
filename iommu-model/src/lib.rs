//! Translation engine of a secure IOMMU: AMD-Vi (device table, v1 host page tables, command buffer,
//! event log) and Intel VT-d (root/context tables, second-stage tables, fault records), with one
//! page-table walker shared by the formats and an IOTLB with the architectural invalidations.
//!
//! A pure library: every read of a table goes through [`mem::PhysMem`]; no I/O, no threads, no
//! unsafe. The shape follows Linux's drivers/iommu/generic_pt: [`walk`] is the one walker and each
//! file under [`fmt`] only describes the entries of one format.
#![forbid(unsafe_code)]
// Every table field the walk reads is guest-written: arithmetic on it is checked, wrapping or
// saturating by choice, never an overflow (a panic in a debug build, a wrap in a release one).
#![cfg_attr(not(test), warn(clippy::arithmetic_side_effects))]

pub mod amdvi;
pub mod fmt;
pub mod inject;
pub mod iotlb;
pub mod mem;
pub mod vtd;
pub mod walk;
