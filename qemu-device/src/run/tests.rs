use super::*;

fn tmp(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!("tiommu-runtest-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("run"));
    let m = cmd.try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))?;
    <Args as clap::FromArgMatches>::from_arg_matches(&m)
}

#[test]
fn every_run_vm_option_parses() {
    let a = parse(&[
        "--kvm",
        "--kernel",
        "/k",
        "--modules",
        "/m",
        "--append",
        "a=1",
        "--append",
        "b=2",
        "--qemu",
        "/q",
        "--timeout",
        "30",
        "--keep",
        "/tmp/k",
        "--plugin",
        "--hostile",
        "10",
        "--hostile-seed",
        "0x1f",
        "--virtio-iommu",
        "--ioat",
        "--boots",
        "2",
        "--inject",
        "--inject-plan",
        "/p",
        "--smp",
        "2",
        "--personality",
        "tdx-connect",
    ])
    .unwrap();
    assert!(a.kvm && a.virtio_iommu && a.ioat && a.inject);
    assert_eq!(a.plugin, Some(PluginMode::Report), "--plugin alone reports");
    assert_eq!(a.hostile_seed, Some(0x1f));
    assert_eq!(a.append, ["a=1", "b=2"]);
    assert_eq!(parse(&["--plugin", "stop"]).unwrap().plugin, Some(PluginMode::Stop));
    let a = parse(&["--test-kernel", "--", "-d", "guest_errors"]).unwrap();
    assert_eq!(a.qemu_extra, ["-d", "guest_errors"]);
}

#[test]
fn bad_options_say_which() {
    let e = parse(&["--kernel"]).unwrap_err().to_string();
    assert!(e.contains("--kernel"), "a value is required for --kernel: {e}");
    let e = parse(&["--amd-iommu", "--intel-iommu"]).unwrap_err().to_string();
    assert!(e.contains("cannot be used with"), "{e}");
    assert!(parse(&["--boots", "0"]).is_err());
    assert!(parse(&["--boots", "100"]).is_err());
    assert!(parse(&["--hostile-seed", "5"]).is_err(), "--hostile-seed goes with --hostile");
    assert!(parse(&["--kernel", "/k", "--test-kernel"]).is_err());
    let v = |args: &[&str]| Runner::new(parse(args).unwrap(), Arc::default()).validate().err().map(|Usage(s)| s);
    assert!(v(&["--plugin", "--boots", "2"]).unwrap().contains("--boots"));
    assert!(v(&["--plugin", "--kvm"]).unwrap().contains("TCG"));
    assert!(v(&["--smp", "9"]).unwrap().contains("1 to 8"));
    assert!(v(&["--personality", "tdx-connect", "--amd-iommu"]).unwrap().contains("tdx-connect"));
    assert!(v(&["--timeout=-1"]).unwrap().contains("--timeout"));
    assert!(v(&["--memory", "64M"]).unwrap().contains("128M"));
    assert_eq!(v(&["--virtio-iommu", "--smp", "2", "--hostile", "10"]), None);
}

#[test]
fn hostile_virtio_iommu_is_raw() {
    let r = Runner::new(parse(&["--virtio-iommu", "--hostile", "10"]).unwrap(), Arc::default());
    assert_eq!(r.machine().mode, Mode::VirtioIommuRaw);
    assert!(r.machine().modules().is_empty(), "no virtio_iommu driver for the raw function");
}

