//! `tiommu daemon`: one vfio-user server per PCI function, a DMA worker fed through a channel,
//! and the JSON event stream. Runs until QEMU disconnects from every function (with --persist:
//! power-cycles and waits for the next QEMU), or until SIGTERM or SIGINT; either way it removes
//! its sockets and exits with status 0.

// Set-up and counters of the daemon's own, and the host's control socket: no guest-written value
// takes part.
#![allow(clippy::arithmetic_side_effects)]

pub mod control;
pub mod dump;
pub mod events;
pub mod log_limit;

use crate::daemon::control::{Control, Target};
use crate::daemon::events::JsonLines;
use crate::devices::endpoint::{Endpoint, Job};
use crate::devices::ioat::Ioat;
use crate::devices::iommu::IommuFunction;
use crate::devices::virtio_iommu::VirtioIommu;
use crate::secure::SecureIommu;
use crate::vfio::function::EventSink;
use crate::vfio::guest_mem::GuestRam;
use crate::vfio::server::{listen, remove_socket, FunctionBackend, MsixIrq, ServeError};
use abi::event::{DaemonExit, Event, PartialAttach, PowerCycle};
use abi::Bdf;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    #[arg(long, default_value = "00:04.0")]
    endpoint_bdf: Bdf,
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
    #[arg(long, default_value = "00:06.0")]
    ioat_bdf: Bdf,
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
    /// Replace the event stream if the --events file already holds one (without it, a non-empty
    /// file is refused: a second daemon started by mistake never erases the first one's records).
    #[arg(long)]
    overwrite_events: bool,
    /// Size limit of the event stream (bytes; K, M, G suffixes): past it records are counted in
    /// `events_dropped` records instead of written (a guest flooding refused DMA makes about
    /// 2.5 MB/s of them). 0 for no limit.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    events_limit: u64,
}

/// A byte count with an optional K, M or G (binary) suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.trim().to_ascii_uppercase().strip_suffix(['K', 'M', 'G']) {
        Some(d) => (
            d.to_string(),
            match s.trim().chars().last() {
                Some('k' | 'K') => 10,
                Some('m' | 'M') => 20,
                _ => 30,
            },
        ),
        None => (s.trim().to_string(), 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size (e.g. 1048576, 512K, 256M, 1G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{s}' is too large"))
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
    std::fs::create_dir_all(&args.socket_dir).map_err(|e| format!("cannot create {}: {e}", args.socket_dir.display()))?;
    // Held for the daemon's life: a second daemon on the same directory or event stream stops
    // here, before it touches any file (a connection to the first one's sockets to see whether
    // they are live would be taken as its QEMU attaching and leaving).
    let _dir_lock = lock_socket_dir(&args.socket_dir)?;
    let out: Box<dyn std::io::Write + Send> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(open_events(&args.events, args.overwrite_events)?)
    };
    let limit = if args.events_limit == 0 { u64::MAX } else { args.events_limit };
    let events = Arc::new(JsonLines::with_limit(out, limit));
    let control = Arc::new(
        match &args.inject_plan {
            Some(p) => Control::with_plan(p)?,
            None => Control::default(),
        }
        .with_dump_dir(args.socket_dir.join("dump")),
    );
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
                return Err(e.to_string());
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
        crate::vfio::function::EventSink::emit(
            events.as_ref(),
            Event::PowerCycle(PowerCycle {
                session: sessions,
                error: result.as_ref().err().map(ToString::to_string),
                peak_rss_kib: peak_rss_kib(),
            }),
        );
    }
    socks.iter().for_each(|s| remove_socket(s));
    crate::vfio::function::EventSink::emit(events.as_ref(), Event::DaemonExit(DaemonExit { peak_rss_kib: peak_rss_kib(), signal: None }));
    events.seal();
    result
}

/// An exclusive lock on the socket directory (flock on the directory itself: no file is added).
fn lock_socket_dir(dir: &Path) -> Result<std::fs::File, String> {
    let f = std::fs::File::open(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!("{} is in use by another tiommu daemon; nothing was changed", dir.display())),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", dir.display())),
    }
}

