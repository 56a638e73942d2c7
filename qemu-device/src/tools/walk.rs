//! `tiommu walk`: translate IOVAs through AMD-Vi tables found in a raw memory image, for bring-up
//! debugging of dumped memory. One JSON object per IOVA, in order, one per line; with `--trace`,
//! one line per table entry read before each IOVA's result line; with `--rmp`, the translated
//! page's RMP entry and the SEV-TIO check of a T=0 request in the result line.
//!
//! Choices: with `--devtab` the device table is taken as the largest the register allows (65536
//! DTEs); with `--regs` (a `tiommu dump`) the register's own Size is used, and only the RAM
//! regions it lists are memory. `--devtab` must be page aligned (a register value with its Size
//! bits is refused, not truncated). A table entry outside the image (or outside the dump's RAM)
//! is not something the image can answer: its IOVA's line says `"result":"outside_image"`, a
//! message says where, and the exit status is 1 once every IOVA has its line. A DTE with V=0 is
//! what the IOMMU passes through untranslated (IOVA = SPA); the line says so (`"dte_valid":false`)
//! and a warning goes to stderr. The image is read with pread, only where the walk goes, and never
//! written; each IOVA is translated on its own, uncached, as `amdvi::translate` does.
// An offline tool over a memory image the user names.
#![allow(clippy::arithmetic_side_effects)]

use crate::tools::dump::{self, Regs};
use abi::Bdf;
use iommu_model::amdvi::dte::{self, DevTabBase, Dte, DteFetchError};
use iommu_model::amdvi::event::{self, Event};
use iommu_model::amdvi::translate::translate_with_dte_traced;
use iommu_model::amdvi::{mmio, translate, Outcome};
use iommu_model::fmt::amdv1;
use iommu_model::mem::{MemError, PhysMem};
use iommu_model::walk::{Access, Entry, Step};
use rmp_model::{DmaRequest, Rmp};
use serde_json::{json, Value};
use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "A dump of a running guest (`scripts/run-vm --dump DIR`, or `tiommu dump` against a running daemon) \
gives the image, the registers and the RMP in one directory: tiommu walk --dump DIR --devid 00:04.0 --iova 0x1000 --trace \
(docs/amd-vi.md, \"Walking a dump\").")]
pub struct Args {
    /// A `tiommu dump` directory: its ram.img, regs.json and (with SNP on) rmp.bin, as --image,
    /// --regs and --rmp.
    #[arg(long, conflicts_with_all = ["image", "regs", "devtab"])]
    dump: Option<PathBuf>,
    /// Raw memory image (e.g. a dump of guest RAM).
    #[arg(long, required_unless_present_any = ["dump", "regs"])]
    image: Option<PathBuf>,
    /// Physical address of the image's first byte (hex, 0x...).
    #[arg(long, value_parser = parse_hex, default_value = "0x0")]
    image_base: u64,
    /// Device table address, 4 KiB aligned: the Device Table Base register's bits 51:12 (hex, 0x...).
    #[arg(long, value_parser = parse_devtab, required_unless_present_any = ["dump", "regs"], conflicts_with = "regs")]
    devtab: Option<u64>,
    /// A dump's regs.json instead of --devtab: the Device Table Base register (with its Size),
    /// the RAM regions of the image, and the image itself unless --image names another.
    #[arg(long)]
    regs: Option<PathBuf>,
    /// Requester: bus:dev.fn (00:04.0) or a 16-bit hex id with 0x (0x20).
    #[arg(long)]
    devid: Bdf,
    /// Translate as DMA writes (default: reads).
    #[arg(long)]
    write: bool,
    /// Before each result, one line per table entry read: the DTE and each level's PTE (address,
    /// raw value, fields).
    #[arg(long)]
    trace: bool,
    /// RMP image (bytes from RMP_BASE: 16 KiB bookkeeping, then 16 bytes per 4 KiB page; a dump's
    /// rmp.bin) to check each translated page against, as the IOMMU checks a T=0 request.
    #[arg(long)]
    rmp: Option<PathBuf>,
    /// IOVAs to translate (hex, 0x...); repeat for more.
    #[arg(long, value_parser = parse_hex, required = true)]
    iova: Vec<u64>,
}

