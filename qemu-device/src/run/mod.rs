//! `tiommu run`: boots a kernel under QEMU with the daemon's functions attached, runs the guest
//! scenarios, checks the daemon's event stream against what the guest saw, and says in one line
//! per phase what happened and at the end what passed.
//!
//! The pieces: [`machine`] (the functions, QEMU arguments, ACPI tables and kernel command line
//! of a mode, shared with `tiommu qemu-args`), [`qemu`] (the system's QEMU or the set-up's
//! Debian 13 root), [`probe`] (where the firmware puts BAR0), [`initramfs`] and [`cpio`] (the
//! guest's archive), [`console`] (the serial console) and [`report`]; the run is checked by
//! `tiommu check`'s checker (crate::tools::check), called in process.

// Host-side set-up, timing and counting, like the offline tools: nothing here runs in the daemon
// or takes part in what the guest can make it do.
#![allow(clippy::arithmetic_side_effects)]

pub mod console;
pub mod cpio;
pub mod initramfs;
pub mod machine;
pub mod probe;
pub mod pvh;
pub mod qemu;
pub mod qemu_args;
pub mod report;

use machine::{Machine, Mode, Personality};
use qemu::QemuCmd;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PluginMode {
    /// Report each CPU write to an assigned page.
    Report,
    /// End QEMU at the first one, as the RMP #PF would.
    Stop,
}

/// Boot a kernel with the tiommu functions, run the guest scenarios and check the daemon's
/// event stream against them. Needs `scripts/setup` (QEMU 11.1 and a kernel) unless --qemu and
/// --kernel say otherwise.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Your own kernel (a bzImage). Modules it needs come from --modules.
    #[arg(long, value_name = "PATH", conflicts_with = "test_kernel")]
    pub kernel: Option<PathBuf>,
    /// The lib/modules/VERSION tree of your kernel's modules (`make modules_install
    /// INSTALL_MOD_PATH=...`), or `none` when what the mode needs is built in.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<String>,
    /// The kernel scripts/build-kernel built (iommufd, VFIO cdev, KVM with software-protected
    /// VMs; everything built in).
    #[arg(long)]
    pub test_kernel: bool,
    /// More kernel command-line words (repeatable).
    #[arg(long, value_name = "ARGS")]
    pub append: Vec<String>,
    /// Boot a kernel built with CONFIG_PVH through its bzImage all the same (by default its
    /// vmlinux boots through the PVH entry, skipping the decompression in the guest).
    #[arg(long)]
    pub bzimage: bool,
    /// A QEMU 11.1 or later on this system instead of the set-up's.
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// Use KVM instead of TCG.
    #[arg(long)]
    pub kvm: bool,
    /// Stop QEMU after this many seconds (0: never). Default 180; none with --gdb or --shell.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Keep the run's files (console, results, event stream, daemon log, initramfs) in DIR: a
    /// new or empty directory, or one an earlier --keep filled (emptied first).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Load the RMP TCG plugin (CPU stores checked against the RMP; TCG only).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "report", value_name = "MODE")]
    pub plugin: Option<PluginMode>,
    /// After the scenarios, a hostile driver on every function for this long; then the daemon
    /// must still work.
    #[arg(long, value_name = "SECONDS")]
    pub hostile: Option<u64>,
    /// Replay the hostile driver's sequence of an earlier run (its seed is printed).
    #[arg(long, value_name = "N", value_parser = crate::tools::walk::parse_u64, requires = "hostile")]
    pub hostile_seed: Option<u64>,
    /// Attach the daemon's virtio-iommu at 00:05.0 (ACPI VIOT) for Linux's virtio_iommu.
    #[arg(long, group = "kernel_iommu")]
    pub virtio_iommu: bool,
    /// Hand the secure IOMMU function to Linux's amd_iommu (ACPI IVRS).
    #[arg(long, group = "kernel_iommu")]
    pub amd_iommu: bool,
    /// Serve a VT-d unit and hand it to Linux's intel_iommu (ACPI DMAR).
    #[arg(long, group = "kernel_iommu")]
    pub intel_iommu: bool,
    /// The daemon's personality.
    #[arg(long, value_enum, default_value = "sev-tio")]
    pub personality: Personality,
    /// Also attach the IOAT DMA engine at 00:06.0 (Linux's ioatdma and dmatest on it).
    #[arg(long)]
    pub ioat: bool,
    /// Boot N times against one daemon started with --persist.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99), value_name = "N")]
    pub boots: u32,
    /// Connect the guest's ttyS2 to the daemon's control socket (fault injection scenarios).
    #[arg(long)]
    pub inject: bool,
    /// Arm the faults in FILE (JSON lines) when the daemon starts.
    #[arg(long, value_name = "FILE")]
    pub inject_plan: Option<PathBuf>,
    /// vCPUs (1 to 8; MTTCG under TCG).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub smp: u32,
    /// Guest RAM, as QEMU's -m takes it.
    #[arg(long, default_value = "512M", value_name = "SIZE")]
    pub memory: String,
    /// QEMU waits for gdb on localhost:1234 before the first instruction (-s -S).
    #[arg(long)]
    pub gdb: bool,
    /// A shell on the console instead of the scenarios (the guest program is
    /// /bin/tiommu-guest-tests; exit powers off).
    #[arg(long)]
    pub shell: bool,
    /// Your own initramfs instead of the scenarios' (nothing is checked but the daemon).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Your own root file system image, as a virtio disk (root=/dev/vda; virtio_blk and the
    /// file system built in); without --initrd no initramfs is given.
    #[arg(long, value_name = "FILE")]
    pub rootfs: Option<PathBuf>,
    /// After the scenarios, while the guest still runs, /init asks the daemon (over the control
    /// channel on ttyS2) for a dump of guest RAM, the IOMMU's registers and the RMP, which ends up
    /// in DIR (new or empty) for `tiommu walk --dump DIR`.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Write the end-of-run summary as one JSON document.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Show the guest's serial console as it comes (escape sequences removed).
    #[arg(long, short = 'v')]
    pub console: bool,
    /// The guest program (static, musl); default: beside this binary's target directory.
    #[arg(long, value_name = "PATH")]
    pub guest: Option<PathBuf>,
    /// The busybox copied into the initramfs (static).
    #[arg(long, value_name = "PATH", default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// More QEMU arguments, after `--` (e.g. `-- -d guest_errors`).
    #[arg(last = true, value_name = "QEMU ARGS")]
    pub qemu_extra: Vec<String>,
}

