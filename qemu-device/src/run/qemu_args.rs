//! `tiommu qemu-args`: what attaches a running `tiommu daemon` to a QEMU command line of the
//! user's own (their kernel, their initramfs, virtme-ng): the daemon command to start first, the
//! -object/-machine/-device/-acpitable arguments and the kernel command-line additions, from the
//! same [`Machine`] `tiommu run` boots.

use super::machine::{self, Machine, Mode, Personality, Slots};
use super::qemu::QemuCmd;
use super::Setup;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// Everything, commented: the daemon command, the QEMU command, the kernel command line.
    All,
    /// The daemon command (one shell line).
    Daemon,
    /// The QEMU command with the machine and the functions (one shell line; add -kernel,
    /// -initrd, -append and the rest).
    Qemu,
    /// The QEMU arguments only, one per line (for `mapfile -t`, or `vng --qemu-opts`).
    Args,
    /// Only the -device, -acpitable, -chardev and -serial arguments (one shell-quoted line), for
    /// a command line that already has guest RAM shared (`memory-backend-memfd,share=on`), as
    /// virtme-ng's with virtio-fs does: `vng --qemu-opts`.
    Devices,
    /// The kernel command-line additions (one line).
    Cmdline,
    /// Where QEMU sees DIR (the set-up's QEMU: /run/tiommu inside its root), for the paths of
    /// a kernel and an initramfs put there.
    Dir,
}

/// Print the daemon command, QEMU arguments and kernel command line that attach the tiommu
/// functions to a QEMU command line of your own.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Linux's virtio_iommu on the daemon's virtio-iommu at 00:05.0 (ACPI VIOT).
    #[arg(long, group = "kernel_iommu")]
    pub virtio_iommu: bool,
    /// Linux's amd_iommu on the secure IOMMU function (ACPI IVRS; needs BAR0's address: --mmio,
    /// or a firmware-only boot finds it).
    #[arg(long, group = "kernel_iommu")]
    pub amd_iommu: bool,
    /// Linux's intel_iommu on the daemon's VT-d unit (ACPI DMAR; BAR0 as for --amd-iommu).
    #[arg(long, group = "kernel_iommu")]
    pub intel_iommu: bool,
    /// Also the IOAT DMA engine at 00:06.0.
    #[arg(long)]
    pub ioat: bool,
    /// The daemon's personality.
    #[arg(long, value_enum, default_value = "sev-tio")]
    pub personality: Personality,
    /// The daemon's control socket on the guest's next serial port (fault injection).
    #[arg(long)]
    pub inject: bool,
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub smp: u32,
    #[arg(long, default_value = "512M", value_name = "SIZE")]
    pub memory: String,
    #[arg(long)]
    pub kvm: bool,
    /// The daemon's socket directory; the ACPI table is written there too.
    #[arg(long, value_name = "DIR", default_value = "/tmp/tiommu")]
    pub dir: PathBuf,
    /// A QEMU on this system (11.1 or later). Default: the set-up's, in its Debian 13 root (the
    /// printed command enters it; DIR appears there as /run/tiommu).
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// BAR0's address for --amd-iommu / --intel-iommu, when you know it.
    #[arg(long, value_name = "ADDR", value_parser = crate::tools::walk::parse_u64)]
    pub mmio: Option<u64>,
    /// The daemon serves one QEMU after another (`tiommu daemon --persist`) until SIGTERM.
    #[arg(long)]
    pub persist: bool,
    /// The functions' first slot on the root bus (default 3: the IOMMU at 00:03.0, the endpoint
    /// at 00:04.0, the virtio-iommu at 00:05.0, the IOAT engine at 00:06.0); the others follow
    /// it. For a command line whose own devices take those slots (virtme-ng: 0x10).
    #[arg(long, value_name = "SLOT", value_parser = parse_slot)]
    pub first_slot: Option<u8>,
    /// What to print.
    #[arg(long, value_enum, default_value = "all")]
    pub print: Print,
    /// Also write the guest scenarios' initramfs (busybox, the guest program, /init and the
    /// modules the mode needs from the set-up's kernel, or --modules) to FILE.
    #[arg(long, value_name = "FILE")]
    pub initramfs: Option<PathBuf>,
    /// The modules tree for --initramfs (lib/modules/VERSION), or `none`.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<String>,
    /// The guest program for --initramfs; default: beside this binary's target directory.
    #[arg(long, value_name = "PATH")]
    pub guest: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), String> {
    let mut m = Machine {
        mode: Mode::of_flags(a.virtio_iommu, a.amd_iommu, a.intel_iommu),
        ioat: a.ioat,
        personality: a.personality,
        kvm: a.kvm,
        smp: a.smp,
        memory: a.memory.clone(),
        bar0: a.mmio,
        inject: a.inject,
        dump: false,
        nodefaults: false,
        slots: a.first_slot.map(Slots::from_first).transpose()?.unwrap_or_default(),
    };
    m.validate()?;
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("cannot make {}: {e}", a.dir.display()))?;
    let dir = std::fs::canonicalize(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let setup = Setup::read(&Setup::cache_dir());
    let qemu = match (&a.qemu, &setup) {
        (Some(q), _) => QemuCmd::System { binary: q.clone(), work: dir.clone() },
        (None, Ok(s)) => s.qemu(None, &dir)?,
        (None, Err(e)) => return Err(format!("{e}; or give --qemu PATH for a QEMU of your own")),
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    if m.needs_bar0() && m.bar0.is_none() {
        let cache = setup.as_ref().map(|s| s.cache.clone()).unwrap_or_else(|_| Setup::cache_dir());
        eprintln!("tiommu qemu-args: finding where the firmware puts {}'s BAR0 (cached after the first time)", m.slots.iommu);
        m.bar0 = Some(super::probe::bar0(&m, &qemu, &exe, &dir, &cache)?);
        let _ = std::fs::remove_dir_all(dir.join("probe"));
    }
    if let Some(t) = machine::write_acpi_table(&m, &dir)? {
        if a.print == Print::All {
            eprintln!("tiommu qemu-args: wrote {}", t.display());
        }
    }
    if let Some(out) = &a.initramfs {
        write_initramfs(&m, &a, setup.as_ref().ok(), &exe, out)?;
    }
    let out = render(&m, &qemu, &exe, &dir, a.persist, a.print);
    print!("{out}");
    Ok(())
}

fn parse_slot(s: &str) -> Result<u8, String> {
    crate::tools::walk::parse_u64(s)
        .ok()
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| format!("{s:?} is not a slot number (e.g. 0x10)"))
}

