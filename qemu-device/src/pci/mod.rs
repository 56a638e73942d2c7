//! PCI config space of the daemon's functions.

pub mod config;
pub mod doe;
