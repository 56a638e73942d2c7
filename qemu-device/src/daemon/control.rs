//! The control channel of a running daemon: `control.sock` beside the vfio-user sockets (owner
//! only, as they are), one JSON command per line in, one JSON answer per line out, served by its
//! own thread. `tiommu inject` is its client; a guest whose serial port QEMU connects to the
//! socket (`scripts/run-vm --inject`) can use it too. Commands (docs/fault-injection.md):
//!
//! - `{"cmd":"inject","fault":NAME, ...parameters and trigger}`: arm a fault; the answer has its
//!   id and what it did if it fired at once;
//! - `{"cmd":"status"}`: armed faults, fired ones (newest 256; `"fired":false` leaves them
//!   out), the AMD-Vi registers (and the VT-d unit's, when it is the IOMMU);
//! - `{"cmd":"clear"}` or `{"cmd":"clear","id":N}`: disarm;
//! - `{"cmd":"dump"}`: write guest RAM, the IOMMU's registers and the RMP to the daemon's dump
//!   directory (daemon/dump.rs), for `tiommu walk`; the answer names the files.
//!
//! Answers are `{"ok":true,...}` or `{"ok":false,"error":REASON}`.

use crate::secure::inject::{self, when_record};
use crate::secure::SecureIommu;
use crate::vfio::guest_mem::GuestRam;
use abi::inject::FaultName;
use iommu_model::amdvi::mmio;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Longest command line taken.
const MAX_LINE: usize = 64 * 1024;
/// Connections served at once (the guest's serial port, a few tools).
const MAX_CLIENTS: usize = 16;

/// What the channel acts on: the running session's secure IOMMU and guest RAM.
pub struct Target {
    pub secure: Arc<Mutex<SecureIommu>>,
    pub ram: GuestRam,
}

#[derive(Default)]
pub struct Control {
    target: Mutex<Option<Target>>,
    next_id: AtomicU32,
    clients: AtomicUsize,
    /// Faults armed at the start of every session (`tiommu daemon --inject-plan`).
    plan: Vec<Value>,
    /// Where `dump` writes; none: dumps are refused.
    dump_dir: Option<PathBuf>,
    /// One dump at a time (they share the directory).
    dumping: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn refuse(e: impl std::fmt::Display) -> Value {
    answer(&Refused { ok: false, error: e.to_string() })
}

fn answer(a: &impl Serialize) -> Value {
    serde_json::to_value(a).unwrap_or_default()
}

/// `{"ok":false,"error":REASON}`.
#[derive(Serialize)]
struct Refused {
    ok: bool,
    error: String,
}

/// The answer to `status`.
#[derive(Serialize)]
struct Status<'a> {
    ok: bool,
    pending: Vec<inject::PendingFault>,
    /// Null when the command asked to leave the history out.
    fired: Option<&'a std::collections::VecDeque<abi::event::Injected>>,
    amdvi: AmdviRegs,
    /// With `--iommu vtd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    vtd: Option<VtdRegs>,
}

/// The VT-d unit's registers a fault changes (VT-d spec §11.4: GSTS, FSTS, FECTL, the queue's
/// head, tail and error record, ICS).
#[derive(Serialize)]
struct VtdRegs {
    #[serde(with = "abi::hex")]
    gsts: u64,
    #[serde(with = "abi::hex")]
    fsts: u64,
    #[serde(with = "abi::hex")]
    fectl: u64,
    #[serde(with = "abi::hex")]
    iqh: u64,
    #[serde(with = "abi::hex")]
    iqt: u64,
    #[serde(with = "abi::hex")]
    iqer: u64,
    #[serde(with = "abi::hex")]
    ics: u64,
}

/// The AMD-Vi unit's registers a fault changes.
#[derive(Serialize)]
struct AmdviRegs {
    #[serde(with = "abi::hex")]
    control: u64,
    #[serde(with = "abi::hex")]
    status: u64,
    #[serde(with = "abi::hex")]
    cmd_head: u64,
    #[serde(with = "abi::hex")]
    cmd_tail: u64,
    #[serde(with = "abi::hex")]
    evt_head: u64,
    #[serde(with = "abi::hex")]
    evt_tail: u64,
}

/// The answer to `inject`.
#[derive(Serialize)]
struct Armed {
    ok: bool,
    id: u32,
    fault: String,
    when: abi::event::InjectWhen,
    /// Still armed (false: it fired at once, as often as it may).
    pending: bool,
    fired: Vec<abi::event::Injected>,
}

/// The answer to `clear`.
#[derive(Serialize)]
struct Cleared {
    ok: bool,
    cleared: Vec<u32>,
}