fn parse_hex(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).ok_or(format!("'{s}' is not hex with 0x"))?;
    u64::from_str_radix(digits, 16).map_err(|_| format!("'{s}' is not a 64-bit hex number"))
}

/// The register's Size field (bits 8:0) is not taken: a value with low bits set is refused rather
/// than read as some other table.
fn parse_devtab(s: &str) -> Result<u64, String> {
    let addr = parse_hex(s)?;
    if addr & 0xfff != 0 {
        return Err(format!("'{s}' is not 4 KiB aligned (give the table's address, without the Size bits)"));
    }
    if addr >> 52 != 0 {
        return Err(format!("'{s}' is above the 52-bit physical address space"));
    }
    Ok(addr)
}

/// A physical address or size given on the command line: hex with 0x, or decimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s}: {e}"))
}

/// The image as physical memory, read with pread: nothing is loaded that the walk does not touch.
/// With a dump's RAM regions, only they are memory (the image's holes between them are not).
/// `missed` keeps the last read that fell outside.
struct ImageMem {
    file: File,
    base: u64,
    len: u64,
    ram: Vec<(u64, u64)>,
    missed: Cell<Option<MemError>>,
}

impl ImageMem {
    fn inside(&self, addr: u64, n: u64) -> bool {
        let Some(end) = addr.checked_add(n) else { return false };
        let in_file = addr >= self.base && end - self.base <= self.len;
        in_file && (self.ram.is_empty() || self.ram.iter().any(|&(gpa, size)| addr >= gpa && end <= gpa.saturating_add(size)))
    }

    fn describe(&self) -> String {
        if self.ram.is_empty() {
            format!("the image holds {:#x}..{:#x}", self.base, self.base + self.len)
        } else {
            let r: Vec<String> = self.ram.iter().map(|&(gpa, size)| format!("{gpa:#x}..{:#x}", gpa + size)).collect();
            format!("the dump's RAM is {}", r.join(", "))
        }
    }
}

impl PhysMem for ImageMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let err = MemError { addr, len: buf.len() };
        if !self.inside(addr, buf.len() as u64) {
            self.missed.set(Some(err));
            return Err(err);
        }
        self.file.read_exact_at(buf, addr - self.base).map_err(|_| err)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        Err(MemError { addr, len: data.len() })
    }
}

fn hex(v: u64) -> Value {
    format!("{v:#x}").into()
}

/// A JSON object line with its keys in the order given (serde_json's maps sort them): the IOVA
/// first, then what a reader looks for.
type Fields = Vec<(&'static str, Value)>;

fn line(fields: &Fields) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", Value::from(*k))).collect();
    format!("{{{}}}", body.join(","))
}

/// The DTE's fields a walk depends on (spec 48882 Table 7; Linux amd_iommu_types.h DTE_*).
fn dte_trace(iova: u64, addr: u64, d: &Dte) -> Fields {
    vec![
        ("iova", hex(iova)),
        ("trace", "dte".into()),
        ("addr", hex(addr)),
        ("raw", d.0.iter().map(|q| hex(*q)).collect()),
        ("v", d.v().into()),
        ("tv", d.tv().into()),
        ("mode", d.mode().into()),
        ("pt_root", hex(d.pt_root())),
        ("ir", d.ir().into()),
        ("iw", d.iw().into()),
        ("domain_id", d.domain_id().into()),
        ("sa", d.sa().into()),
        ("se", d.se().into()),
        ("gv", d.gv().into()),
    ]
}