#[test]
fn the_qemu_command_line() {
    let m = Machine { mode: Mode::AmdIommu, bar0: Some(0xfebd_4000), inject: true, ..Machine::default() };
    let q = qemu_args(&QemuBoot {
        machine: &m,
        dir: "/run/tiommu",
        kernel: "/run/tiommu/vmlinuz",
        initrd: Some("/run/tiommu/initramfs.cpio"),
        rootfs: None,
        cmdline: "console=ttyS0 intremap=off",
        plugin: Some("/run/tiommu/p.so,mode=report"),
        gdb: true,
        extra: &["-d".into(), "guest_errors".into()],
    });
    let s = q.join(" ");
    assert!(s.contains("-acpitable file=/run/tiommu/ivrs.bin"), "{s}");
    assert!(s.contains("-kernel /run/tiommu/vmlinuz -initrd /run/tiommu/initramfs.cpio"), "{s}");
    // ttyS0 the console, ttyS1 the results, ttyS2 the control channel: in that order.
    let serials: Vec<&String> = q.windows(2).filter(|w| w[0] == "-serial").map(|w| &w[1]).collect();
    assert_eq!(serials, ["mon:stdio", "chardev:results", "chardev:inject"]);
    assert!(s.contains("-plugin /run/tiommu/p.so,mode=report"));
    assert!(s.contains("-s -S -append"), "{s}");
    assert_eq!(q[q.len() - 4..], ["-append", "console=ttyS0 intremap=off", "-d", "guest_errors"], "the user's arguments last");
    let q = qemu_args(&QemuBoot {
        machine: &Machine::default(),
        dir: "/w",
        kernel: "/k",
        initrd: None,
        rootfs: Some("/w/rootfs.img"),
        cmdline: "",
        plugin: None,
        gdb: false,
        extra: &[],
    });
    assert!(!q.contains(&"-initrd".to_string()));
    assert!(q.join(" ").contains("-drive file=/w/rootfs.img,format=raw,if=virtio"));
}