impl Control {
    /// A channel with a plan: JSON lines of `inject` commands ("cmd" may be left out), blank
    /// lines and lines starting with '#' skipped. Each is checked now.
    pub fn with_plan(path: &Path) -> Result<Control, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut plan = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n.saturating_add(1)))?;
            if v.get("cmd").is_some_and(|c| c != "inject") {
                return Err(format!("{}:{}: a plan holds inject commands only", path.display(), n.saturating_add(1)));
            }
            inject::parse(&v).map_err(|e| format!("{}:{}: {e}", path.display(), n.saturating_add(1)))?;
            plan.push(v);
        }
        Ok(Control { plan, ..Control::default() })
    }

    /// Dumps go to `dir` (replaced by each).
    pub fn with_dump_dir(self, dir: PathBuf) -> Control {
        Control { dump_dir: Some(dir), ..self }
    }

    /// A session began: commands act on it from now on, and the plan is armed.
    pub fn attach(&self, target: Target) {
        *lock(&self.target) = Some(target);
        for v in &self.plan {
            let answer = self.inject(v);
            tracing::info!("inject plan: {answer}");
        }
    }

    /// The session ended: nothing to act on until the next.
    pub fn detach(&self) {
        lock(&self.target).take();
    }

    /// One command line to its answer.
    pub fn handle(&self, line: &str) -> Value {
        let v: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return refuse("a command is a JSON object"),
            Err(e) => return refuse(format!("not JSON: {e}")),
        };
        match v.get("cmd").and_then(Value::as_str) {
            Some("inject") => self.inject(&v),
            Some("status") => self.with_target(|s, _| {
                let r = |off| s.amdvi_register(off);
                let amdvi = AmdviRegs {
                    control: r(mmio::CONTROL),
                    status: r(mmio::STATUS),
                    cmd_head: r(mmio::CMD_BUF_HEAD),
                    cmd_tail: r(mmio::CMD_BUF_TAIL),
                    evt_head: r(mmio::EVENT_LOG_HEAD),
                    evt_tail: r(mmio::EVENT_LOG_TAIL),
                };
                // "fired": false leaves the history out (a guest polling over a serial port).
                let vtd = s.is_vtd().then(|| {
                    use iommu_model::vtd::regs;
                    let r = |off, size| s.bar0_read(off, size);
                    VtdRegs {
                        gsts: r(regs::GSTS, 4),
                        fsts: r(regs::FSTS, 4),
                        fectl: r(regs::FECTL, 4),
                        iqh: r(regs::IQH, 8),
                        iqt: r(regs::IQT, 8),
                        iqer: r(regs::IQER, 8),
                        ics: r(regs::ICS, 4),
                    }
                });
                let fired = (v.get("fired") != Some(&Value::Bool(false))).then_some(s.fired_faults());
                Ok(answer(&Status { ok: true, pending: s.pending_faults(), fired, amdvi, vtd }))
            }),
            Some("clear") => {
                let id = match v.get("id") {
                    None | Some(Value::Null) => None,
                    Some(i) => match i.as_u64().and_then(|i| u32::try_from(i).ok()) {
                        Some(i) => Some(i),
                        None => return refuse("id: a fault's number"),
                    },
                };
                self.with_target(|s, ram| {
                    let gone = s.clear_faults(&mut ram.snapshot(), id);
                    if let (Some(id), true) = (id, gone.is_empty()) {
                        return Err(format!("no fault {id} is armed"));
                    }
                    s.events().emit(abi::event::Event::InjectedCleared(abi::event::InjectedCleared { ids: gone.clone() }));
                    Ok(answer(&Cleared { ok: true, cleared: gone }))
                })
            }
            Some("dump") => self.dump(),
            Some(other) => refuse(format!("no command {other:?} (inject, status, clear, dump)")),
            None => refuse("no \"cmd\""),
        }
    }

    fn with_target(&self, f: impl FnOnce(&mut SecureIommu, &GuestRam) -> Result<Value, String>) -> Value {
        let target = lock(&self.target);
        let Some(t) = target.as_ref() else { return refuse("no session: the daemon is between QEMUs") };
        let mut s = lock(&t.secure);
        f(&mut s, &t.ram).unwrap_or_else(refuse)
    }

    /// The registers and the RMP under the secure IOMMU's lock, guest RAM after it is released
    /// (the guest keeps running: tables it changes meanwhile may be caught half-written).
    fn dump(&self) -> Value {
        let Some(dir) = &self.dump_dir else { return refuse("this daemon takes no dumps") };
        let _one = lock(&self.dumping);
        let (snap, mem, regions) = {
            let target = lock(&self.target);
            let Some(t) = target.as_ref() else { return refuse("no session: the daemon is between QEMUs") };
            let snap = crate::daemon::dump::snapshot(&lock(&t.secure));
            (snap, t.ram.snapshot(), t.ram.regions())
        };
        crate::daemon::dump::write(dir, snap, &mem, &regions).unwrap_or_else(refuse)
    }

    fn inject(&self, v: &Value) -> Value {
        let (fault, when) = match inject::parse(v) {
            Ok(x) => x,
            Err(e) => return refuse(e),
        };
        self.with_target(|s, ram| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let fired = s.arm(&mut ram.snapshot(), id, fault, when)?;
            let pending = s.pending_faults().iter().any(|p| p.id == id);
            let armed = abi::event::InjectedArmed { id, fault: fault.name().into(), when: when_record(&when) };
            s.events().emit(abi::event::Event::InjectedArmed(armed.clone()));
            Ok(answer(&Armed { ok: true, id, fault: armed.fault, when: armed.when, pending, fired }))
        })
    }

    /// Serve the socket on a thread of its own, each connection on another.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> Result<(), String> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    if me.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        me.clients.fetch_sub(1, Ordering::AcqRel);
                        let _ = writeln!(&conn, "{}", refuse("too many connections"));
                        continue;
                    }
                    let me2 = me.clone();
                    let spawned = std::thread::Builder::new().name("control-client".into()).spawn(move || {
                        me2.client(conn);
                        me2.clients.fetch_sub(1, Ordering::AcqRel);
                    });
                    if spawned.is_err() {
                        me.clients.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn client(&self, conn: UnixStream) {
        let Ok(mut out) = conn.try_clone() else { return };
        let mut input = BufReader::new(conn);
        loop {
            let mut line = Vec::new();
            match input.by_ref().take((MAX_LINE as u64).saturating_add(1)).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line.len() > MAX_LINE {
                let _ = writeln!(out, "{}", refuse(format!("line longer than {MAX_LINE} bytes")));
                return;
            }
            // A serial port may add carriage returns or send a stray byte before the first line.
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_matches(|c: char| c.is_whitespace() || c.is_control());
            if text.is_empty() {
                continue;
            }
            let answer = self.handle(text);
            tracing::debug!("control: {text} -> {answer}");
            if writeln!(out, "{answer}").and_then(|()| out.flush()).is_err() {
                return;
            }
        }
    }
}

