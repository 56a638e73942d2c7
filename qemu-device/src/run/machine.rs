//! The one description of a tiommu machine: which functions the daemon serves, the QEMU
//! arguments that attach them, the ACPI tables and the kernel command line that go with them.
//! `tiommu run` boots it; `tiommu qemu-args` prints it for a command line of the user's own.

// The default slots of the secure IOMMU function, the DMA endpoint, the virtio-iommu and the IOAT
// engine.
use abi::pci::{ENDPOINT, IOAT, SECURE_IOMMU, VIRTIO_IOMMU};
use abi::Bdf;
use std::path::Path;

/// Who translates the endpoint's DMA in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The guest program drives the secure IOMMU's AMD-Vi registers itself.
    Plain,
    /// Linux's virtio_iommu on the daemon's virtio-iommu at 00:05.0 (ACPI VIOT).
    VirtioIommu,
    /// The virtio-iommu attached with no driver and no VIOT (for the hostile driver).
    VirtioIommuRaw,
    /// Linux's amd_iommu on the secure IOMMU function (ACPI IVRS).
    AmdIommu,
    /// Linux's intel_iommu on the daemon's VT-d unit (ACPI DMAR).
    IntelIommu,
}

impl Mode {
    /// The mode the command-line flags choose (clap lets at most one be set).
    pub fn of_flags(virtio_iommu: bool, amd_iommu: bool, intel_iommu: bool) -> Mode {
        if virtio_iommu {
            Mode::VirtioIommu
        } else if amd_iommu {
            Mode::AmdIommu
        } else if intel_iommu {
            Mode::IntelIommu
        } else {
            Mode::Plain
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Personality {
    SevTio,
    TdxConnect,
}

/// Where the functions sit on the root bus. Everything that names one (the -device address, the
/// IVRS, DMAR and VIOT, the daemon's --endpoint-bdf and --ioat-bdf) takes it from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    pub iommu: Bdf,
    pub endpoint: Bdf,
    pub viommu: Bdf,
    pub ioat: Bdf,
}

impl Default for Slots {
    fn default() -> Self {
        Slots { iommu: SECURE_IOMMU.bdf, endpoint: ENDPOINT.bdf, viommu: VIRTIO_IOMMU.bdf, ioat: IOAT.bdf }
    }
}

impl Slots {
    /// The four functions in consecutive slots from `first` on, in the default order (the
    /// default is `first` = 3): for a command line whose own devices already take slots 3 to 6,
    /// as virtme-ng's do.
    pub fn from_first(first: u8) -> Result<Slots, String> {
        // Slot 0 is q35's host bridge and 0x1f its ICH9 functions.
        if !(1..=0x1b).contains(&first) {
            return Err(format!("--first-slot takes 0x1 to 0x1b (four slots from it, below q35's ICH9 at 0x1f), not {first:#x}"));
        }
        let at = |i: u8| Bdf::new(0, first + i, 0);
        Ok(Slots { iommu: at(0), endpoint: at(1), viommu: at(2), ioat: at(3) })
    }
}

#[derive(Clone, Debug)]
pub struct Machine {
    pub mode: Mode,
    pub ioat: bool,
    pub personality: Personality,
    pub kvm: bool,
    pub smp: u32,
    /// Guest RAM as QEMU's -m takes it ("512M", "2G").
    pub memory: String,
    /// Where the firmware puts 00:03.0's BAR0 (amd_iommu and intel_iommu modes: the IVRS or DMAR
    /// names it).
    pub bar0: Option<u64>,
    /// The daemon's control socket on the guest's ttyS2 (fault injection).
    pub inject: bool,
    /// /init asks the daemon for a dump over the same channel after the scenarios.
    pub dump: bool,
    /// QEMU without its default devices (the runner's machine; a command line of the user's
    /// keeps them: its console, its NIC).
    pub nodefaults: bool,
    pub slots: Slots,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            mode: Mode::Plain,
            ioat: false,
            personality: Personality::SevTio,
            kvm: false,
            smp: 1,
            memory: "512M".into(),
            bar0: None,
            inject: false,
            dump: false,
            nodefaults: false,
            slots: Slots::default(),
        }
    }
}

