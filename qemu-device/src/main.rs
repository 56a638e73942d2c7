//! `tiommu`: the secure-IOMMU daemon QEMU attaches over vfio-user, and its offline tools.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use qemu_device::daemon::{self, control};
use qemu_device::run;
use qemu_device::tools::{check, dmar, dump, events, ivrs, viot, walk};

#[derive(Parser)]
#[command(
    name = "tiommu",
    version,
    about = "A secure IOMMU (AMD SEV-TIO / Intel TDX Connect style) for QEMU",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the secure IOMMU's PCI functions to QEMU over vfio-user.
    Daemon(daemon::Args),
    /// Translate IOVAs through AMD-Vi tables found in a raw memory image or a dump (`tiommu dump`).
    Walk(walk::Args),
    /// Write the ACPI VIOT table that puts endpoints behind a virtio-pci IOMMU (for QEMU's
    /// -acpitable file=).
    Viot(viot::Args),
    /// Write the ACPI IVRS table that describes the secure IOMMU function to Linux's amd_iommu
    /// (for QEMU's -acpitable file=).
    Ivrs(ivrs::Args),
    /// Write the ACPI DMAR table that describes the VT-d unit (`daemon --iommu vtd`) to Linux's
    /// intel_iommu (for QEMU's -acpitable file=).
    Dmar(dmar::Args),
    /// Have a running daemon write guest RAM, its IOMMU's registers and the RMP into a directory
    /// (for `tiommu walk --dump DIR`).
    Dump(dump::Args),
    /// Make a running daemon's secure IOMMU, RMP, TDI or endpoint fail on purpose (its
    /// control.sock), or list and clear the faults armed.
    Inject(control::Args),
    /// Print an event stream one decoded line per record, filtered by type and device, with the
    /// counts by type at the end (--follow tails a stream still being written).
    Events(events::Args),
    /// Check a finished guest run: its KTAP results, the records and kernel messages it expects.
    Check(check::Args),
    /// Boot a kernel under QEMU with the functions attached, run the guest scenarios and check
    /// the daemon's event stream against them (what scripts/run-vm runs).
    Run(run::Args),
    /// Print the daemon command, QEMU arguments and kernel command line that attach the
    /// functions to a QEMU command line of your own.
    QemuArgs(run::qemu_args::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // Bare `tiommu`: the subcommands, as --help lists them.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("tiommu: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Daemon(args) => {
            init_log();
            daemon::run(args)
        }
        Command::Walk(args) => walk::run(args),
        Command::Viot(args) => viot::run(args),
        Command::Ivrs(args) => ivrs::run(args),
        Command::Dmar(args) => dmar::run(args),
        Command::Inject(args) => control::run(args),
        Command::Events(args) => events::run(args),
        Command::Check(args) => check::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Run(args) => return run::main(args),
        Command::QemuArgs(args) => run::qemu_args::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tiommu: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A clap error as one line a script can show as it is: the message with its details (which
/// arguments are missing, what was expected), then the usage, without the "--help" hint.
fn one_line(msg: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for l in msg.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("For more information")) {
        let l = l.trim_start_matches("error: ");
        match l.strip_prefix("Usage: ") {
            Some(u) => parts.push(format!("(usage: {u})")),
            None => parts.push(l.to_string()),
        }
    }
    parts.join(" ")
}

/// The daemon's log on stderr. By default it is bounded whatever the guest does: what a guest can
/// repeat at will (refused DMA, malformed virtio rings) goes to the event stream, counted and
/// limited, and the virtio-queue crate's per-request errors are off (RUST_LOG=debug shows
/// everything).
fn init_log() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,virtio_queue=off".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