/// The faults `tiommu inject` takes: abi::inject's names, each with its one-line help
/// (docs/fault-injection.md has each one's form).
#[derive(Clone, Copy, Debug)]
pub struct FaultArg(pub FaultName);

impl clap::ValueEnum for FaultArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [FaultArg; FaultName::ALL.len()] = {
            let mut all = [FaultArg(FaultName::ALL[0]); FaultName::ALL.len()];
            let mut i = 0;
            while i < all.len() {
                all[i] = FaultArg(FaultName::ALL[i]);
                i += 1;
            }
            all
        };
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name()).help(self.0.description()))
    }
}

#[derive(clap::Args)]
#[command(after_help = "Triggers (--when, repeatable): now (the default), after-commands=N, after-dma=N, probability=P (with --seed). \
--device and --iova are the fault's own parameters where it has them; otherwise they choose the DMA requests that count and where it fires.")]
pub struct Args {
    /// The daemon's --socket-dir (its control.sock).
    #[arg(long)]
    socket_dir: PathBuf,
    /// The fault to arm.
    #[arg(value_enum, required_unless_present_any = ["list", "clear"])]
    fault: Option<FaultArg>,
    /// When it fires: now, after-commands=N, after-dma=N, probability=P.
    #[arg(long)]
    when: Vec<String>,
    /// The fault's device (bus:dev.fn), or the requester whose DMA counts and fails.
    #[arg(long)]
    device: Option<String>,
    /// The fault's IOVA, or the 4 KiB IOVA page whose DMA counts and fails.
    #[arg(long)]
    iova: Option<String>,
    /// rmp-entry-changed: the page.
    #[arg(long)]
    spa: Option<String>,
    /// io-page-fault: records to log.
    #[arg(long)]
    count: Option<u64>,
    /// doe-busy: Status reads that show Busy.
    #[arg(long)]
    reads: Option<u64>,
    /// endpoint-dma: bytes.
    #[arg(long)]
    len: Option<u64>,
    /// endpoint-dma: read instead of write.
    #[arg(long)]
    read: bool,
    /// endpoint-dma: with the TDISP T bit.
    #[arg(long)]
    t: bool,
    /// Times it fires before it is retired (0: until cleared).
    #[arg(long)]
    times: Option<u64>,
    /// Seed of the probability's PRNG (reproducible runs).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the armed and fired faults (the status command) instead.
    #[arg(long, conflicts_with_all = ["fault", "clear"])]
    list: bool,
    /// Disarm fault ID, or every fault and the lasting injected conditions.
    #[arg(long, num_args = 0..=1, default_missing_value = "all", conflicts_with = "fault")]
    clear: Option<String>,
}