/// An ACPI table QEMU loads with -acpitable file=NAME.
pub struct AcpiTable {
    pub file: &'static str,
    pub bytes: Vec<u8>,
}

impl Machine {
    /// Checks the combination, as a user reads it.
    pub fn validate(&self) -> Result<(), String> {
        if self.personality == Personality::TdxConnect && self.mode != Mode::Plain {
            return Err("--personality tdx-connect drives the VT-d unit from the guest program; it cannot take a kernel IOMMU driver (--virtio-iommu, --amd-iommu, --intel-iommu)".into());
        }
        if !(1..=8).contains(&self.smp) {
            return Err(format!("--smp takes 1 to 8, not {}", self.smp));
        }
        parse_memory(&self.memory)?;
        Ok(())
    }

    pub fn needs_bar0(&self) -> bool {
        matches!(self.mode, Mode::AmdIommu | Mode::IntelIommu)
    }

    /// The daemon's options that choose its functions (the BAR0 probe's daemon serves the same).
    pub fn daemon_functions(&self) -> Vec<String> {
        let mut a = vec!["--endpoint-bdf".to_string(), self.slots.endpoint.to_string()];
        if matches!(self.mode, Mode::VirtioIommu | Mode::VirtioIommuRaw) {
            a.push("--virtio-iommu".into());
        }
        if self.mode == Mode::IntelIommu {
            a.extend(["--iommu".into(), "vtd".into()]);
        }
        if self.ioat {
            a.extend(["--ioat".into(), "--ioat-bdf".into(), self.slots.ioat.to_string()]);
        }
        if self.personality == Personality::TdxConnect {
            a.extend(["--personality".into(), "tdx-connect".into()]);
        }
        a
    }

