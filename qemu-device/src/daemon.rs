//! `tiommu daemon`: one vfio-user server per PCI function, a DMA worker fed through a channel,
//! and the JSON event stream. Runs until QEMU disconnects from every function (with --persist:
//! power-cycles and waits for the next QEMU), or until SIGTERM or SIGINT; either way it removes
//! its sockets and exits with status 0.

use crate::control::{Control, Target};
use crate::events::JsonLines;
use crate::functions::endpoint::{Endpoint, Job};
use crate::functions::ioat::Ioat;
use crate::functions::iommu::IommuFunction;
use crate::functions::virtio_iommu::VirtioIommu;
use crate::guest_mem::GuestRam;
use crate::secure::SecureIommu;
use crate::vfio_server::{listen, remove_socket, FunctionBackend, MsixIrq};
use crate::walk::parse_bdf;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the sockets: iommu.sock (secure IOMMU), endpoint.sock (DMA endpoint) and,
    /// with --virtio-iommu, virtio-iommu.sock; with --ioat, ioat.sock.
    #[arg(long)]
    socket_dir: PathBuf,
    /// JSON-lines event stream (translation faults, RMP violations, TDISP transitions, hazards,
    /// DMA completions); "-" for stdout.
    #[arg(long)]
    events: PathBuf,
    /// Publish the RMP in this file (raw entries at pfn × 16) for the TCG plugin to check CPU
    /// stores against.
    #[arg(long)]
    rmp_state: Option<PathBuf>,
    /// Requester ID of the DMA endpoint: the PCI address QEMU places it at (bus:dev.fn).
    #[arg(long, value_parser = parse_bdf, default_value = "00:04.0")]
    endpoint_bdf: u16,
    /// Also serve a virtio-iommu (virtio-iommu.sock) that translates the DMA endpoint (and the
    /// IOAT engine); QEMU must then connect to every socket.
    #[arg(long)]
    virtio_iommu: bool,
    /// The secure IOMMU's register interface in BAR0: AMD-Vi (Linux's amd_iommu, ACPI IVRS) or
    /// a VT-d remapping unit in legacy mode (Linux's intel_iommu, ACPI DMAR: `tiommu dmar`).
    #[arg(long, value_enum)]
    iommu: Option<IommuKind>,
    /// The security personality: SEV-TIO (the RMP, the PSP-style firmware mailbox) or TDX
    /// Connect (a TDX-module stand-in owning the PAMT, the TDs' S-EPTs and the trusted I/O page
    /// tables; its IOMMU is VT-d, so this implies `--iommu vtd`).
    #[arg(long, value_enum, default_value = "sev-tio")]
    personality: Personality,
    /// Also serve an Intel IOAT DMA engine (ioat.sock, PCI 8086:2021) that Linux's ioatdma drives;
    /// its DMA takes the same secure path as the endpoint's.
    #[arg(long)]
    ioat: bool,
    /// Requester ID of the IOAT engine: the PCI address QEMU places it at (bus:dev.fn).
    #[arg(long, value_parser = parse_bdf, default_value = "00:06.0")]
    ioat_bdf: u16,
    /// Serve QEMU after QEMU on the same sockets: when every function's client has gone, the
    /// model powers off and on (registers, caches, RMP and TDIs start afresh; the last guest's
    /// tables were in its RAM, which went with it) and waits for the next QEMU. Ends on SIGTERM
    /// or SIGINT.
    #[arg(long)]
    persist: bool,
    /// Faults to arm at the start of every session: JSON lines of `tiommu inject` commands
    /// (docs/fault-injection.md). Faults can also be armed at any time through control.sock.
    #[arg(long)]
    inject_plan: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IommuKind {
    AmdVi,
    Vtd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Personality {
    SevTio,
    TdxConnect,
}

pub fn run(args: Args) -> Result<(), String> {
    if args.personality == Personality::TdxConnect && args.iommu == Some(IommuKind::AmdVi) {
        return Err("--personality tdx-connect runs on a VT-d unit; it cannot take --iommu amd-vi".into());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    std::fs::create_dir_all(&args.socket_dir).map_err(|e| format!("cannot create {}: {e}", args.socket_dir.display()))?;
    let out: Box<dyn std::io::Write + Send> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::fs::File::create(&args.events).map_err(|e| format!("cannot create {}: {e}", args.events.display()))?)
    };
    let events = Arc::new(JsonLines::new(out));
    let control = Arc::new(match &args.inject_plan {
        Some(p) => Control::with_plan(p)?,
        None => Control::default(),
    });
    let mut socks = vec![args.socket_dir.join("iommu.sock"), args.socket_dir.join("endpoint.sock")];
    if args.virtio_iommu {
        socks.push(args.socket_dir.join("virtio-iommu.sock"));
    }
    if args.ioat {
        if args.ioat_bdf == args.endpoint_bdf {
            return Err("--ioat-bdf and --endpoint-bdf must differ".into());
        }
        socks.push(args.socket_dir.join("ioat.sock"));
    }
    // The control channel (fault injection), beside the functions' sockets.
    socks.push(args.socket_dir.join("control.sock"));
    let mut listeners = Vec::new();
    for s in &socks {
        match listen(s) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                socks[..listeners.len()].iter().for_each(|s| remove_socket(s));
                return Err(e);
            }
        }
    }
    if let Some(l) = listeners.pop() {
        if let Err(e) = control.serve(l) {
            socks.iter().for_each(|s| remove_socket(s));
            return Err(e);
        }
    }
    stop_on_signal(socks.clone(), events.clone())?;
    let mut result;
    let mut sessions = 0u64;
    loop {
        // Each session accepts on its own handle of the same listening sockets.
        let handles: Result<Vec<UnixListener>, String> = listeners.iter().map(|l| l.try_clone().map_err(|e| e.to_string())).collect();
        result = handles.and_then(|h| session(&args, &events, &control, h));
        sessions += 1;
        if !args.persist {
            break;
        }
        if let Err(e) = &result {
            tracing::warn!("session {sessions} ended with an error: {e}");
        }
        tracing::info!("every function disconnected: powered off and on, waiting for the next QEMU");
        crate::function::EventSink::emit(
            events.as_ref(),
            serde_json::json!({"type": "power_cycle", "session": sessions, "error": result.as_ref().err(), "peak_rss_kib": peak_rss_kib()}),
        );
    }
    socks.iter().for_each(|s| remove_socket(s));
    crate::function::EventSink::emit(events.as_ref(), serde_json::json!({"type": "daemon_exit", "peak_rss_kib": peak_rss_kib()}));
    result
}