/// The event stream's file, locked for the daemon's life, emptied only with `overwrite`.
fn open_events(path: &Path, overwrite: bool) -> Result<std::fs::File, String> {
    let shown = path.display();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("cannot create {shown}: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        // A pipe or a terminal: nothing to keep or to lock.
        return Ok(f);
    }
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!("{shown} is being written by another tiommu daemon; nothing was changed"))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock {shown}: {e}")),
    }
    if meta.len() > 0 {
        if !overwrite {
            return Err(format!(
                "{shown} already holds an event stream ({} bytes); not overwriting it (--overwrite-events replaces it)",
                meta.len()
            ));
        }
        f.set_len(0).map_err(|e| format!("cannot empty {shown}: {e}"))?;
    }
    Ok(f)
}

/// One QEMU's lifetime: a freshly powered-on model, one client per function, until all are gone.
fn session(args: &Args, events: &Arc<JsonLines>, control: &Control, listeners: Vec<UnixListener>) -> Result<(), String> {
    // Each function gets the guest RAM QEMU sends it; the IOMMU's view is the one the models use.
    let ram = GuestRam::default();
    let iommu_irq = Arc::new(MsixIrq::default());
    let mut sec = SecureIommu::new(events.clone(), iommu_irq.clone());
    if args.iommu == Some(IommuKind::Vtd) || args.personality == Personality::TdxConnect {
        let mut unit = iommu_model::vtd::unit::VtdUnit::default();
        if args.personality == Personality::TdxConnect {
            // The unit says it takes part in TDX Connect (ECAP.TDXCS, Linux ecap_tdxc).
            unit.set_ecap_bits(iommu_model::vtd::regs::ecap::TDXCS);
        }
        sec.use_vtd(unit);
    }
    if args.personality == Personality::TdxConnect {
        sec.use_tdx_module(crate::secure::tdx_module::TdxModule::default());
    }
    if let Some(path) = &args.rmp_state {
        sec.publish_rmp(crate::secure::rmp_state::RmpPublisher::create(path).map_err(|e| e.to_string())?);
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
        FunctionBackend::new("ioat", Ioat::new(args.ioat_bdf.0, secure.clone(), ram.clone(), irq.clone(), tx.clone()), ram.clone(), irq)
    });
    let endpoint = Endpoint::new(args.endpoint_bdf.0, secure.clone(), ram.clone(), ep_irq.clone(), tx);
    let endpoint = FunctionBackend::new("endpoint", endpoint, ram.clone(), ep_irq);
    let viommu = args.virtio_iommu.then(|| {
        let irq = Arc::new(MsixIrq::default());
        let translated: Vec<u16> = std::iter::once(args.endpoint_bdf.0).chain(args.ioat.then_some(args.ioat_bdf.0)).collect();
        let dev = VirtioIommu::new(&translated, ram.clone(), irq.clone(), events.clone());
        // The endpoint's DMA takes the virtio-iommu's tables while it is attached to a domain.
        secure.lock().unwrap_or_else(|p| p.into_inner()).attach_virtio_iommu(dev.domains.clone(), Some(dev.event_queue()));
        FunctionBackend::new("virtio-iommu", dev, ram.clone(), irq)
    });
    let mut listeners = listeners.into_iter();
    let (iommu_listener, ep_listener) = (listeners.next().ok_or("no listener")?, listeners.next().ok_or("no listener")?);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
    let mut functions: Vec<Served> = Vec::new();
    let mut spawn =
        |name: &'static str, attached: Arc<AtomicBool>, f: Box<dyn FnOnce() -> Result<(), ServeError> + Send>| -> Result<(), String> {
            let (i, done) = (functions.len(), done_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vfu-{name}"))
                .spawn(move || {
                    let r = f().map_err(|e| e.to_string());
                    let _ = done.send(i);
                    r
                })
                .map_err(|e| e.to_string())?;
            functions.push(Served { name, sock: args.socket_dir.join(format!("{name}.sock")), attached, thread: Some(thread) });
            Ok(())
        };
    spawn("iommu", iommu.attached(), Box::new(move || iommu.serve(iommu_listener)))?;
    spawn("endpoint", endpoint.attached(), Box::new(move || endpoint.serve(ep_listener)))?;
    if let Some(v) = viommu {
        let l = listeners.next().ok_or("no listener")?;
        spawn("virtio-iommu", v.attached(), Box::new(move || v.serve(l)))?;
    }
    if let Some(d) = ioat {
        let l = listeners.next().ok_or("no listener")?;
        spawn("ioat", d.attached(), Box::new(move || d.serve(l)))?;
    }
    drop(done_tx);
    let (results, abandoned) = wait_for_functions(&mut functions, &done_rx, events.as_ref(), args.persist);
    control.detach();
    // What the guest's IOMMU driver asked of the AMD-Vi (or VT-d) unit this session.
    let record = secure.lock().unwrap_or_else(|p| p.into_inner()).usage_record();
    crate::vfio::function::EventSink::emit(events.as_ref(), record);
    if abandoned {
        // Functions still waiting for a client hold the job channel open: the daemon ends
        // without waiting for the worker.
        return results.into_iter().collect();
    }
    // The job channel closed with the backends (the IOAT's queued jobs find its channels
    // stopped): the worker drains and ends.
    let _ = worker.join();
    results.into_iter().collect()
}