/// The JSON command the arguments ask for.
pub fn request(a: &Args) -> Result<Value, String> {
    if a.list {
        return Ok(json!({"cmd": "status"}));
    }
    if let Some(c) = &a.clear {
        return Ok(match c.as_str() {
            "all" => json!({"cmd": "clear"}),
            id => json!({"cmd": "clear", "id": id.parse::<u32>().map_err(|_| format!("--clear {id}: a fault's number"))?}),
        });
    }
    let fault = a.fault.ok_or("no fault given")?;
    let mut v = json!({"cmd": "inject", "fault": fault.0.name()});
    let mut set = |k: &str, x: Value| v[k] = x;
    for (k, x) in [("device", &a.device), ("iova", &a.iova), ("spa", &a.spa)] {
        if let Some(x) = x {
            set(k, x.clone().into());
        }
    }
    for (k, x) in [("count", a.count), ("reads", a.reads), ("len", a.len), ("times", a.times), ("seed", a.seed)] {
        if let Some(x) = x {
            set(k, x.into());
        }
    }
    if a.read {
        set("read", true.into());
    }
    if a.t {
        set("t", true.into());
    }
    for w in &a.when {
        match w.split_once('=') {
            None if w == "now" => {}
            Some(("after-commands", n)) => set("after_commands", n.parse::<u64>().map_err(|_| format!("--when {w}: N is a count"))?.into()),
            Some(("after-dma", n)) => set("after_dma", n.parse::<u64>().map_err(|_| format!("--when {w}: N is a count"))?.into()),
            Some(("probability", p)) => set("probability", p.parse::<f64>().map_err(|_| format!("--when {w}: P is a number"))?.into()),
            _ => return Err(format!("--when {w}: now, after-commands=N, after-dma=N or probability=P")),
        }
    }
    Ok(v)
}

/// `tiommu inject`: one command to the daemon, its answer on stdout; a refusal is an error.
pub fn run(a: Args) -> Result<(), String> {
    let cmd = request(&a)?;
    let path = a.socket_dir.join("control.sock");
    let answer = exchange(&path, &cmd)?;
    println!("{answer}");
    if answer["ok"] == true {
        Ok(())
    } else {
        Err(format!("refused: {}", answer["error"].as_str().unwrap_or("no reason given")))
    }
}

/// Send one command to a daemon's control socket and read its answer.
pub fn exchange(path: &Path, cmd: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("cannot reach the daemon at {}: {e}", path.display()))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).map_err(|e| e.to_string())?;
    writeln!(s, "{cmd}").map_err(|e| format!("{}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| format!("{}: no answer: {e}", path.display()))?;
    serde_json::from_str(&line).map_err(|e| format!("{}: bad answer {line:?}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Collect, Irqs};
    use iommu_model::vtd::unit::VtdUnit;

    /// A daemon whose IOMMU is the VT-d unit: VT-d faults arm and fire, `status` shows its
    /// registers, an AMD-Vi fault is refused with the reason, and `tiommu inject`'s argument
    /// names each fault as abi::inject does.
    #[test]
    fn a_vtd_daemon_takes_vtd_faults_and_shows_its_registers() {
        let mut s = SecureIommu::new(Arc::new(Collect::default()), Arc::new(Irqs::default()));
        s.use_vtd(VtdUnit::default());
        let c = Control::default();
        c.attach(Target { secure: Arc::new(Mutex::new(s)), ram: GuestRam::default() });
        let a = c.handle(r#"{"cmd":"inject","fault":"primary-fault","device":"00:04.0","iova":"0x5000","count":3}"#);
        // TE is off and nothing is mapped: the records are written all the same.
        assert_eq!(
            (a["ok"].as_bool(), a["pending"].as_bool(), a["fired"][0]["logged"].as_u64()),
            (Some(true), Some(false), Some(3)),
            "{a}"
        );
        let st = c.handle(r#"{"cmd":"status","fired":false}"#);
        assert_eq!(st["vtd"]["fsts"], "0x2", "PPF: {st}");
        let a = c.handle(r#"{"cmd":"inject","fault":"completion-wait-lost"}"#);
        assert_eq!(a["ok"], false);
        assert!(a["error"].as_str().unwrap().contains("AMD-Vi unit"), "{a}");
        for f in FaultName::ALL {
            let p = clap::ValueEnum::to_possible_value(&FaultArg(*f)).unwrap();
            assert_eq!((p.get_name(), p.get_help().map(|h| h.to_string())), (f.name(), Some(f.description().to_string())));
        }
    }
}