const AFTER_HELP: &str = "\
Modes: the default drives the secure IOMMU from the guest program; --virtio-iommu,
--amd-iommu and --intel-iommu hand the endpoint to the kernel's own IOMMU driver;
--personality tdx-connect runs the TDX Connect scenarios. `tiommu qemu-args` prints the same
machine for a QEMU command line of your own. Files: --keep DIR. Exit status: 0 when every
scenario and check passed, 1 when not, 2 for bad options or a missing set-up.";

/// Cuts in boot time that change nothing the scenarios look at (docs/performance.md, "Boot
/// time"): no read-only remapping of the kernel with its W+X page-table check, no zeroing of
/// every page allocated (the distribution kernel's init_on_alloc: 64 MB of huge pages for the
/// scenarios), the TSC trusted (no clocksource watchdog, which under a loaded TCG host can fall
/// back to the HPET, an MMIO exit per clock read), no timer IRQ check, no crypto self-tests.
/// `--append` comes after, so it can undo any.
pub const BOOT_FAST: [&str; 5] = ["rodata=off", "init_on_alloc=0", "tsc=reliable", "no_timer_check", "cryptomgr.notests"];

/// The set-up scripts/setup wrote (`$TIOMMU_CACHE/env`, shell assignments).
#[derive(Debug, Default, Clone)]
pub struct Setup {
    pub cache: PathBuf,
    pub qemu_system: Option<PathBuf>,
    pub qemu_root: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
}

impl Setup {
    pub fn cache_dir() -> PathBuf {
        std::env::var_os("TIOMMU_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/cache/tiommu".into())
    }

    pub fn read(cache: &Path) -> Result<Setup, String> {
        let env = cache.join("env");
        let text = std::fs::read_to_string(&env).map_err(|_| format!("run 'sudo scripts/setup' first ({} missing)", env.display()))?;
        Ok(Self::parse(cache, &text))
    }

    pub fn parse(cache: &Path, text: &str) -> Setup {
        let mut s = Setup { cache: cache.to_path_buf(), ..Setup::default() };
        for l in text.lines() {
            let Some((k, v)) = l.split_once('=') else { continue };
            let v = v.trim().trim_matches('\'').trim_matches('"');
            let p = (!v.is_empty()).then(|| PathBuf::from(v));
            match k.trim() {
                "TIOMMU_QEMU_SYSTEM" => s.qemu_system = p,
                "TIOMMU_QEMU_ROOT" => s.qemu_root = p,
                "TIOMMU_KERNEL" => s.kernel = p,
                "TIOMMU_MODULES" => s.modules = p,
                _ => {}
            }
        }
        s
    }

    /// The QEMU to run: `--qemu`, the system's the set-up found, or the Debian 13 root's
    /// (checked: a root whose QEMU is gone is said here, not as a mount failure later).
    pub fn qemu(&self, explicit: Option<&Path>, work: &Path) -> Result<QemuCmd, String> {
        if let Some(b) = explicit.map(Path::to_path_buf).or_else(|| self.qemu_system.clone()) {
            if !b.is_file() {
                return Err(format!("no QEMU at {}", b.display()));
            }
            return Ok(QemuCmd::System { binary: b, work: work.to_path_buf() });
        }
        let root = self.qemu_root.clone().ok_or("the set-up names no QEMU (TIOMMU_QEMU_ROOT); run 'sudo scripts/setup' again")?;
        if !root.join("usr/bin/qemu-system-x86_64").is_file() {
            return Err(format!(
                "the Debian 13 root {} has no usr/bin/qemu-system-x86_64 (removed?); run 'sudo scripts/setup' again, or give --qemu PATH",
                root.display()
            ));
        }
        if !rustix::process::geteuid().is_root() {
            return Err(format!(
                "the set-up's QEMU runs in its Debian 13 root ({}) through unshare and chroot, which need root: run as root (sudo), or give --qemu PATH",
                root.display()
            ));
        }
        Ok(QemuCmd::Root { root, work: work.to_path_buf() })
    }
}

/// What a run failed on before anything started: bad options, a missing set-up (exit 2).
struct Usage(String);

pub fn main(args: Args) -> ExitCode {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let mut r = Runner::new(args, interrupted);
    let code = match r.run() {
        Ok(summary) => {
            let _ = write!(std::io::stdout(), "{}", summary.table());
            if let Some(j) = &r.args.json {
                if let Err(e) = std::fs::write(j, format!("{:#}\n", summary.json())) {
                    eprintln!("tiommu run: cannot write {}: {e}", j.display());
                }
            }
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(Usage(e)) => {
            eprintln!("tiommu run: {e}");
            ExitCode::from(2)
        }
    };
    r.finish();
    code
}

struct Runner {
    args: std::rc::Rc<Args>,
    interrupted: Arc<AtomicBool>,
    work: Option<PathBuf>,
    daemon: Option<Child>,
    /// The daemon was sent SIGTERM by the runner (so its `signal` record is expected).
    stopped_daemon: bool,
}

/// A progress line on stderr; a closed stderr (`| head`) does not stop the run half-way.
fn say(msg: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr(), "tiommu run: {}", msg.as_ref());
}