/// One function's server thread in a session.
struct Served {
    name: &'static str,
    sock: PathBuf,
    attached: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

/// How long a QEMU may take to attach the rest of the functions after the first before the log
/// says so.
const ATTACH_WARNING: Duration = Duration::from_secs(10);

/// Wait until every function's client has gone. A QEMU that attaches only some of the functions
/// is named in the log (after ATTACH_WARNING) and, once its clients are gone, ends the session,
/// so the next QEMU is served or refused at once instead of timing out against a socket nobody
/// accepts on. Without `persist` the session is abandoned (true): the daemon exits, and a client
/// that connects meanwhile is disconnected. With `persist` the functions that never had a client
/// are woken from their accept by a connection of the daemon's own; should a new QEMU's
/// connection reach one of them first, that one is served in this session and the daemon's
/// connection waits in the queue for the next session, which takes it as a client that came and
/// went at once.
fn wait_for_functions(
    functions: &mut [Served],
    done: &crossbeam_channel::Receiver<usize>,
    events: &dyn EventSink,
    persist: bool,
) -> (Vec<Result<(), String>>, bool) {
    let mut results = Vec::new();
    let mut first_attach: Option<Instant> = None;
    let mut warned = false;
    let mut woken = Vec::new();
    while functions.iter().any(|f| f.thread.is_some()) {
        let attached = |f: &Served| f.attached.load(Ordering::Relaxed);
        if first_attach.is_none() && functions.iter().any(attached) {
            first_attach = Some(Instant::now());
        }
        let missing: Vec<&str> = functions.iter().filter(|f| !attached(f)).map(|f| f.name).collect();
        if !warned && !missing.is_empty() && first_attach.is_some_and(|t| t.elapsed() >= ATTACH_WARNING) {
            warned = true;
            let have: Vec<&str> = functions.iter().filter(|f| attached(f)).map(|f| f.name).collect();
            tracing::warn!(
                "QEMU attached {} but not {} after {} s: is a -device vfio-user-pci missing for {}?",
                have.join(", "),
                missing.join(", "),
                ATTACH_WARNING.as_secs(),
                missing.join(", ")
            );
        }
        let Ok(i) = done.recv_timeout(Duration::from_millis(500)) else { continue };
        let Some(thread) = functions[i].thread.take() else { continue };
        let name = functions[i].name;
        results.push(thread.join().map_err(|_| format!("{name} server thread panicked")).and_then(|r| r));
        if woken.contains(&i) {
            continue;
        }
        // Every attached client is gone and some function never had one: wake those.
        let live_clients = functions.iter().any(|f| f.thread.is_some() && attached(f));
        let never: Vec<usize> = (0..functions.len()).filter(|&j| functions[j].thread.is_some() && !attached(&functions[j])).collect();
        if !live_clients && !never.is_empty() {
            let names: Vec<&str> = never.iter().map(|&j| functions[j].name).collect();
            tracing::warn!("{name}: client gone, and QEMU never attached {}: ending the session", names.join(", "));
            let never_attached = names.iter().map(|n| n.to_string()).collect();
            events.emit(Event::PartialAttach(PartialAttach { gone: name.to_string(), never_attached }));
            if !persist {
                return (results, true);
            }
            for j in never {
                woken.push(j);
                let _ = std::os::unix::net::UnixStream::connect(&functions[j].sock);
            }
        } else if live_clients {
            let still: Vec<&str> = functions.iter().filter(|f| f.thread.is_some() && attached(f)).map(|f| f.name).collect();
            tracing::info!("{name}: client gone; the session goes on until {} disconnect(s) too", still.join(", "));
        }
    }
    (results, false)
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
                crate::vfio::function::EventSink::emit(
                    events.as_ref(),
                    Event::DaemonExit(DaemonExit { peak_rss_kib: peak_rss_kib(), signal: Some(sig) }),
                );
                events.seal();
                std::process::exit(0);
            }
        })
        .map(drop)
        .map_err(|e| e.to_string())
}