fn write_initramfs(m: &Machine, a: &Args, setup: Option<&Setup>, exe: &Path, out: &Path) -> Result<(), String> {
    let guest = a.guest.clone().unwrap_or_else(|| {
        exe.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join("x86_64-unknown-linux-musl/release/guest-tests")
    });
    let moddir = match a.modules.as_deref() {
        Some("none") => None,
        Some(d) => Some(PathBuf::from(d)),
        None => setup.and_then(|s| s.modules.clone()),
    };
    let mods = m.modules();
    let built = super::initramfs::build(&super::initramfs::Contents {
        busybox: Path::new("/bin/busybox"),
        guest: &guest,
        modules_dir: moddir.as_deref(),
        modules: &mods,
    })?;
    std::fs::write(out, &built.archive).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!(
        "tiommu qemu-args: wrote the scenarios' initramfs {} (modules: {})",
        out.display(),
        if built.loaded.is_empty() { "none".into() } else { built.loaded.join(" ") }
    );
    Ok(())
}

/// The daemon command for `m` with its sockets in `dir`.
pub fn daemon_command(m: &Machine, exe: &Path, dir: &Path, persist: bool) -> Vec<String> {
    let mut d = vec![
        exe.display().to_string(),
        "daemon".into(),
        "--socket-dir".into(),
        dir.display().to_string(),
        "--events".into(),
        dir.join("events.jsonl").display().to_string(),
        "--overwrite-events".into(),
    ];
    d.extend(m.daemon_functions());
    if persist {
        d.push("--persist".into());
    }
    d
}

/// The QEMU arguments that attach the functions (the ACPI table included), as QEMU sees `dir`.
pub fn attach_args(m: &Machine, in_qemu: &str) -> Vec<String> {
    let mut q = m.machine_args(in_qemu, in_qemu);
    q.extend(m.late_acpi_args(in_qemu));
    q.extend(m.inject_args(in_qemu));
    q
}

/// The function, table and control-channel arguments of `attach_args`, without the machine,
/// memory and CPU ones.
pub fn device_args(attach: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    // Every argument goes with a value but -nodefaults.
    for w in attach.iter().filter(|a| *a != "-nodefaults").cloned().collect::<Vec<_>>().chunks(2) {
        if matches!(w[0].as_str(), "-device" | "-acpitable" | "-chardev" | "-serial") {
            out.extend(w.iter().cloned());
        }
    }
    out
}