/// Seconds, for the progress lines.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Runner {
    fn new(args: Args, interrupted: Arc<AtomicBool>) -> Runner {
        Runner { args: std::rc::Rc::new(args), interrupted, work: None, daemon: None, stopped_daemon: false }
    }

    fn machine(&self) -> Machine {
        let a = self.args.clone();
        let mode = match Mode::of_flags(a.virtio_iommu, a.amd_iommu, a.intel_iommu) {
            // A hostile run attaches the virtio-iommu with no driver and no VIOT, for the hostile
            // driver alone.
            Mode::VirtioIommu if a.hostile.is_some() => Mode::VirtioIommuRaw,
            mode => mode,
        };
        Machine {
            mode,
            ioat: a.ioat,
            personality: a.personality,
            kvm: a.kvm,
            smp: a.smp,
            memory: a.memory.clone(),
            bar0: None,
            inject: a.inject,
            dump: a.dump.is_some(),
            nodefaults: true,
            // The runner's machine has no devices of its own in the way (-nodefaults).
            slots: Default::default(),
        }
    }

    fn validate(&self) -> Result<(), Usage> {
        let a = self.args.clone();
        self.machine().validate().map_err(Usage)?;
        if a.plugin.is_some() && a.boots != 1 {
            return Err(Usage("--plugin with --boots is not supported (one plugin report per run)".into()));
        }
        if a.plugin.is_some() && a.kvm {
            return Err(Usage("the RMP plugin instruments TCG-generated code; it cannot run with --kvm".into()));
        }
        if a.shell && a.boots != 1 {
            return Err(Usage("--shell boots once".into()));
        }
        if let Some(t) = a.timeout {
            if !(t >= 0.0 && t.is_finite()) {
                return Err(Usage(format!("--timeout takes seconds (0: none), not {t}")));
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<report::Summary, Usage> {
        self.validate()?;
        let launch = Instant::now();
        let setup = Setup::read(&Setup::cache_dir()).map_err(Usage)?;
        let mut machine = self.machine();
        let a = self.args.clone();

        // The kernel and where its modules come from.
        let (kernel, moddir) = if a.test_kernel {
            let k = setup.cache.join("test-kernel/bzImage");
            if !k.is_file() {
                return Err(Usage("no test kernel: run 'sudo scripts/build-kernel' first".into()));
            }
            let rel = std::fs::read_to_string(setup.cache.join("test-kernel/release")).unwrap_or_default();
            say(format!("test kernel {}", rel.trim()));
            (k, None)
        } else if let Some(k) = &a.kernel {
            let moddir = match a.modules.as_deref() {
                Some("none") => None,
                Some(d) => Some(PathBuf::from(d)),
                None if !machine.modules().is_empty() && a.initrd.is_none() && a.rootfs.is_none() => {
                    return Err(Usage(format!(
                        "--kernel {} with this mode: /init loads {} from --modules DIR (the lib/modules/VERSION tree of \
                         `make modules_install INSTALL_MOD_PATH=...`); give --modules DIR, or --modules none when your kernel \
                         has them built in",
                        k.display(),
                        machine.modules().join(", ")
                    )))
                }
                None => None,
            };
            (k.clone(), moddir)
        } else {
            let k = setup
                .kernel
                .clone()
                .ok_or_else(|| Usage("the set-up names no kernel (TIOMMU_KERNEL); run 'sudo scripts/setup' again".into()))?;
            let m = match a.modules.as_deref() {
                Some("none") => None,
                Some(d) => Some(PathBuf::from(d)),
                None => setup.modules.clone(),
            };
            (k, m)
        };
        check_kernel(&kernel).map_err(Usage)?;
        if let Some(d) = &moddir {
            if !d.join("kernel").is_dir() {
                return Err(Usage(format!("{} is not a modules tree (no kernel/ in it)", d.display())));
            }
        }
        for (what, p) in [("--initrd", &a.initrd), ("--rootfs", &a.rootfs), ("--inject-plan", &a.inject_plan)] {
            if let Some(p) = p {
                if !p.is_file() {
                    return Err(Usage(format!("{what} {}: no such file", p.display())));
                }
            }
        }
        let own_guest = a.initrd.is_some() || a.rootfs.is_some();
        let exe = std::env::current_exe().map_err(|e| Usage(format!("cannot find this program: {e}")))?;
        let target_dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let guest = a.guest.clone().unwrap_or_else(|| target_dir.join("x86_64-unknown-linux-musl/release/guest-tests"));
        if !own_guest && !guest.is_file() {
            return Err(Usage(format!(
                "no guest program at {}: build it with `cargo build --release -p guest-tests --target x86_64-unknown-linux-musl` \
                 (scripts/run-vm does), or give --guest PATH",
                guest.display()
            )));
        }
        let plugin_so = exe.parent().unwrap_or(Path::new(".")).join("libtiommu_rmp_plugin.so");
        if a.plugin.is_some() && !plugin_so.is_file() {
            return Err(Usage(format!(
                "no RMP plugin at {}: `cargo build --release -p tiommu-rmp-plugin` (scripts/run-vm does)",
                plugin_so.display()
            )));
        }
        if let Some(k) = &a.keep {
            prepare_keep(k).map_err(Usage)?;
        }
        if let Some(d) = &a.dump {
            if std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()) || d.exists() && !d.is_dir() {
                return Err(Usage(format!("--dump {}: not an empty directory (a dump goes into a new or empty one)", d.display())));
            }
        }

        let work = make_work_dir().map_err(Usage)?;
        self.work = Some(work.clone());
        let a = self.args.clone();
        let qemu = setup.qemu(a.qemu.as_deref(), &work).map_err(Usage)?;
        let inq = qemu.dir_in_qemu();
        let mut timings: Vec<(&'static str, f64)> = Vec::new();
        let mut failures: Vec<String> = Vec::new();

        // The kernel command line: the mode's words, then the user's.
        let mut cmdline: Vec<String> = ["console=ttyS0", "panic=-1", "loglevel=4"].map(String::from).to_vec();
        cmdline.extend(BOOT_FAST.map(String::from));
        if let Some(secs) = a.hostile {
            let seed = a.hostile_seed.unwrap_or_else(random_seed);
            say(format!("hostile driver seed {seed:#x} (replay with --hostile-seed {seed:#x})"));
            cmdline.push(format!("tiommu.hostile={secs}"));
            cmdline.push(format!("tiommu.hostile_seed={seed:#x}"));
        }
        if a.plugin.is_some() {
            cmdline.push("tiommu.plugin=1".into());
        }
        if a.shell {
            cmdline.push("tiommu.shell=1".into());
        }
        if a.rootfs.is_some() {
            cmdline.extend(["root=/dev/vda".into(), "rw".into()]);
        }

        // The initramfs.
        let mut binds: Vec<(PathBuf, String)> = Vec::new();
        let mut bind = |host: &Path, name: &str| -> Result<String, Usage> {
            if qemu.needs_binds() {
                std::fs::write(work.join(name), b"").map_err(|e| Usage(format!("cannot write in {}: {e}", work.display())))?;
                binds.push((std::fs::canonicalize(host).unwrap_or_else(|_| host.to_path_buf()), name.to_string()));
            }
            Ok(qemu.path_of(host, name))
        };
        let initrd = if let Some(i) = &a.initrd {
            Some(bind(i, "own-initrd")?)
        } else if a.rootfs.is_some() {
            None
        } else {
            let t = Instant::now();
            let busybox = &a.busybox;
            let mods = machine.modules();
            let built = initramfs::build(&initramfs::Contents { busybox, guest: &guest, modules_dir: moddir.as_deref(), modules: &mods })
                .map_err(Usage)?;
            std::fs::write(work.join("initramfs.cpio"), &built.archive).map_err(|e| Usage(format!("cannot write the initramfs: {e}")))?;
            let mut line = format!("initramfs built: {} KiB", built.archive.len() / 1024);
            if !built.loaded.is_empty() {
                line.push_str(&format!(", modules {}", built.loaded.join(" ")));
            }
            if !built.not_found.is_empty() {
                line.push_str(&format!(
                    " ({} not in {}: built in?)",
                    built.not_found.join(", "),
                    moddir.as_deref().unwrap_or(Path::new("-")).display()
                ));
            }
            say(line);
            timings.push(("initramfs", t.elapsed().as_secs_f64()));
            Some(format!("{inq}/initramfs.cpio"))
        };
        let boot_image = if a.bzimage {
            kernel.clone()
        } else {
            match pvh::vmlinux(&kernel, &setup.cache) {
                Ok(v) => {
                    say("booting the kernel's vmlinux through its PVH entry (--bzimage for the bzImage)");
                    v
                }
                Err(why) => {
                    say(format!("booting the bzImage: {why}"));
                    kernel.clone()
                }
            }
        };
        let kernel_in_qemu = bind(&boot_image, "vmlinuz")?;
        let rootfs_in_qemu = match &a.rootfs {
            Some(r) => Some(bind(r, "rootfs.img")?),
            None => None,
        };
        let plugin_arg = match a.plugin {
            None => None,
            Some(mode) => {
                std::fs::copy(&plugin_so, work.join("libtiommu_rmp_plugin.so"))
                    .map_err(|e| Usage(format!("cannot copy the plugin: {e}")))?;
                let m = if mode == PluginMode::Stop { "stop" } else { "report" };
                Some(format!("{inq}/libtiommu_rmp_plugin.so,rmp={inq}/rmp-state,events={inq}/cpu-events.jsonl,mode={m}"))
            }
        };
        let _ = std::fs::write(work.join("cpu-events.jsonl"), b"");

        // The daemon.
        let t = Instant::now();
        let events_path = work.join("events.jsonl");
        let mut dargs: Vec<String> =
            vec!["daemon".into(), "--socket-dir".into(), work.display().to_string(), "--events".into(), events_path.display().to_string()];
        dargs.extend(machine.daemon_functions());
        if a.boots > 1 {
            dargs.push("--persist".into());
        }
        if let Some(p) = &a.inject_plan {
            dargs.extend(["--inject-plan".into(), std::fs::canonicalize(p).unwrap_or(p.clone()).display().to_string()]);
        }
        if a.plugin.is_some() {
            dargs.extend(["--rmp-state".into(), work.join("rmp-state").display().to_string()]);
        }
        let log = std::fs::File::create(work.join("daemon.log")).map_err(|e| Usage(e.to_string()))?;
        let mut daemon = std::process::Command::new(&exe)
            .args(&dargs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| Usage(format!("cannot start the daemon: {e}")))?;
        let mut socks = machine.sockets();
        socks.push("control.sock");
        let up = wait_for_sockets(&work, &socks, &mut daemon, Duration::from_secs(5));
        let pid = daemon.id();
        self.daemon = Some(daemon);
        if let Err(e) = up {
            return Ok(self.early_failure(format!("{e}; its log:\n{}", tail(&self.work_file("daemon.log"), 20)), timings));
        }
        timings.push(("daemon up", t.elapsed().as_secs_f64()));
        say(format!("daemon up (pid {pid}, {} functions: {})", machine.sockets().len(), machine.sockets().join(" ")));

        // Where the firmware puts BAR0, for the IVRS or DMAR.
        if machine.needs_bar0() {
            let t = Instant::now();
            say(format!("finding where the firmware puts {}'s BAR0 (cached after the first run)", machine.slots.iommu));
            match probe::bar0(&machine, &qemu, &exe, &work, &setup.cache) {
                Ok(b) => machine.bar0 = Some(b),
                Err(e) => return Ok(self.early_failure(e, timings)),
            }
            timings.push(("BAR0 probe", t.elapsed().as_secs_f64()));
            say(format!(
                "the {} names the {} registers at {:#x} ({}'s BAR0)",
                if machine.mode == Mode::AmdIommu { "IVRS" } else { "DMAR" },
                if machine.mode == Mode::AmdIommu { "AMD-Vi" } else { "VT-d" },
                machine.bar0.unwrap_or(0),
                machine.slots.iommu
            ));
        }
        machine::write_acpi_table(&machine, &work).map_err(Usage)?;
        cmdline.extend(machine.kernel_cmdline());
        cmdline.extend(a.append.iter().flat_map(|s| s.split_whitespace().map(String::from)));

        let interactive = a.shell || a.gdb;
        let timeout = match a.timeout {
            Some(t) if t > 0.0 => Some(Duration::from_secs_f64(t)),
            Some(_) => None,
            None if interactive => None,
            None => Some(Duration::from_secs(180)),
        };
        let qargs = qemu_args(&QemuBoot {
            machine: &machine,
            dir: &inq,
            kernel: &kernel_in_qemu,
            initrd: initrd.as_deref(),
            rootfs: rootfs_in_qemu.as_deref(),
            cmdline: &cmdline.join(" "),
            plugin: plugin_arg.as_deref(),
            gdb: a.gdb,
            extra: &a.qemu_extra,
        });
        let _ = std::fs::write(work.join("qemu-command"), machine::shell_line(&qemu.argv(&qargs, &binds)) + "\n");
        if a.gdb {
            say("QEMU waits for gdb: gdb vmlinux -ex 'target remote :1234' (the kernel's vmlinux, with its symbols)");
        }

        // The boots.
        let start = Instant::now();
        let mut stamped: Vec<(f64, String)> = Vec::new();
        let mut outcomes = Vec::new();
        let kname = kernel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for boot in 1..=a.boots {
            if boot > 1 {
                // The daemon power-cycles once the last QEMU has gone from every function.
                wait_power_cycles(&events_path, boot - 1, Duration::from_secs(5));
                if self.daemon_exited() {
                    failures.push(format!("the --persist daemon is gone before boot {boot}"));
                    break;
                }
            }
            let mark = format!("{}{boot}", report::BOOT_MARK);
            append_line(&work.join("results.log"), &mark);
            stamped.push((start.elapsed().as_secs_f64(), mark));
            say(format!(
                "booting {kname} under QEMU ({}){}",
                if a.kvm { "kvm" } else { "tcg" },
                if a.boots > 1 { format!(", boot {boot} of {}", a.boots) } else { String::new() }
            ));
            let o = self.boot(&qemu, &qargs, &binds, timeout, start, &mut stamped);
            let stop = o.failure.is_some();
            outcomes.push(o);
            if stop || self.interrupted.load(Ordering::Relaxed) {
                break;
            }
        }
        let end = start.elapsed();

        // The daemon ends when QEMU disconnects; a --persist daemon must still be up, and is
        // stopped with SIGTERM.
        let qemu_failed = outcomes.iter().any(|o| o.failure.is_some()) || self.interrupted.load(Ordering::Relaxed);
        let daemon_status = if a.boots == 1 {
            // After a QEMU that failed the daemon may never have had a client: stopped, not waited for.
            let d = if qemu_failed { self.wait_daemon(Duration::ZERO) } else { self.wait_daemon(Duration::from_secs(5)) };
            if d.is_none() && !qemu_failed {
                failures.push("the daemon was still running 5 s after QEMU exited (it ends when QEMU disconnects); stopped it".into());
            }
            d.or_else(|| self.stop_daemon())
        } else {
            wait_power_cycles(&events_path, a.boots, Duration::from_secs(5));
            if self.daemon_exited() {
                if !qemu_failed {
                    failures.push("the --persist daemon was gone after the last boot".into());
                }
                self.wait_daemon(Duration::ZERO)
            } else {
                self.stop_daemon()
            }
        };
        for o in &outcomes {
            if let Some(f) = &o.failure {
                failures.push(f.clone());
            }
        }
        if let (Some(d), false) = (&a.dump, qemu_failed) {
            match take_dump(&work.join("dump"), d) {
                Ok(rmp) => say(format!(
                    "guest RAM after the scenarios, the IOMMU's registers{} in {}: tiommu walk --dump {} --devid 00:04.0 --iova IOVA --trace",
                    if rmp { " and the RMP" } else { "" },
                    d.display(),
                    d.display()
                )),
                Err(e) => {
                    let said = std::fs::read_to_string(work.join("results.log"))
                        .unwrap_or_default()
                        .lines()
                        .rfind(|l| l.starts_with("tiommu-guest: dump:"))
                        .map(str::to_string)
                        .unwrap_or_else(|| "no answer line".into());
                    failures.push(format!("--dump: the guest did not get a dump from the daemon ({e}; {said})"));
                }
            }
        }
        if self.interrupted.load(Ordering::Relaxed) {
            failures.push("interrupted (SIGINT or SIGTERM): QEMU and the daemon stopped".into());
        }
        let events = read_jsonl(&events_path);
        if let Some(st) = daemon_status {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = st.signal() {
                failures.push(format!(
                    "the daemon was killed by signal {sig} ({}); its log ends:\n{}",
                    signal_name(sig),
                    tail(&work.join("daemon.log"), 10)
                ));
            } else if !st.success() {
                failures.push(format!(
                    "the daemon exited with {}; its log ends:\n{}",
                    st.code().unwrap_or(-1),
                    tail(&work.join("daemon.log"), 20)
                ));
            }
        }
        // A daemon that ended on a signal it was not sent by this run (it records which).
        if !self.stopped_daemon {
            if let Some(sig) = events.iter().filter(|e| e["type"] == "daemon_exit").find_map(|e| e["signal"].as_i64()) {
                failures.insert(
                    0,
                    format!("the daemon was stopped by signal {sig} ({}) during the run, not by tiommu run", signal_name(sig as i32)),
                );
            }
        }

        // What the guest said against what the daemon recorded: `tiommu check`'s checker, in
        // process (the run's times are this table's, not its lines).
        let results = std::fs::read_to_string(work.join("results.log")).unwrap_or_default();
        let boots = report::split_boots(&results);
        let verdict = crate::tools::check::check(&crate::tools::check::Run {
            results: results.clone(),
            events: std::fs::read_to_string(&events_path).unwrap_or_default(),
            cpu_events: std::fs::read_to_string(work.join("cpu-events.jsonl")).unwrap_or_default(),
            console_ts: stamped.iter().map(|(t, l)| format!("{t:.6} {l}\n")).collect(),
            start: 0.0,
            end: 0.0,
            ioat: a.ioat,
        });
        let mut summary = report::Summary {
            kernel: kernel.display().to_string(),
            mode: mode_name(&machine),
            boots: outcomes.len(),
            event_counts: verdict.summary.by_type.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            peak_rss_kib: report::peak_rss_kib(&events),
            ..report::Summary::default()
        };
        if own_guest || a.shell {
            say("your own initramfs, root fs or a shell: no scenarios to check");
        } else if !qemu_failed {
            summary.scenarios = report::scenarios(&boots, &stamped);
            summary.checks = verdict.lines.clone();
            for s in summary.scenarios.iter().filter(|s| s.result == "FAIL") {
                let b = if a.boots > 1 { format!(" (boot {})", s.boot) } else { String::new() };
                failures.push(format!("scenario {} {}{b} failed: {}", s.n, s.name, s.reason));
            }
            let failed_scenarios = summary.scenarios.iter().any(|s| s.result == "FAIL");
            if !verdict.ok && !failed_scenarios {
                failures.push("the checks against the event stream and the guest's report failed (the lines above)".into());
            }
        }
        timings.extend(stamped.iter().find(|(_, l)| console::from_init(l)).map(|(t, _)| ("launch to /init", *t)));
        timings.extend(
            stamped
                .iter()
                .find(|(_, l)| matches!(console::ktap(l), Some(console::Ktap::Result { .. })))
                .map(|(t, _)| ("launch to first result", *t)),
        );
        let powered_off = outcomes.iter().all(|o| o.powered_off);
        if powered_off && !outcomes.is_empty() {
            timings.push(("launch to power-off", end.as_secs_f64()));
        } else {
            timings.push(("launch to end (no power-off)", end.as_secs_f64()));
        }
        timings.push(("whole run", launch.elapsed().as_secs_f64()));
        summary.timings = timings;
        summary.failures = failures;
        Ok(summary)
    }

    /// A summary for a run that ended before QEMU booted (the daemon or the probe failed).
    fn early_failure(&mut self, why: String, timings: Vec<(&'static str, f64)>) -> report::Summary {
        self.stop_daemon();
        report::Summary { failures: vec![why], timings, ..report::Summary::default() }
    }

    fn work_file(&self, name: &str) -> PathBuf {
        self.work.as_deref().unwrap_or(Path::new("/nonexistent")).join(name)
    }

    fn daemon_exited(&mut self) -> bool {
        self.daemon.as_mut().is_none_or(|d| d.try_wait().ok().flatten().is_some())
    }

    fn wait_daemon(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let d = self.daemon.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = d.try_wait() {
                self.daemon = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (the daemon ends its stream and removes its sockets), SIGKILL after 5 s.
    fn stop_daemon(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.daemon.as_ref()?.id();
        if self.daemon_exited() {
            return self.wait_daemon(Duration::ZERO);
        }
        self.stopped_daemon = true;
        let _ = signal(pid as i32, libc::SIGTERM);
        if let Some(st) = self.wait_daemon(Duration::from_secs(5)) {
            return Some(st);
        }
        let mut d = self.daemon.take()?;
        let _ = d.kill();
        d.wait().ok()
    }

    /// One boot: QEMU's console read as it comes, progress lines, the timeout.
    fn boot(
        &mut self,
        qemu: &QemuCmd,
        qargs: &[String],
        binds: &[(PathBuf, String)],
        timeout: Option<Duration>,
        start: Instant,
        stamped: &mut Vec<(f64, String)>,
    ) -> BootOutcome {
        let a = self.args.clone();
        let interactive = a.shell || a.gdb;
        let mut cmd = qemu.command(qargs, binds);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if interactive {
            // QEMU reads the terminal (the monitor and the guest's console on stdio).
            cmd.stdin(Stdio::inherit());
        } else {
            // Its own process group: stopped as a whole (unshare, sh, chroot, QEMU), and the
            // user's Ctrl-C comes to the runner, which stops it.
            cmd.stdin(Stdio::null()).process_group(0);
        }
        let boot_start = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return BootOutcome { failure: Some(format!("cannot start QEMU: {e}")), powered_off: false },
        };
        say(format!("QEMU started (pid {})", child.id()));
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, String, bool)>();
        let console_log = std::fs::OpenOptions::new().create(true).append(true).open(self.work_file("console.log")).ok();
        let mut readers = Vec::new();
        for (stream, is_err) in [
            (child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), false),
            (child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>), true),
        ] {
            let Some(mut stream) = stream else { continue };
            let tx = tx.clone();
            let mut log = console_log.as_ref().and_then(|f| f.try_clone().ok());
            let raw_out = interactive && !is_err;
            readers.push(std::thread::spawn(move || {
                let mut filter = console::EscapeFilter::default();
                let mut buf = [0u8; 4096];
                let mut line: Vec<u8> = Vec::new();
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if let Some(l) = log.as_mut() {
                        let _ = l.write_all(&buf[..n]);
                    }
                    if raw_out {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(&filter.feed(&buf[..n]));
                        let _ = o.flush();
                    }
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            for l in console::lines_of(console::plain(&String::from_utf8_lossy(&line))) {
                                let _ = tx.send((Instant::now(), l, is_err));
                            }
                            line.clear();
                        } else {
                            line.push(b);
                        }
                    }
                }
                if !line.is_empty() {
                    let _ = tx.send((Instant::now(), console::plain(&String::from_utf8_lossy(&line)), is_err));
                }
            }));
        }
        drop(tx);
        let mut plan = None;
        let mut booted = false;
        let mut timed_out = false;
        let mut stopping = false;
        let mut daemon_gone_at: Option<f64> = None;
        let mut last_lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut stderr_lines: Vec<String> = Vec::new();
        let deadline = timeout.map(|t| boot_start + t);
        let status = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((at, l, is_err)) => {
                    let t = at.duration_since(start).as_secs_f64();
                    if is_err {
                        stderr_lines.push(l.clone());
                    }
                    if a.console && !interactive {
                        let _ = writeln!(std::io::stdout(), "{l}");
                    }
                    if !booted && console::from_init(&l) {
                        booted = true;
                        say(format!("kernel booted, /init running ({} after QEMU started)", secs(at.duration_since(boot_start))));
                    }
                    if l.contains("tiommu-guest: FATAL") || l.contains("Kernel panic") {
                        say(format!("guest: {l}"));
                    }
                    match console::ktap(&l) {
                        Some(console::Ktap::Plan(n)) => plan = Some(n),
                        Some(console::Ktap::Result { n, name, ok, skip, reason }) if !interactive => {
                            let of = plan.map(|m| format!(" of {m}")).unwrap_or_default();
                            let r = if skip {
                                "skip".to_string()
                            } else if ok {
                                "ok".to_string()
                            } else {
                                format!("FAILED: {reason}")
                            };
                            say(format!("scenario {n}{of}: {name}: {r}"));
                        }
                        _ => {}
                    }
                    // QEMU's warning for each vfio-user function is harmless (docs/running.md).
                    if !l.contains("Could not enable error recovery") {
                        last_lines.push_back(l.clone());
                    }
                    if last_lines.len() > 15 {
                        last_lines.pop_front();
                    }
                    stamped.push((t, l));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    if let Ok(st) = child.wait() {
                        break Some(st);
                    }
                    break None;
                }
            }
            if daemon_gone_at.is_none() && self.daemon_exited() {
                daemon_gone_at = Some(boot_start.elapsed().as_secs_f64());
            }
            let over = deadline.is_some_and(|d| Instant::now() >= d);
            if !stopping && (over || self.interrupted.load(Ordering::Relaxed)) {
                timed_out = over;
                stopping = true;
                stop_group(&mut child, interactive);
                // The readers end with QEMU's pipes.
            }
        };
        for r in readers {
            let _ = r.join();
        }
        if interactive {
            // Line wrap back on, whatever the guest left the terminal in.
            let _ = write!(std::io::stdout(), "{}", console::RESTORE);
            let _ = std::io::stdout().flush();
        }
        let ran = boot_start.elapsed();
        let last = last_lines.iter().cloned().collect::<Vec<_>>().join("\n    ");
        let powered_off = status.is_some_and(|s| s.success()) && !timed_out;
        let failure = if self.interrupted.load(Ordering::Relaxed) {
            None
        } else if timed_out {
            Some(format!(
                "QEMU did not power off within --timeout {} (stopped it){}; the console's last lines:\n    {last}",
                secs(timeout.unwrap_or_default()),
                if booted { "" } else { " before the kernel reached /init" }
            ))
        } else {
            match status {
                None => Some("lost QEMU (wait failed)".into()),
                Some(st) if st.code() == Some(qemu::MOUNT_FAILED) && matches!(qemu, QemuCmd::Root { .. }) => Some(format!(
                    "could not mount the work directory, /proc and /dev into the Debian 13 root ({}), so QEMU never ran: {}",
                    match qemu {
                        QemuCmd::Root { root, .. } => root.display().to_string(),
                        _ => String::new(),
                    },
                    stderr_lines.join(" | ")
                )),
                Some(st) if !st.success() => {
                    let how = st.code().map(|c| format!("with {c}")).unwrap_or_else(|| {
                        let sig = std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0);
                        format!("on signal {sig} ({})", signal_name(sig))
                    });
                    let said = qemu_said(&stderr_lines);
                    let said = if said.is_empty() { last.clone() } else { said };
                    Some(match daemon_gone_at {
                        Some(t) => format!("the daemon ended {t:.1} s into the boot and QEMU ended {how} after it: {said}"),
                        None => format!(
                            "QEMU exited {how} after {}{}:\n    {said}",
                            secs(ran),
                            if booted { "" } else { ", before the kernel reached /init" }
                        ),
                    })
                }
                Some(_) if !booted && !a.shell && self.args.initrd.is_none() && self.args.rootfs.is_none() => {
                    Some(format!("the guest powered off without reaching /init; the console's last lines:\n    {last}"))
                }
                Some(_) => None,
            }
        };
        if let (Some(t), None) = (daemon_gone_at, &failure) {
            if self.args.boots > 1 {
                say(format!("the --persist daemon ended {t:.1} s into the boot"));
            }
        }
        say(format!("QEMU {} after {}", if powered_off { "powered off" } else { "ended" }, secs(ran)));
        BootOutcome { failure, powered_off }
    }

    /// Stops what is left and keeps or removes the work directory.
    fn finish(&mut self) {
        self.stop_daemon();
        let Some(work) = self.work.take() else { return };
        if let Some(keep) = &self.args.keep {
            match keep_files(&work, keep) {
                Ok(names) => say(format!("kept the run's files in {}: {}", keep.display(), names.join(" "))),
                Err(e) => say(format!("could not keep the files in {}: {e}", keep.display())),
            }
        }
        let _ = std::fs::remove_dir_all(&work);
    }
}

