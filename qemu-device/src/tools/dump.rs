//! `tiommu dump`: have a running daemon write guest RAM, its IOMMU's registers and the RMP
//! (daemon/dump.rs), then move the files where the user wants them; and the dump's format, which
//! `tiommu walk --dump DIR` (or `--regs FILE`) reads.
//!
//! A dump directory holds:
//! - `ram.img`: guest RAM as the daemon sees it (QEMU's DMA regions), at file offset = guest
//!   physical address; sparse (pages of zeros are holes);
//! - `regs.json`: `"format"`, `"ram"` (the regions, `{"gpa","size"}` in hex: the parts of the
//!   image that are RAM), `"iommu"` (`"kind"` amd-vi or vt-d and the unit's registers by name, hex
//!   strings), `"snp"` (`"enabled"`, and with SNP on the RMP file's name, `"pages"`, RMP_BASE and
//!   RMP_END);
//! - `rmp.bin` with SNP on: the RMP as it lies from RMP_BASE (16 KiB of bookkeeping, then one
//!   16-byte entry per 4 KiB page, AMD APM vol. 2 §15.36.3 as Linux's `struct rmpentry_raw` reads
//!   it).

// An offline tool over files the user names.
#![allow(clippy::arithmetic_side_effects)]

use crate::daemon::control::exchange;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "tiommu-dump 1";
pub const IMAGE: &str = "ram.img";
pub const REGS: &str = "regs.json";
pub const RMP: &str = "rmp.bin";

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's --socket-dir (its control.sock).
    #[arg(long)]
    socket_dir: PathBuf,
    /// Where the dump goes: a directory that does not exist yet or is empty (default: dump/ in
    /// the socket directory, where the daemon writes it).
    dir: Option<PathBuf>,
}

/// What `tiommu walk` needs from a dump's regs.json.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// The RAM regions: (guest physical address, size).
    pub ram: Vec<(u64, u64)>,
    /// The image, relative paths taken from the regs file's directory.
    pub image: Option<PathBuf>,
    /// "amd-vi" or "vt-d".
    pub iommu: String,
    /// AMD-Vi: the Device Table Base register, Size bits and all.
    pub dev_tab_base: Option<u64>,
    /// AMD-Vi: the Control register.
    pub control: Option<u64>,
    /// With SNP on: the RMP file.
    pub rmp: Option<PathBuf>,
}

fn hex_field(v: &Value, what: &str) -> Result<u64, String> {
    let s = v.as_str().ok_or(format!("{what}: not a hex string"))?;
    let digits = s.strip_prefix("0x").ok_or(format!("{what}: {s:?} is not hex with 0x"))?;
    u64::from_str_radix(digits, 16).map_err(|_| format!("{what}: {s:?} is not a 64-bit hex number"))
}

/// Read a dump's regs.json.
pub fn read_regs(path: &Path) -> Result<Regs, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let bad = |e: String| format!("{}: {e}", path.display());
    if v["format"] != FORMAT {
        return Err(bad(format!("not a tiommu dump (\"format\" is {}, not \"{FORMAT}\")", v["format"])));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = |name: &Value| name.as_str().map(|n| dir.join(n));
    let mut regs = Regs { image: file(&v["image"]), ..Regs::default() };
    for r in v["ram"].as_array().ok_or_else(|| bad("no \"ram\" list".into()))? {
        regs.ram.push((hex_field(&r["gpa"], "ram gpa").map_err(bad)?, hex_field(&r["size"], "ram size").map_err(bad)?));
    }
    regs.iommu = v["iommu"]["kind"].as_str().unwrap_or("").to_string();
    if regs.iommu == "amd-vi" {
        let a = &v["iommu"]["amdvi"];
        regs.dev_tab_base = Some(hex_field(&a["dev_tab_base"], "dev_tab_base").map_err(bad)?);
        regs.control = Some(hex_field(&a["control"], "control").map_err(bad)?);
    }
    if v["snp"]["enabled"] == true {
        regs.rmp = file(&v["snp"]["rmp"]);
    }
    Ok(regs)
}

/// `tiommu dump`: ask the daemon, then move its files into DIR.
pub fn run(a: Args) -> Result<(), String> {
    if let Some(dir) = &a.dir {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(format!("{} is not empty (a dump goes into a new or empty directory)", dir.display()));
        }
    }
    let answer = exchange(&a.socket_dir.join("control.sock"), &json!({"cmd": "dump"}))?;
    if answer["ok"] != true {
        return Err(format!("refused: {}", answer["error"].as_str().unwrap_or("no reason given")));
    }
    let from = PathBuf::from(answer["dir"].as_str().ok_or("the daemon's answer names no directory")?);
    let to = match &a.dir {
        None => from.clone(),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for f in answer["files"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                move_file(&from.join(f), &dir.join(f))?;
            }
            let _ = std::fs::remove_dir(&from);
            dir.clone()
        }
    };
    let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64;
    eprintln!(
        "tiommu dump: {} MiB of guest RAM ({} MiB not zero), registers{} in {}",
        mib(&answer["ram_bytes"]),
        mib(&answer["written_bytes"]).round(),
        if answer["files"].as_array().is_some_and(|f| f.iter().any(|f| f == RMP)) { " and the RMP" } else { "" },
        to.display()
    );
    println!("{}", to.display());
    Ok(())
}

/// Rename, or across file systems copy (keeping the image's holes) and remove.
fn move_file(from: &Path, to: &Path) -> Result<(), String> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut src = File::open(from).map_err(|e| err(from, e))?;
    let mut dst = File::create(to).map_err(|e| err(to, e))?;
    let len = src.metadata().map_err(|e| err(from, e))?.len();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = src.read(&mut buf).map_err(|e| err(from, e))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(n as i64)).map_err(|e| err(to, e))?;
        } else {
            dst.write_all(&buf[..n]).map_err(|e| err(to, e))?;
        }
    }
    dst.set_len(len).map_err(|e| err(to, e))?;
    std::fs::remove_file(from).map_err(|e| err(from, e))
}