pub fn render(m: &Machine, qemu: &QemuCmd, exe: &Path, dir: &Path, persist: bool, what: Print) -> String {
    let inq = qemu.dir_in_qemu();
    let args = attach_args(m, &inq);
    let daemon = machine::shell_line(&daemon_command(m, exe, dir, persist));
    let qline = machine::shell_line(&qemu.argv(&args, &[]));
    let cmdline = m.kernel_cmdline().join(" ");
    match what {
        Print::Daemon => format!("{daemon}\n"),
        Print::Qemu => format!("{qline}\n"),
        Print::Args => args.iter().map(|a| format!("{a}\n")).collect(),
        Print::Cmdline => format!("{cmdline}\n"),
        Print::Dir => format!("{inq}\n"),
        Print::Devices => format!("{}\n", machine::shell_line(&device_args(&args))),
        Print::All => {
            let where_files = match qemu {
                QemuCmd::Root { .. } => format!(
                    "# QEMU runs in the set-up's Debian 13 root, where {} is {inq}: put your kernel and\n\
                     # initramfs there and name them {inq}/... (the command needs root: unshare, chroot).\n",
                    dir.display()
                ),
                QemuCmd::System { .. } => String::new(),
            };
            format!(
                "# 1. Start the daemon first ({}):\n\
                 {daemon} &\n\
                 # 2. QEMU with the functions attached; add your -kernel, -initrd, -append and the rest.\n\
                 {where_files}\
                 {qline} \\\n    -nographic -kernel {inq}/bzImage -append 'console=ttyS0 {cmdline}'\n\
                 # 3. The kernel command line needs: {}\n",
                if persist {
                    "it serves one QEMU after another until SIGTERM"
                } else {
                    "it serves one QEMU and exits when it goes; --persist to serve more"
                },
                if cmdline.is_empty() { "nothing more (the guest drives the functions itself)".to_string() } else { cmdline.clone() }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_flavour_names_paths_inside_the_root() {
        let m = Machine { mode: Mode::AmdIommu, bar0: Some(0xfebd_4000), ..Machine::default() };
        let q = QemuCmd::Root { root: "/var/cache/tiommu/trixie-root".into(), work: "/tmp/t".into() };
        let args = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::Args);
        assert!(args.lines().any(|l| l.contains(r#""path":"/run/tiommu/iommu.sock""#)), "{args}");
        assert!(args.lines().any(|l| l == "file=/run/tiommu/ivrs.bin"), "{args}");
        let d = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::Daemon);
        assert_eq!(d, "/x/tiommu daemon --socket-dir /tmp/t --events /tmp/t/events.jsonl --overwrite-events --endpoint-bdf 00:04.0\n");
        let c = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::Cmdline);
        assert!(c.contains("intremap=off") && c.contains("tiommu.ivrs_mmio=0xfebd4000"), "{c}");
        let line = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::Qemu);
        assert!(line.starts_with("unshare --mount --fork --kill-child=SIGTERM sh -c "), "{line}");
        assert!(line.contains(" sh /var/cache/tiommu/trixie-root /tmp/t -- qemu-system-x86_64 -machine q35,memory-backend=mem "), "{line}");
    }

    #[test]
    fn the_system_flavour_uses_host_paths() {
        let m = Machine { mode: Mode::VirtioIommu, ioat: true, inject: true, ..Machine::default() };
        let q = QemuCmd::System { binary: "/usr/bin/qemu-system-x86_64".into(), work: "/tmp/t".into() };
        let args = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::Args);
        let v: Vec<&str> = args.lines().collect();
        assert!(v.contains(&"file=/tmp/t/viot.bin"));
        assert!(v.contains(&"socket,id=inject,path=/tmp/t/control.sock"));
        assert_eq!(v.iter().filter(|a| a.contains("vfio-user-pci")).count(), 4, "iommu, endpoint, virtio-iommu, ioat");
        let line = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::Qemu);
        assert!(line.starts_with("/usr/bin/qemu-system-x86_64 -machine "), "{line}");
        let dev = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::Devices);
        assert!(dev.starts_with("-device '{\"driver\":\"vfio-user-pci\""), "{dev}");
        assert!(!dev.contains("-machine") && !dev.contains("memory-backend") && !dev.contains("-smp"), "{dev}");
        assert!(dev.contains("-acpitable file=/tmp/t/viot.bin") && dev.contains("-serial chardev:inject"), "{dev}");
        let all = render(&m, &q, Path::new("/x/tiommu"), Path::new("/tmp/t"), false, Print::All);
        assert!(all.contains("--virtio-iommu --ioat --ioat-bdf 00:06.0 &"), "{all}");
        assert!(all.contains("tiommu.viommu=1"), "{all}");
    }

    #[test]
    fn the_runner_boots_what_qemu_args_prints() {
        // One builder: the runner's QEMU arguments start with exactly what qemu-args prints.
        let m = Machine { mode: Mode::IntelIommu, ioat: true, bar0: Some(0xfe00_0000), ..Machine::default() };
        let printed = attach_args(&m, "/run/tiommu");
        let runner = super::super::qemu_args(&super::super::QemuBoot {
            machine: &m,
            dir: "/run/tiommu",
            kernel: "/run/tiommu/vmlinuz",
            initrd: None,
            rootfs: None,
            cmdline: "",
            plugin: None,
            gdb: false,
            extra: &[],
        });
        let machine_part = m.machine_args("/run/tiommu", "/run/tiommu").len() + m.late_acpi_args("/run/tiommu").len();
        assert_eq!(printed[..machine_part], runner[..machine_part]);
    }
}
