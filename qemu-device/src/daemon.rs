//! The daemon: one vfio-user server per PCI function. Not written yet (issue "The tiommu daemon
//! under QEMU"); until then `tiommu daemon` says so and fails.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<(), String> {
    Err("the daemon is not implemented yet".into())
}
