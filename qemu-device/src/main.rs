//! `tiommu`: the secure-IOMMU daemon QEMU attaches over vfio-user, and its offline tools.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tiommu", version, about = "A secure IOMMU (AMD SEV-TIO / Intel TDX Connect style) for QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() {
    let cli = Cli::parse();
    match cli.command {}
}
