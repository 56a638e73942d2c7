//! Where the firmware puts the secure IOMMU function's BAR0: the IVRS (DMAR) must name the
//! address before the guest boots. A firmware-only boot of the same machine against a daemon of
//! its own, asked over QMP (docs/interop/qmp-spec.rst: greeting, qmp_capabilities, then
//! query-pci until SeaBIOS has enabled 00:03.0's memory decoding), cached by QEMU build and
//! device list.

use super::machine::Machine;
use super::qemu::QemuCmd;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// FNV-1a, 64 bits: a stable cache key (std's hasher may change between releases).
fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

pub fn cache_key(qemu_binary: &Path, machine_args: &[String], daemon_args: &[String]) -> Result<String, String> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let bin = std::fs::read(qemu_binary).map_err(|e| format!("cannot read {}: {e}", qemu_binary.display()))?;
    fnv(&mut h, &bin);
    for a in machine_args.iter().chain(daemon_args) {
        fnv(&mut h, a.as_bytes());
        fnv(&mut h, &[0]);
    }
    Ok(format!("{h:016x}"))
}

/// BAR0's address for `machine`, from the cache or a firmware-only boot in `work`/probe.
pub fn bar0(machine: &Machine, qemu: &QemuCmd, tiommu: &Path, work: &Path, cache: &Path) -> Result<u64, String> {
    let fns = machine.daemon_functions();
    // The key names the sockets by their place in the probe's directory, as every run does.
    let key = cache_key(&qemu.binary_on_host(), &machine.machine_args("SOCKETS", "FILES"), &fns)?;
    let entry = cache.join("bar0-probe").join(&key);
    if let Ok(s) = std::fs::read_to_string(&entry) {
        if let Ok(a) = crate::tools::walk::parse_u64(s.trim()) {
            return Ok(a);
        }
    }
    let pdir = work.join("probe");
    std::fs::create_dir_all(&pdir).map_err(|e| format!("cannot make {}: {e}", pdir.display()))?;
    let log = std::fs::File::create(pdir.join("daemon.log")).map_err(|e| e.to_string())?;
    let mut daemon = std::process::Command::new(tiommu)
        .arg("daemon")
        .arg("--socket-dir")
        .arg(&pdir)
        .arg("--events")
        .arg(pdir.join("events.jsonl"))
        .args(&fns)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", tiommu.display()))?;
    let result = (|| {
        super::wait_for_sockets(&pdir, &machine.sockets(), &mut daemon, Duration::from_secs(5))?;
        let inq = qemu.dir_in_qemu();
        let mut args = machine.machine_args(&format!("{inq}/probe"), &inq);
        args.extend(["-display", "none", "-serial", "none", "-monitor", "none", "-qmp"].map(String::from));
        args.push(format!("unix:{inq}/probe/qmp.sock,server=on,wait=off"));
        let out = std::fs::File::create(pdir.join("qemu.log")).map_err(|e| e.to_string())?;
        let mut q = qemu
            .command(&args, &[])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start QEMU: {e}"))?;
        let r = ask(&pdir.join("qmp.sock"), Duration::from_secs(20), machine.slots.iommu);
        let deadline = Instant::now() + Duration::from_secs(5);
        while q.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        super::kill_group(q.id(), libc::SIGKILL);
        let _ = q.wait();
        r.map_err(|e| {
            let log = std::fs::read_to_string(pdir.join("qemu.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            format!("the firmware-only boot did not show where {}'s BAR0 is ({e}); QEMU said: {}", machine.slots.iommu, tail.join(" | "))
        })
    })();
    let _ = super::signal(daemon.id() as i32, libc::SIGTERM);
    let _ = daemon.wait();
    let addr = result?;
    if std::fs::create_dir_all(entry.parent().unwrap_or(cache)).is_ok() {
        let _ = std::fs::write(&entry, format!("{addr:#x}\n"));
    }
    Ok(addr)
}

/// The QMP conversation: BAR0's address once the firmware has enabled it, then `quit`.
fn ask(sock: &Path, within: Duration, iommu: abi::Bdf) -> Result<u64, String> {
    let deadline = Instant::now() + within;
    let s = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("no QMP socket: {e}")),
        }
    };
    s.set_read_timeout(Some(within)).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("no QMP greeting: {e}"))?;
    let mut cmd = |c: &str| -> Result<serde_json::Value, String> {
        writeln!(w, "{{\"execute\":\"{c}\"}}").map_err(|e| e.to_string())?;
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed".into());
            }
            let v: serde_json::Value = serde_json::from_str(&l).map_err(|e| format!("QMP: {e}"))?;
            if v.get("return").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
        }
    };
    cmd("qmp_capabilities")?;
    while Instant::now() < deadline {
        let v = cmd("query-pci")?;
        if let Some(a) = bar0_in(&v, iommu) {
            let _ = cmd("quit");
            return Ok(a);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = cmd("quit");
    Err(format!("{iommu}'s BAR0 was never enabled"))
}

/// The IOMMU function's region 0 in a query-pci answer, once mapped (an unmapped BAR reads back
/// as -1).
pub fn bar0_in(v: &serde_json::Value, iommu: abi::Bdf) -> Option<u64> {
    for bus in v.get("return")?.as_array()? {
        for d in bus.get("devices")?.as_array()? {
            if d["bus"] == iommu.bus() && d["slot"] == iommu.dev() && d["function"] == iommu.func() {
                for r in d.get("regions")?.as_array()? {
                    if r["bar"] == 0 {
                        let a = r["address"].as_u64()?;
                        if a > 0 && a < 1 << 52 {
                            return Some(a);
                        }
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar0_only_once_mapped() {
        let ans = |addr: i64| {
            serde_json::json!({"return": [{"bus": 0, "devices": [
                {"bus": 0, "slot": 4, "function": 0, "regions": [{"bar": 0, "address": 0xfeb0_0000u64}]},
                {"bus": 0, "slot": 3, "function": 0, "regions": [{"bar": 2, "address": 0x1000}, {"bar": 0, "address": addr}]}]}]})
        };
        let slot3 = abi::pci::SECURE_IOMMU.bdf;
        assert_eq!(bar0_in(&ans(0xfebd_4000), slot3), Some(0xfebd_4000));
        assert_eq!(bar0_in(&ans(0xfebd_4000), abi::Bdf::new(0, 4, 0)), Some(0xfeb0_0000), "the slot asked for");
        assert_eq!(bar0_in(&ans(-1), slot3), None, "an unmapped BAR");
        assert_eq!(bar0_in(&ans(0), slot3), None);
    }

    #[test]
    fn the_key_follows_the_device_list() {
        let bin = std::env::current_exe().unwrap();
        let m = Machine::default();
        let a = cache_key(&bin, &m.machine_args("S", "F"), &m.daemon_functions()).unwrap();
        assert_eq!(a, cache_key(&bin, &m.machine_args("S", "F"), &m.daemon_functions()).unwrap());
        let m2 = Machine { ioat: true, ..Machine::default() };
        assert_ne!(a, cache_key(&bin, &m2.machine_args("S", "F"), &m2.daemon_functions()).unwrap());
    }
}