    /// The sockets the daemon makes in its socket directory, that QEMU connects to.
    pub fn sockets(&self) -> Vec<&'static str> {
        let mut s = vec!["iommu.sock", "endpoint.sock"];
        if matches!(self.mode, Mode::VirtioIommu | Mode::VirtioIommuRaw) {
            s.push("virtio-iommu.sock");
        }
        if self.ioat {
            s.push("ioat.sock");
        }
        s
    }

    /// The functions behind the IOMMU the kernel drives (the ACPI table lists them).
    fn endpoints(&self) -> Vec<u16> {
        let mut e = vec![self.slots.endpoint.0];
        if self.ioat {
            e.push(self.slots.ioat.0);
        }
        e
    }

    /// The ACPI table of this mode, if any.
    pub fn acpi_table(&self) -> Result<Option<AcpiTable>, String> {
        let need_bar0 = || self.bar0.ok_or_else(|| format!("the IVRS and DMAR need {}'s BAR0 address", self.slots.iommu));
        Ok(match self.mode {
            Mode::Plain | Mode::VirtioIommuRaw => None,
            Mode::VirtioIommu => {
                Some(AcpiTable { file: "viot.bin", bytes: crate::tools::viot::table(self.slots.viommu.0, &self.endpoints()) })
            }
            Mode::AmdIommu => {
                Some(AcpiTable { file: "ivrs.bin", bytes: crate::tools::ivrs::table(self.slots.iommu.0, need_bar0()?, &self.endpoints()) })
            }
            Mode::IntelIommu => Some(AcpiTable { file: "dmar.bin", bytes: crate::tools::dmar::table(need_bar0()?, &self.endpoints()) }),
        })
    }

    /// The machine and the daemon's functions: `sock_dir` is where QEMU finds the sockets,
    /// `file_dir` where it finds the ACPI table (both as QEMU sees them).
    pub fn machine_args(&self, sock_dir: &str, file_dir: &str) -> Vec<String> {
        let accel = match (self.kvm, self.smp) {
            (true, _) => "kvm",
            (false, 1) => "tcg",
            // More than one vCPU under TCG: one host thread per vCPU (MTTCG), so they really
            // run at once.
            (false, _) => "tcg,thread=multi",
        };
        let mut a: Vec<String> = vec![
            "-machine".into(),
            "q35,memory-backend=mem".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            self.smp.to_string(),
            "-m".into(),
            self.memory.clone(),
            // Guest RAM shared: QEMU's vfio-user client passes it to the daemon as file
            // descriptors.
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={},share=on", self.memory),
            "-device".into(),
            device("tiommu-iommu", self.slots.iommu, &format!("{sock_dir}/iommu.sock"), r#","x-no-posted-writes":true"#),
            "-device".into(),
            device("tiommu-endpoint", self.slots.endpoint, &format!("{sock_dir}/endpoint.sock"), ""),
        ];
        if self.nodefaults {
            // No NIC (and no iPXE option ROM for SeaBIOS to load), no VGA, no CD-ROM: the serial
            // ports and devices are the ones named. The BAR0 probe boots the same list.
            a.insert(2, "-nodefaults".into());
        }
        if matches!(self.mode, Mode::VirtioIommu | Mode::VirtioIommuRaw) {
            a.extend(["-device".into(), device("tiommu-viommu", self.slots.viommu, &format!("{sock_dir}/virtio-iommu.sock"), "")]);
        }
        if self.mode == Mode::VirtioIommu {
            a.extend(["-acpitable".into(), format!("file={file_dir}/viot.bin")]);
        }
        if self.ioat {
            a.extend(["-device".into(), device("tiommu-ioat", self.slots.ioat, &format!("{sock_dir}/ioat.sock"), "")]);
        }
        a
    }

    /// The ACPI table that must wait for the BAR0 probe (IVRS, DMAR), as QEMU arguments.
    pub fn late_acpi_args(&self, file_dir: &str) -> Vec<String> {
        match self.mode {
            Mode::AmdIommu => vec!["-acpitable".into(), format!("file={file_dir}/ivrs.bin")],
            Mode::IntelIommu => vec!["-acpitable".into(), format!("file={file_dir}/dmar.bin")],
            _ => vec![],
        }
    }

    /// The daemon's control socket on the guest's ttyS2 (after the console and the results port).
    pub fn inject_args(&self, sock_dir: &str) -> Vec<String> {
        if !self.inject && !self.dump {
            return vec![];
        }
        vec!["-chardev".into(), format!("socket,id=inject,path={sock_dir}/control.sock"), "-serial".into(), "chardev:inject".into()]
    }

    /// What the kernel command line needs for this mode (the `tiommu.*` words tell the guest
    /// program and /init which mode they are in).
    pub fn kernel_cmdline(&self) -> Vec<String> {
        let mut c: Vec<String> = Vec::new();
        let unsafe_irqs = ["vfio_iommu_type1.allow_unsafe_interrupts=1", "iommufd.allow_unsafe_interrupts=1"];
        if self.personality == Personality::TdxConnect {
            c.push("tiommu.personality=tdx-connect".into());
        }
        match self.mode {
            Mode::Plain => {}
            Mode::VirtioIommuRaw => c.push("tiommu.viommu=raw".into()),
            Mode::VirtioIommu => {
                c.push("tiommu.viommu=1".into());
                c.extend(unsafe_irqs.map(String::from));
            }
            // No interrupt remapping is modelled; with it on, amd_iommu maps the registers before
            // PCI enumeration and the PCI core may move the BAR under it.
            Mode::AmdIommu => {
                c.extend(["intremap=off", "amd_iommu_dump", "tiommu.amdvi=1"].map(String::from));
                if let Some(b) = self.bar0 {
                    c.push(format!("tiommu.ivrs_mmio={b:#x}"));
                }
                c.extend(unsafe_irqs.map(String::from));
            }
            Mode::IntelIommu => {
                c.extend(["intel_iommu=on", "intremap=off", "tiommu.vtd=1"].map(String::from));
                if let Some(b) = self.bar0 {
                    c.push(format!("tiommu.dmar_mmio={b:#x}"));
                }
                c.extend(unsafe_irqs.map(String::from));
            }
        }
        if self.inject {
            c.push("tiommu.inject=1".into());
        }
        if self.dump {
            c.push("tiommu.dump=1".into());
        }
        c
    }

    /// The modules /init loads for this mode, when the kernel has them as modules.
    pub fn modules(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if matches!(self.mode, Mode::VirtioIommu | Mode::AmdIommu | Mode::IntelIommu) {
            if self.mode == Mode::VirtioIommu {
                m.push("virtio_iommu");
            }
            // VFIO type1 and vfio-pci, for the scenario that maps user memory through the
            // kernel's VFIO; KVM (TCG's -cpu max has SVM) for the guest_memfd scenario.
            m.extend(["vfio_iommu_type1", "vfio_pci", "kvm_amd"]);
        }
        // After virtio_iommu: with the VIOT naming it, the engine's probe waits for its IOMMU.
        if self.ioat {
            m.push("ioatdma");
        }
        m
    }
}