impl Drop for Runner {
    /// Whatever ends the run, the daemon is stopped and the work directory kept or removed.
    fn drop(&mut self) {
        self.finish();
    }
}

struct BootOutcome {
    failure: Option<String>,
    powered_off: bool,
}

/// Everything a QEMU boot needs, in the one place `tiommu qemu-args` shares.
pub struct QemuBoot<'a> {
    pub machine: &'a Machine,
    /// The work directory as QEMU sees it (sockets, tables, the results port).
    pub dir: &'a str,
    pub kernel: &'a str,
    pub initrd: Option<&'a str>,
    pub rootfs: Option<&'a str>,
    pub cmdline: &'a str,
    pub plugin: Option<&'a str>,
    pub gdb: bool,
    pub extra: &'a [String],
}

pub fn qemu_args(b: &QemuBoot) -> Vec<String> {
    let d = b.dir;
    let mut q = b.machine.machine_args(d, d);
    q.extend(b.machine.late_acpi_args(d));
    q.extend(["-nographic", "-no-reboot", "-kernel"].map(String::from));
    q.push(b.kernel.to_string());
    if let Some(i) = b.initrd {
        q.extend(["-initrd".into(), i.to_string()]);
    }
    // The console on stdio; the guest's results on a second port, where no kernel message
    // interleaves with them; the control channel on a third (--inject).
    q.extend(["-serial".into(), "mon:stdio".into(), "-chardev".into(), format!("file,id=results,path={d}/results.log,append=on")]);
    q.extend(["-serial".into(), "chardev:results".into()]);
    q.extend(b.machine.inject_args(d));
    if let Some(p) = b.plugin {
        q.extend(["-plugin".into(), p.to_string()]);
    }
    if let Some(r) = b.rootfs {
        q.extend(["-drive".into(), format!("file={r},format=raw,if=virtio")]);
    }
    if b.gdb {
        q.extend(["-s".into(), "-S".into()]);
    }
    q.extend(["-append".into(), b.cmdline.to_string()]);
    q.extend(b.extra.iter().cloned());
    q
}

