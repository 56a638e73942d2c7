//! The vfio-user plumbing: the server loop each function runs on (rust-vmm's vfio-user crate),
//! guest RAM as QEMU shares it, and the `PciFunction` trait a device implements.

pub mod function;
pub mod guest_mem;
pub mod server;