#[test]
fn a_kernel_qemu_cannot_load_is_said_up_front() {
    let d = tmp("kernel");
    std::fs::create_dir_all(&d).unwrap();
    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(d.join("bzImage"), &bz).unwrap();
    std::fs::write(d.join("vmlinux"), b"\x7fELF\x02\x01").unwrap();
    std::fs::write(d.join("config"), b"CONFIG_X=y\n").unwrap();
    assert_eq!(check_kernel(&d.join("bzImage")), Ok(()));
    assert_eq!(check_kernel(&d.join("vmlinux")), Ok(()));
    assert!(check_kernel(&d.join("config")).unwrap_err().contains("not a kernel QEMU can boot"));
    assert!(check_kernel(&d.join("absent")).unwrap_err().starts_with("no kernel at"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn keep_refuses_a_foreign_directory_and_empties_its_own() {
    let d = tmp("keep");
    assert_eq!(prepare_keep(&d), Ok(()), "a new directory");
    std::fs::create_dir_all(&d).unwrap();
    assert_eq!(prepare_keep(&d), Ok(()), "an empty one");
    std::fs::write(d.join("notes.txt"), b"mine").unwrap();
    assert!(prepare_keep(&d).unwrap_err().contains("not an earlier run's"));
    assert!(d.join("notes.txt").exists(), "nothing of the user's removed");
    std::fs::remove_file(d.join("notes.txt")).unwrap();
    // An earlier run's files: kept, then emptied by the next --keep.
    let work = tmp("work");
    std::fs::create_dir_all(work.join("probe")).unwrap();
    std::fs::write(work.join("console.log"), b"x").unwrap();
    std::fs::write(work.join("viot.bin"), b"VIOT").unwrap();
    std::fs::write(work.join("probe/qemu.log"), b"q").unwrap();
    std::fs::write(work.join("vmlinuz"), b"").unwrap();
    let names = keep_files(&work, &d).unwrap();
    assert_eq!(names, ["console.log", "probe/qemu.log", "viot.bin"], "bind placeholders left out");
    assert_eq!(prepare_keep(&d), Ok(()));
    assert!(!d.join("viot.bin").exists(), "a stale table does not stay behind");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn the_setup_env() {
    let s = Setup::parse(
        Path::new("/c"),
        "# Written by scripts/setup.\nTIOMMU_QEMU_SYSTEM=''\nTIOMMU_QEMU_ROOT='/c/root'\nTIOMMU_KERNEL='/c/k/vmlinuz'\nTIOMMU_MODULES='/c/k/mods'\n",
    );
    assert_eq!(s.qemu_system, None);
    assert_eq!(s.qemu_root.as_deref(), Some(Path::new("/c/root")));
    assert_eq!(s.kernel.as_deref(), Some(Path::new("/c/k/vmlinuz")));
    let e = s.qemu(None, Path::new("/w")).unwrap_err();
    assert!(e.contains("/c/root has no usr/bin/qemu-system-x86_64"), "a missing root said as such: {e}");
    assert!(s.qemu(Some(Path::new("/nonexistent/qemu")), Path::new("/w")).unwrap_err().contains("no QEMU at"));
    assert!(Setup::read(Path::new("/nonexistent-cache")).unwrap_err().contains("scripts/setup"));
}

#[test]
fn qemu_failures_quote_qemu_not_its_register_dump() {
    let lines: Vec<String> = [
        "qemu-system-x86_64: -device {...}: warning: vfio vfio-user:/run/tiommu/iommu.sock: Could not enable error recovery for the device",
        "qemu-system-x86_64: vfio-user: failed to read from socket",
        "RAX=0000000000000000 RBX=0000000000000000",
        "YMM15=0000000000000000 0000000000000000",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(qemu_said(&lines), "qemu-system-x86_64: vfio-user: failed to read from socket");
    assert_eq!(qemu_said(&lines[2..]), "", "nothing of QEMU's own: the caller shows the console instead");
}

#[test]
fn the_readme_sample_names_the_scenarios_by_their_numbers() {
    // The README's sample output, checked against the guest program's scenario list (its order is
    // the KTAP numbering): a renumbering that leaves the README stale fails here.
    let readme = include_str!("../../../README.md");
    let scenarios = include_str!("../../../guest-tests/src/scenarios.rs");
    let inject = include_str!("../../../guest-tests/src/scenarios/inject.rs");
    let inject_vtd = include_str!("../../../guest-tests/src/scenarios/inject_vtd.rs");
    let entry = regex::Regex::new(r#"^\s*\("([a-z0-9_]+)",\s*[A-Za-z0-9_:]+\),"#).unwrap();
    let block = |src: &'static str, start: &str| -> Vec<String> {
        let from = src.find(start).expect("the scenario array");
        let to = from + src[from..].find("];").unwrap();
        src[from..to].lines().filter_map(|l| entry.captures(l)).map(|c| c[1].to_string()).collect()
    };
    let mut names = block(scenarios, "let base: [Scenario;");
    names.extend(block(inject, "pub(super) const SCENARIOS"));
    names.extend(block(inject_vtd, "pub(super) const SCENARIOS"));
    assert!(names.len() > 30, "{names:?}");
    let from = readme.find("prints one line per phase").expect("the README's sample");
    let sample = &readme[from..];
    let sample = &sample[sample.find("```").unwrap() + 3..];
    let sample = &sample[..sample.find("```").unwrap()];
    let row = regex::Regex::new(r"^\s*(\d+)\s+([a-z0-9_]+)\s+(ok|FAIL|skip)\b").unwrap();
    let progress = regex::Regex::new(r"^tiommu run: scenario (\d+) of (\d+): ([a-z0-9_]+): ").unwrap();
    let mut checked = 0;
    for l in sample.lines() {
        if let Some(c) = row.captures(l) {
            let n: usize = c[1].parse().unwrap();
            assert_eq!(names.get(n - 1).map(String::as_str), Some(&c[2]), "README row: {l}");
            checked += 1;
        }
        if let Some(c) = progress.captures(l) {
            let n: usize = c[1].parse().unwrap();
            assert_eq!(c[2].parse::<usize>().unwrap(), names.len(), "README: {l}");
            assert_eq!(names.get(n - 1).map(String::as_str), Some(&c[3]), "README: {l}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "the README's sample shows scenario rows ({checked})");
}

#[test]
fn dump_asks_over_the_control_channel() {
    let r = Runner::new(parse(&["--dump", "/tmp/d"]).unwrap(), Arc::default());
    let m = r.machine();
    assert_eq!(m.inject_args("/w"), ["-chardev", "socket,id=inject,path=/w/control.sock", "-serial", "chardev:inject"]);
    assert!(m.kernel_cmdline().contains(&"tiommu.dump=1".to_string()));
    assert!(!m.kernel_cmdline().contains(&"tiommu.inject=1".to_string()), "no injection scenarios for a dump");
    assert!(initramfs::INIT.contains(r#"echo '{"cmd":"dump"}' >&3"#));
    // The daemon's dump moves to DIR; without one the run says so.
    let work = tmp("dumpwork");
    let to = tmp("dumpto");
    assert!(take_dump(&work.join("dump"), &to).unwrap_err().contains("regs.json"));
    std::fs::create_dir_all(work.join("dump")).unwrap();
    std::fs::write(work.join("dump/regs.json"), b"{}").unwrap();
    std::fs::write(work.join("dump/ram.img"), b"ram").unwrap();
    assert_eq!(take_dump(&work.join("dump"), &to), Ok(false), "no rmp.bin");
    assert_eq!(std::fs::read(to.join("ram.img")).unwrap(), b"ram");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&to);
}