fn mode_name(m: &Machine) -> String {
    let mut s = match m.mode {
        Mode::Plain => "plain",
        Mode::VirtioIommu => "virtio-iommu",
        Mode::VirtioIommuRaw => "virtio-iommu (raw, no driver)",
        Mode::AmdIommu => "amd-iommu",
        Mode::IntelIommu => "intel-iommu",
    }
    .to_string();
    if m.personality == Personality::TdxConnect {
        s.push_str(", tdx-connect");
    }
    if m.ioat {
        s.push_str(", ioat");
    }
    if m.inject {
        s.push_str(", inject");
    }
    s
}

/// QEMU's -kernel loads a bzImage (the setup header's "HdrS" at 0x202,
/// Documentation/arch/x86/boot.rst) or an ELF with a PVH note; say so now rather than after
/// QEMU has failed.
pub fn check_kernel(k: &Path) -> Result<(), String> {
    let mut head = [0u8; 0x206];
    let mut f = std::fs::File::open(k).map_err(|e| format!("no kernel at {}: {e}", k.display()))?;
    let n = f.read(&mut head).map_err(|e| format!("cannot read {}: {e}", k.display()))?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        return Ok(());
    }
    if n < 0x206 || &head[0x202..0x206] != b"HdrS" {
        return Err(format!(
            "{} is not a kernel QEMU can boot (no bzImage header: give arch/x86/boot/bzImage, not vmlinux or a module)",
            k.display()
        ));
    }
    Ok(())
}