/// One v1 page-table entry as the walk read it (spec 48882 §2.2.3 Tables 14 and 15).
fn pte_trace(iova: u64, s: &Step) -> Fields {
    let kind = match s.entry {
        Entry::NotPresent => "not_present",
        Entry::Table { .. } => "table",
        Entry::Page { .. } => "page",
        Entry::Invalid => "invalid",
    };
    let bit = |b: u64| Value::from(s.raw & b != 0);
    let mut v = vec![
        ("iova", hex(iova)),
        ("trace", "pte".into()),
        ("level", s.level.into()),
        ("addr", hex(s.entry_addr)),
        ("raw", hex(s.raw)),
        ("entry", kind.into()),
        ("pr", bit(amdv1::PR)),
        ("next_level", amdv1::next_level(s.raw).into()),
        ("address", hex(s.raw & amdv1::ADDR_MASK)),
        ("ir", bit(amdv1::IR)),
        ("iw", bit(amdv1::IW)),
        ("fc", bit(amdv1::FC)),
        ("u", bit(amdv1::U)),
    ];
    if let Entry::Page { addr, size_log2, .. } = s.entry {
        v.push(("page", hex(addr)));
        v.push(("page_size", (1u64 << size_log2).into()));
    }
    v
}

/// The RMP entry of the page at `spa` and the check a T=0 request gets (rmp-model's rules, the
/// ones the daemon applies to every DMA).
fn rmp_check(rmp: &Rmp, devid: Bdf, iova: u64, spa: u64, write: bool, size_log2: u8) -> Value {
    let pfn = spa >> 12;
    let Some(e) = rmp.entry(pfn) else {
        return json!({"pfn": hex(pfn), "covered": false, "result": "allowed"});
    };
    let req = DmaRequest { requester: devid.0, t: false, tdi: None, iova, spa, write, mapping_size_log2: size_log2 };
    let mut v = json!({
        "pfn": hex(pfn), "covered": true, "assigned": e.assigned, "asid": e.asid, "gpa": hex(e.gpa),
        "page_size": e.page_size.bytes(), "validated": e.validated, "immutable": e.immutable, "vmsa": e.vmsa,
    });
    match rmp.check_dma(&req) {
        Ok(()) => v["result"] = "allowed".into(),
        Err(f) => {
            v["result"] = "refused".into();
            v["event"] = "RMP_PAGE_FAULT".into();
            v["reason"] = f.reason.name().into();
        }
    }
    v
}

fn outcome_fields(o: &Outcome, m: &mut Fields) {
    match o {
        Outcome::Ok(t) => {
            m.push(("result", "ok".into()));
            m.push(("spa", hex(t.spa)));
            m.push(("page_size", t.page_size().into()));
            m.push(("read", t.perm.read.into()));
            m.push(("write", t.perm.write.into()));
        }
        Outcome::Fault { event, level, .. } => {
            m.push(("result", "fault".into()));
            m.push(("event", event.name().into()));
            if let Some(level) = level {
                m.push(("level", (*level).into()));
            }
        }
    }
}

fn is_memory_error(e: &Event) -> bool {
    e.code == event::DEV_TAB_HARDWARE_ERROR || e.code == event::PAGE_TAB_HARDWARE_ERROR
}