/// One vfio-user-pci function as QEMU's JSON -device syntax, in `slot` of the root bus.
pub fn device(id: &str, slot: Bdf, socket: &str, extra: &str) -> String {
    let sock = serde_json::to_string(socket).unwrap_or_default();
    let addr = format!("{:02x}.{}", slot.dev(), slot.func());
    format!(r#"{{"driver":"vfio-user-pci","id":"{id}","addr":"{addr}","socket":{{"type":"unix","path":{sock}}}{extra}}}"#)
}

/// "512M", "2G", "1024" (MiB, as QEMU's -m) into bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bad = || format!("memory size '{s}': give it as QEMU's -m does (512M, 2G)");
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'M' | 'm')) => (&s[..i], 1u64 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some(_) => (s, 1 << 20),
        None => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if bytes < 128 << 20 {
        return Err(format!("memory size '{s}': the guest needs at least 128M (32 huge pages and the initramfs)"));
    }
    Ok(bytes)
}

/// Writes the mode's ACPI table into `dir`; returns its path.
pub fn write_acpi_table(m: &Machine, dir: &Path) -> Result<Option<std::path::PathBuf>, String> {
    match m.acpi_table()? {
        None => Ok(None),
        Some(t) => {
            let p = dir.join(t.file);
            std::fs::write(&p, &t.bytes).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            Ok(Some(p))
        }
    }
}