/// Waits until the daemon has made every socket, or says why not.
pub fn wait_for_sockets(dir: &Path, socks: &[&str], daemon: &mut Child, within: Duration) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + within;
    loop {
        let missing: Vec<&&str> =
            socks.iter().filter(|s| !std::fs::metadata(dir.join(s)).is_ok_and(|m| m.file_type().is_socket())).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            return Err(format!("the daemon exited ({st}) before making its sockets"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the daemon made no {} within {}",
                missing.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
                secs(within)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_power_cycles(events: &Path, n: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let c = read_jsonl(events).iter().filter(|e| e["type"] == "power_cycle").count();
        if c >= n as usize {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What QEMU said on its own (its "qemu-system-x86_64: ..." lines, not a register dump or the
/// harmless vfio-user warning), the last five.
fn qemu_said(stderr: &[String]) -> String {
    let own: Vec<&str> = stderr
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("qemu-system-") || l.starts_with("qemu:") || l.starts_with("unshare:") || l.starts_with("chroot:"))
        .filter(|l| !l.contains("Could not enable error recovery"))
        .collect();
    own[own.len().saturating_sub(5)..].join("\n    ")
}

fn append_line(p: &Path, l: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p) {
        let _ = writeln!(f, "{l}");
    }
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("pid 0"))?;
    let sig = rustix::process::Signal::from_named_raw(sig).ok_or_else(|| std::io::Error::other("not a signal"))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

pub fn kill_group(pgid: u32, sig: i32) {
    if let (Some(pid), Some(sig)) = (rustix::process::Pid::from_raw(pgid as i32), rustix::process::Signal::from_named_raw(sig)) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// SIGTERM to QEMU's process group (QEMU ends on it; the root's `unshare` relays its own end
/// to QEMU as SIGTERM), SIGKILL after 3 s. An interactive QEMU shares the runner's group (it
/// reads the terminal): its `unshare` (or the system's QEMU itself) is signalled alone.
fn stop_group(child: &mut Child, interactive: bool) {
    let gone = |child: &mut Child, within: Duration| {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    if interactive {
        let _ = signal(child.id() as i32, libc::SIGTERM);
        // unshare blocks SIGTERM; its SIGKILL becomes QEMU's SIGTERM (--kill-child).
        if !gone(child, Duration::from_secs(1)) {
            let _ = child.kill();
        }
    } else {
        kill_group(child.id(), libc::SIGTERM);
    }
    if gone(child, Duration::from_secs(3)) {
        return;
    }
    if !interactive {
        kill_group(child.id(), libc::SIGKILL);
    }
    let _ = child.kill();
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    }
    u64::from_le_bytes(b)
}

fn make_work_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let p = base.join(format!("tiommu-run.{:08x}", random_seed() as u32));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot make a work directory in {}: {e}", base.display())),
        }
    }
    Err("cannot make a work directory".into())
}

/// Moves the daemon's dump (`dump/` in its socket directory) to `to`; whether it holds the RMP.
fn take_dump(from: &Path, to: &Path) -> Result<bool, String> {
    if !from.join("regs.json").is_file() {
        return Err("no dump/regs.json in the daemon's directory".into());
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir(to);
    if std::fs::rename(from, to).is_err() {
        // Another file system: copy, then the work directory goes anyway.
        keep_files(from, to).map_err(|e| format!("cannot copy the dump to {}: {e}", to.display()))?;
        let _ = std::fs::remove_file(to.join(KEEP_MARK));
    }
    Ok(to.join("rmp.bin").is_file())
}

/// The file an earlier `--keep` left, so a later one may empty the directory.
const KEEP_MARK: &str = ".tiommu-run";

/// A --keep directory must be new, empty, or an earlier run's (emptied now): files of two runs
/// never mix.
pub fn prepare_keep(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("--keep {}: {e}", dir.display())),
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(());
            }
            if !dir.join(KEEP_MARK).is_file() {
                return Err(format!(
                    "--keep {}: the directory holds files that are not an earlier run's; give a new or empty directory",
                    dir.display()
                ));
            }
            for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
                let p = e.path();
                let r = if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                r.map_err(|e| format!("--keep {}: cannot empty it: {e}", dir.display()))?;
            }
            Ok(())
        }
    }
}

/// Copies the work directory's files (not its sockets or bind placeholders) into `keep`.
fn keep_files(work: &Path, keep: &Path) -> Result<Vec<String>, String> {
    fn copy(from: &Path, to: &Path, names: &mut Vec<String>, prefix: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)?.flatten() {
            let ft = e.file_type()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if ft.is_dir() {
                copy(&e.path(), &to.join(&name), names, &format!("{prefix}{name}/"))?;
            } else if ft.is_file() && !(e.metadata()?.len() == 0 && ["vmlinuz", "rootfs.img", "own-initrd"].contains(&name.as_str())) {
                std::fs::copy(e.path(), to.join(&name))?;
                names.push(format!("{prefix}{name}"));
            }
        }
        Ok(())
    }
    let mut names = Vec::new();
    copy(work, keep, &mut names, "").map_err(|e| e.to_string())?;
    std::fs::write(keep.join(KEEP_MARK), b"files of a `tiommu run --keep`; the next one empties this directory\n")
        .map_err(|e| e.to_string())?;
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests;