/// One QEMU's lifetime: a freshly powered-on model, one client per function, until all are gone.
fn session(args: &Args, events: &Arc<JsonLines>, control: &Control, listeners: Vec<UnixListener>) -> Result<(), String> {
    // Each function gets the guest RAM QEMU sends it; the IOMMU's view is the one the models use.
    let ram = GuestRam::default();
    let iommu_irq = Arc::new(MsixIrq::default());
    let mut sec = SecureIommu::new(events.clone(), iommu_irq.clone());
    if args.iommu == Some(IommuKind::Vtd) || args.personality == Personality::TdxConnect {
        sec.vtd = Some(iommu_model::vtd::unit::VtdUnit::default());
    }
    if args.personality == Personality::TdxConnect {
        // The unit says it takes part in TDX Connect (ECAP.TDXCS, Linux ecap_tdxc).
        if let Some(v) = &mut sec.vtd {
            v.set_ecap_bits(iommu_model::vtd::regs::ecap::TDXCS);
        }
        sec.tdx = Some(crate::tdx_module::TdxModule::default());
    }
    if let Some(path) = &args.rmp_state {
        sec.publisher = Some(crate::rmp_state::RmpPublisher::create(path)?);
    }
    let secure = Arc::new(Mutex::new(sec));
    control.attach(Target { secure: secure.clone(), ram: ram.clone() });

    let (tx, rx) = crossbeam_channel::bounded::<Job>(64);
    let worker = std::thread::Builder::new()
        .name("dma-worker".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })
        .map_err(|e| e.to_string())?;

    let iommu = FunctionBackend::new("iommu", IommuFunction::new(secure.clone(), ram.clone()), ram.clone(), iommu_irq);
    let ep_irq = Arc::new(MsixIrq::default());
    let ioat = args.ioat.then(|| {
        let irq = Arc::new(MsixIrq::default());
        FunctionBackend::new("ioat", Ioat::new(args.ioat_bdf, secure.clone(), ram.clone(), irq.clone(), tx.clone()), ram.clone(), irq)
    });
    let endpoint = Endpoint::new(args.endpoint_bdf, secure.clone(), ram.clone(), ep_irq.clone(), tx);
    let endpoint = FunctionBackend::new("endpoint", endpoint, ram.clone(), ep_irq);
    let viommu = args.virtio_iommu.then(|| {
        let irq = Arc::new(MsixIrq::default());
        let translated: Vec<u16> = std::iter::once(args.endpoint_bdf).chain(args.ioat.then_some(args.ioat_bdf)).collect();
        let dev = VirtioIommu::new(&translated, ram.clone(), irq.clone(), events.clone());
        // The endpoint's DMA takes the virtio-iommu's tables while it is attached to a domain.
        secure.lock().unwrap_or_else(|p| p.into_inner()).viommu = Some(dev.domains.clone());
        FunctionBackend::new("virtio-iommu", dev, ram.clone(), irq)
    });
    let mut listeners = listeners.into_iter();
    let (iommu_listener, ep_listener) = (listeners.next().ok_or("no listener")?, listeners.next().ok_or("no listener")?);
    let spawn = |name: &str, f: Box<dyn FnOnce() -> Result<(), String> + Send>| {
        std::thread::Builder::new().name(format!("vfu-{name}")).spawn(f).map_err(|e| e.to_string())
    };
    let mut threads = vec![
        ("iommu", spawn("iommu", Box::new(move || iommu.serve(iommu_listener)))?),
        ("endpoint", spawn("endpoint", Box::new(move || endpoint.serve(ep_listener)))?),
    ];
    if let Some(v) = viommu {
        let l = listeners.next().ok_or("no listener")?;
        threads.push(("virtio-iommu", spawn("virtio-iommu", Box::new(move || v.serve(l)))?));
    }
    if let Some(d) = ioat {
        let l = listeners.next().ok_or("no listener")?;
        threads.push(("ioat", spawn("ioat", Box::new(move || d.serve(l)))?));
    }
    let results: Vec<Result<(), String>> =
        threads.into_iter().map(|(name, t)| t.join().map_err(|_| format!("{name} server thread panicked")).and_then(|r| r)).collect();
    control.detach();
    // What the guest's IOMMU driver asked of the AMD-Vi (or VT-d) unit this session.
    let record = {
        let s = secure.lock().unwrap_or_else(|p| p.into_inner());
        match &s.vtd {
            Some(v) => {
                let counts: serde_json::Map<String, serde_json::Value> = iommu_model::vtd::unit::INVALIDATION_KINDS
                    .iter()
                    .zip(v.invalidations)
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| (k.to_string(), n.into()))
                    .collect();
                serde_json::json!({"type": "vtd_invalidations", "counts": counts})
            }
            None => {
                let counts: serde_json::Map<String, serde_json::Value> = (0u8..16)
                    .filter(|&op| s.amdvi.commands[usize::from(op)] > 0)
                    .map(|op| (iommu_model::amdvi::command::name(op).to_string(), s.amdvi.commands[usize::from(op)].into()))
                    .collect();
                serde_json::json!({"type": "amdvi_commands", "counts": counts})
            }
        }
    };
    crate::function::EventSink::emit(events.as_ref(), record);
    // The job channel closed with the backends (the IOAT's queued jobs find its channels
    // stopped): the worker drains and ends.
    let _ = worker.join();
    results.into_iter().collect()
}

/// The process's peak resident set (VmHWM), so runs can show the daemon's memory stays bounded.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()
}

/// SIGTERM or SIGINT: remove the sockets, let the event stream finish its last line, exit 0. The
/// server threads are blocked in the crate's accept/recv and end with the process.
fn stop_on_signal(socks: Vec<PathBuf>, events: Arc<JsonLines>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!("signal {sig}: stopping");
                socks.iter().for_each(|s| remove_socket(s));
                events.seal();
                std::process::exit(0);
            }
        })
        .map(drop)
        .map_err(|e| e.to_string())
}