/// A word as a POSIX shell reads it back: as is when it is safe, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn shell_line<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| shell_quote(w.as_ref())).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_devices(args: &[String]) -> Vec<serde_json::Value> {
        args.windows(2).filter(|w| w[0] == "-device").map(|w| serde_json::from_str(&w[1]).unwrap()).collect()
    }

    #[test]
    fn every_mode_attaches_the_sockets_the_daemon_makes() {
        for mode in [Mode::Plain, Mode::VirtioIommu, Mode::VirtioIommuRaw, Mode::AmdIommu, Mode::IntelIommu] {
            for ioat in [false, true] {
                let m = Machine { mode, ioat, bar0: Some(0xfebd_4000), ..Machine::default() };
                let devs = json_devices(&m.machine_args("/s", "/f"));
                let paths: Vec<String> = devs.iter().map(|d| d["socket"]["path"].as_str().unwrap().to_string()).collect();
                let want: Vec<String> = m.sockets().iter().map(|s| format!("/s/{s}")).collect();
                assert_eq!(paths, want, "{mode:?} ioat={ioat}");
                assert!(devs.iter().all(|d| d["driver"] == "vfio-user-pci"));
                assert_eq!(devs[0]["x-no-posted-writes"], true, "the secure IOMMU's registers are written in order");
                let slots: Vec<&str> = devs.iter().map(|d| d["addr"].as_str().unwrap()).collect();
                let want = [
                    ["03.0", "04.0"].as_slice(),
                    if m.sockets().contains(&"virtio-iommu.sock") { &["05.0"] } else { &[] },
                    if ioat { &["06.0"] } else { &[] },
                ]
                .concat();
                assert_eq!(slots, want, "the slots IVRS, DMAR and VIOT name");
            }
        }
    }

    #[test]
    fn first_slot_moves_every_name_of_the_functions() {
        let slots = Slots::from_first(0x10).unwrap();
        let m = Machine { mode: Mode::VirtioIommu, ioat: true, slots, ..Machine::default() };
        let addrs: Vec<String> =
            json_devices(&m.machine_args("/s", "/f")).iter().map(|d| d["addr"].as_str().unwrap().to_string()).collect();
        assert_eq!(addrs, ["10.0", "11.0", "12.0", "13.0"]);
        assert_eq!(m.daemon_functions().join(" "), "--endpoint-bdf 00:11.0 --virtio-iommu --ioat --ioat-bdf 00:13.0");
        assert_eq!(m.endpoints(), [0x88, 0x98]);
        // The IVHD's DeviceID (IVRS header 48 bytes, then the IVHD's type, flags and length).
        let ivrs =
            |m: &Machine| Machine { mode: Mode::AmdIommu, bar0: Some(0xfebd_4000), ..m.clone() }.acpi_table().unwrap().unwrap().bytes;
        assert_eq!(ivrs(&Machine::default())[52..54], 0x18u16.to_le_bytes(), "00:03.0 by default");
        assert_eq!(ivrs(&m)[52..54], 0x80u16.to_le_bytes(), "00:10.0");
        assert_eq!(Slots::from_first(3).unwrap(), Slots::default(), "the default slots are the first-slot 3 layout");
        assert!(Slots::from_first(0).is_err() && Slots::from_first(0x1c).is_err(), "the host bridge and ICH9's slots");
    }

    #[test]
    fn the_acpi_table_names_the_functions_and_bar0() {
        let m = Machine { mode: Mode::AmdIommu, ioat: true, bar0: Some(0xfebd_4000), ..Machine::default() };
        let t = m.acpi_table().unwrap().unwrap();
        assert_eq!(t.file, "ivrs.bin");
        assert_eq!(&t.bytes[..4], b"IVRS");
        assert!(t.bytes.windows(8).any(|w| w == 0xfebd_4000u64.to_le_bytes()), "the IVHD's base address");
        assert!(m.kernel_cmdline().contains(&"tiommu.ivrs_mmio=0xfebd4000".to_string()));
        assert!(m.late_acpi_args("/f").contains(&"file=/f/ivrs.bin".to_string()));
        let m = Machine { mode: Mode::IntelIommu, bar0: None, ..Machine::default() };
        assert!(m.acpi_table().is_err(), "no DMAR without the BAR0 address");
        let m = Machine { mode: Mode::VirtioIommu, ..Machine::default() };
        assert_eq!(&m.acpi_table().unwrap().unwrap().bytes[..4], b"VIOT");
        assert!(m.machine_args("/s", "/f").contains(&"file=/f/viot.bin".to_string()));
        assert!(Machine { mode: Mode::VirtioIommuRaw, ..Machine::default() }.acpi_table().unwrap().is_none(), "raw: no VIOT");
    }

    #[test]
    fn daemon_options_match_the_mode() {
        let m = Machine { mode: Mode::IntelIommu, ioat: true, ..Machine::default() };
        assert_eq!(m.daemon_functions().join(" "), "--endpoint-bdf 00:04.0 --iommu vtd --ioat --ioat-bdf 00:06.0");
        let m = Machine { personality: Personality::TdxConnect, ..Machine::default() };
        assert!(m.daemon_functions().ends_with(&["--personality".into(), "tdx-connect".into()]));
        assert!(m.kernel_cmdline().contains(&"tiommu.personality=tdx-connect".into()));
        assert!(Machine { personality: Personality::TdxConnect, mode: Mode::AmdIommu, ..Machine::default() }.validate().is_err());
    }

    #[test]
    fn smp_memory_and_accel() {
        let a = Machine { smp: 2, memory: "1G".into(), nodefaults: true, ..Machine::default() }.machine_args("/s", "/f");
        let s = a.join(" ");
        assert!(s.contains("-machine q35,memory-backend=mem -nodefaults -accel tcg,thread=multi -cpu max -smp 2 -m 1G"), "{s}");
        assert!(s.contains("memory-backend-memfd,id=mem,size=1G,share=on"), "{s}");
        assert!(Machine { smp: 9, ..Machine::default() }.validate().is_err());
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert_eq!(parse_memory("512"), Ok(512 << 20));
        assert!(parse_memory("64M").is_err());
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn shell_quoting_reads_back() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(shell_quote(r#"{"a":1}"#), r#"'{"a":1}'"#);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let line = shell_line(&["printf", "%s|", "a b", r#"{"x":"y"}"#, "it's", ""]);
        let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), r#"a b|{"x":"y"}|it's||"#);
    }
}
