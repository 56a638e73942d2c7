//! `tiommu walk`: translate IOVAs through AMD-Vi tables found in a raw memory image, for bring-up
//! debugging of dumped memory. One JSON object per IOVA, in order, one per line.
//!
//! Choices: the device table is taken as the largest the register allows (65536 DTEs), so any DTE
//! in the image is read and one outside it is DEV_TAB_HARDWARE_ERROR; `--devtab` must be page
//! aligned (a register value with its Size bits is refused, not truncated); the image is read
//! with pread, only where the walk goes, and never written; each IOVA is translated on its own,
//! uncached, as `amdvi::translate` does.
// An offline tool over a memory image the user names.
#![allow(clippy::arithmetic_side_effects)]

use iommu_model::amdvi::dte::DevTabBase;
use iommu_model::amdvi::{translate, Outcome};
use iommu_model::mem::{MemError, PhysMem};
use iommu_model::walk::Access;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Raw memory image (e.g. a dump of guest RAM).
    #[arg(long)]
    image: PathBuf,
    /// Physical address of the image's first byte (hex, 0x...).
    #[arg(long, value_parser = parse_hex, default_value = "0x0")]
    image_base: u64,
    /// Device table address, 4 KiB aligned: the Device Table Base register's bits 51:12 (hex, 0x...).
    #[arg(long, value_parser = parse_devtab)]
    devtab: u64,
    /// Requester: bus:dev.fn in hex (00:03.0) or a plain hex 16-bit id.
    #[arg(long, value_parser = parse_bdf)]
    devid: u16,
    /// Translate as DMA writes (default: reads).
    #[arg(long)]
    write: bool,
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

/// `bus:dev.fn` (hex) or a 16-bit hex id, with or without 0x.
pub fn parse_bdf(s: &str) -> Result<u16, String> {
    let bad = || format!("'{s}' is not bus:dev.fn or a 16-bit hex id");
    if let Some((bus, rest)) = s.split_once(':') {
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32).ok_or_else(bad)?;
        let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8).ok_or_else(bad)?;
        return Ok(u16::from(bus) << 8 | u16::from(dev) << 3 | u16::from(func));
    }
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u16::from_str_radix(digits, 16).map_err(|_| bad())
}

/// The image as physical memory, read with pread: nothing is loaded that the walk does not touch.
struct ImageMem {
    file: File,
    base: u64,
    len: u64,
}

impl PhysMem for ImageMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let err = MemError { addr, len: buf.len() };
        let off = addr.checked_sub(self.base).ok_or(err)?;
        let end = off.checked_add(buf.len() as u64).ok_or(err)?;
        if end > self.len {
            return Err(err);
        }
        self.file.read_exact_at(buf, off).map_err(|_| err)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        Err(MemError { addr, len: data.len() })
    }
}

pub fn run(args: Args) -> Result<(), String> {
    let file = File::open(&args.image).map_err(|e| format!("cannot open image {}: {e}", args.image.display()))?;
    let meta = file.metadata().map_err(|e| format!("cannot read image {}: {e}", args.image.display()))?;
    if !meta.is_file() {
        return Err(format!("image {} is not a regular file", args.image.display()));
    }
    let mem = ImageMem { file, base: args.image_base, len: meta.len() };
    // The Size field is not in the command line: allow the largest table (65536 entries); a DTE
    // outside the image reads as DEV_TAB_HARDWARE_ERROR.
    let devtab = DevTabBase(args.devtab | 0x1ff);
    let access = if args.write { Access::Write } else { Access::Read };
    let mut out = std::io::stdout().lock();
    for iova in args.iova {
        let line = match translate(&mem, devtab, args.devid, iova, access) {
            Outcome::Ok(t) => format!(
                r#"{{"iova":"{iova:#x}","result":"ok","spa":"{:#x}","page_size":{},"read":{},"write":{}}}"#,
                t.spa,
                t.page_size(),
                t.perm.read,
                t.perm.write
            ),
            Outcome::Fault { event, level: Some(level), .. } => {
                format!(r#"{{"iova":"{iova:#x}","result":"fault","event":"{}","level":{level}}}"#, event.name())
            }
            Outcome::Fault { event, level: None, .. } => {
                format!(r#"{{"iova":"{iova:#x}","result":"fault","event":"{}"}}"#, event.name())
            }
        };
        writeln!(out, "{line}").map_err(|e| format!("cannot write output: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_forms() {
        assert_eq!(parse_bdf("00:03.0"), Ok(0x18));
        assert_eq!(parse_bdf("1f:1f.7"), Ok(0x1fff));
        assert_eq!(parse_bdf("0x18"), Ok(0x18));
        assert_eq!(parse_bdf("ffff"), Ok(0xffff));
        assert!(parse_bdf("00:20.0").is_err());
        assert!(parse_bdf("00:03.8").is_err());
        assert!(parse_bdf("10000").is_err());
        assert!(parse_bdf("zz").is_err());
    }

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