pub fn run(args: Args) -> Result<(), String> {
    let mut regs = Regs::default();
    let (mut image, mut regs_path, mut rmp_path) = (args.image.clone(), args.regs.clone(), args.rmp.clone());
    if let Some(d) = &args.dump {
        image = Some(d.join(dump::IMAGE));
        regs_path = Some(d.join(dump::REGS));
    }
    if let Some(p) = &regs_path {
        regs = dump::read_regs(p)?;
        if regs.iommu != "amd-vi" {
            return Err(format!("{}: the dump is of a {} unit; tiommu walk reads AMD-Vi tables", p.display(), regs.iommu));
        }
        image = image.or(regs.image.clone());
        if args.dump.is_some() {
            rmp_path = rmp_path.or(regs.rmp.clone());
        }
    }
    let image = image.ok_or("no image: --image, --regs or --dump")?;
    let file = File::open(&image).map_err(|e| format!("cannot open image {}: {e}", image.display()))?;
    let meta = file.metadata().map_err(|e| format!("cannot read image {}: {e}", image.display()))?;
    if !meta.is_file() {
        return Err(format!("image {} is not a regular file", image.display()));
    }
    let mem = ImageMem { file, base: args.image_base, len: meta.len(), ram: regs.ram.clone(), missed: Cell::new(None) };
    let devtab = match (args.devtab, regs.dev_tab_base) {
        // The Size field is not in the command line: allow the largest table (65536 entries).
        (Some(addr), _) => DevTabBase(addr | 0x1ff),
        (None, Some(reg)) => DevTabBase(reg),
        (None, None) => return Err("no device table: --devtab or a dump's --regs".into()),
    };
    if regs.control.is_some_and(|c| c & mmio::control::IOMMU_EN == 0) {
        eprintln!("tiommu walk: warning: the dump's Control register has IommuEn = 0: the unit was not translating when it was taken");
    }
    let rmp = match &rmp_path {
        Some(p) => Some(Rmp::from_image(&std::fs::read(p).map_err(|e| format!("cannot read RMP {}: {e}", p.display()))?)),
        None => None,
    };
    let access = if args.write { Access::Write } else { Access::Read };
    let devid = args.devid;
    let mut out = std::io::stdout().lock();
    let mut emit = |v: &Fields| writeln!(out, "{}", line(v)).map_err(|e| format!("cannot write output: {e}"));
    let mut outside = 0usize;
    let mut warned_v0 = false;
    for &iova in &args.iova {
        mem.missed.set(None);
        let dte_addr = devtab.base() + u64::from(devid.0) * 32;
        let (outcome, dte) = match dte::fetch(&mem, devtab, devid.0) {
            Ok(d) => {
                if args.trace {
                    emit(&dte_trace(iova, dte_addr, &d))?;
                }
                let mut steps = Vec::new();
                let o = translate_with_dte_traced(&mem, &d, devid.0, iova, access, |s| steps.push(*s));
                for s in steps.iter().filter(|_| args.trace) {
                    emit(&pte_trace(iova, s))?;
                }
                (o, Some(d))
            }
            Err(DteFetchError::OutOfTable | DteFetchError::Memory { .. }) => (translate(&mem, devtab, devid.0, iova, access), None),
        };
        let mut result: Fields = vec![("iova", hex(iova))];
        match (&outcome, mem.missed.take()) {
            (Outcome::Fault { event, level, .. }, Some(miss)) if is_memory_error(event) => {
                outside += 1;
                let what = match level {
                    None => format!("{devid}'s device table entry"),
                    Some(l) => format!("the level-{l} page table entry for {iova:#x}"),
                };
                eprintln!(
                    "tiommu walk: {what} at {:#x} is outside the image ({}): the image cannot say what it holds",
                    miss.addr,
                    mem.describe()
                );
                result.push(("result", "outside_image".into()));
                result.push(("addr", hex(miss.addr)));
                if let Some(l) = level {
                    result.push(("level", (*l).into()));
                }
            }
            _ => outcome_fields(&outcome, &mut result),
        }
        if dte.is_some_and(|d| !d.v()) {
            result.push(("dte_valid", false.into()));
            if !warned_v0 {
                warned_v0 = true;
                eprintln!(
                    "tiommu walk: warning: {devid}'s DTE at {dte_addr:#x} has V=0: the IOMMU does not translate this device, \
                     so its IOVAs are used as SPAs (is --devid or the device table address right?)"
                );
            }
        }
        if let (Some(rmp), Outcome::Ok(t)) = (&rmp, &outcome) {
            result.push(("rmp", rmp_check(rmp, devid, iova, t.spa, args.write, t.size_log2)));
        }
        emit(&result)?;
    }
    if outside > 0 {
        return Err(format!("{outside} of {} IOVAs reached a table outside the image", args.iova.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devtab_is_a_page_address() {
        assert_eq!(parse_devtab("0x80010000"), Ok(0x8001_0000));
        assert!(parse_devtab("0x800101ff").is_err());
        assert!(parse_devtab("0x10000000000000").is_err());
    }

    #[test]
    fn hex_needs_0x() {
        assert_eq!(parse_hex("0x1000"), Ok(0x1000));
        assert!(parse_hex("1000").is_err());
        assert!(parse_hex("0x1_0000_0000_0000_0000").is_err());
    }
}
