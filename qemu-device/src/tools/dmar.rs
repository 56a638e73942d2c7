//! `tiommu dmar`: the ACPI DMA Remapping Reporting table (VT-d spec §8.1) that tells Linux's
//! intel_iommu where the daemon's VT-d unit is and which PCI functions it translates. Read the
//! way drivers/iommu/intel/dmar.c reads it (`parse_dmar_table`, `dmar_walk_remapping_entries`,
//! `dmar_parse_one_drhd`, `dmar_validate_one_drhd`, `dmar_insert_dev_scope`); QEMU takes it with
//! `-acpitable file=FILE`.
//!
//! Layout written: the 48-byte DMAR header (host address width, flags), then one DRHD whose
//! register base is the secure IOMMU function's BAR0, with one PCI endpoint device scope per
//! translated function: never INCLUDE_PCI_ALL, so QEMU's own devices (which nothing translates)
//! stay outside the unit. Flags 0: no interrupt remapping (the unit has none; ECAP.IR 0), no
//! x2APIC opt-out, no platform opt-in.
// An offline tool: lengths of a table built from the command line.
#![allow(clippy::arithmetic_side_effects)]

use crate::tools::walk::parse_u64;
use abi::Bdf;
use iommu_model::vtd::Caps;
use std::path::PathBuf;

pub const HEADER_LEN: usize = 48;
pub const DRHD_LEN: usize = 16;
/// Remapping structure types (Linux include/acpi/actbl1.h ACPI_DMAR_TYPE_*).
pub const TYPE_DRHD: u16 = 0;
/// Device scope entry type: a PCI endpoint (ACPI_DMAR_SCOPE_TYPE_ENDPOINT), 6 bytes plus one
/// (device, function) pair per level of the path from the root bus.
pub const SCOPE_ENDPOINT: u8 = 1;
pub const SCOPE_LEN: usize = 8;

#[derive(clap::Args)]
pub struct Args {
    /// Physical address of the secure IOMMU function's BAR0 (the VT-d registers, `tiommu daemon
    /// --iommu vtd`) as the firmware placed it.
    #[arg(long, value_parser = parse_u64)]
    mmio: u64,
    /// PCI address of a function the unit translates (on the root bus); repeat for more.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<Bdf>,
    /// Where to write the table.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// The whole table for a unit with its registers at `mmio` translating `endpoints` (segment 0,
/// root bus). The host address width is the unit's own (the model checks table addresses
/// against it), so the two cannot disagree.
pub fn table(mmio: u64, endpoints: &[u16]) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(Caps::unit().haw - 1); // Host Address Width: N + 1 bits
    body.push(0); // flags
    body.extend_from_slice(&[0; 10]); // reserved
    let len = DRHD_LEN + SCOPE_LEN * endpoints.len();
    body.extend_from_slice(&TYPE_DRHD.to_le_bytes());
    body.extend_from_slice(&(len as u16).to_le_bytes());
    body.push(0); // flags: not INCLUDE_PCI_ALL
    body.push(0); // size: 2^0 pages of registers (dmar_parse_one_drhd: 1 << (size + 12))
    body.extend_from_slice(&0u16.to_le_bytes()); // PCI segment
    body.extend_from_slice(&mmio.to_le_bytes());
    for &ep in endpoints {
        // Type, length, flags, reserved, enumeration ID (unused for PCI), start bus, then the
        // path: the function itself, on the root bus.
        body.extend_from_slice(&[SCOPE_ENDPOINT, SCOPE_LEN as u8, 0, 0, 0, (ep >> 8) as u8]);
        body.extend_from_slice(&[((ep >> 3) & 0x1f) as u8, (ep & 7) as u8]);
    }
    crate::tools::acpi::table(b"DMAR", 1, b"TIOMMUDR", &body)
}

pub fn run(args: Args) -> Result<(), String> {
    let haw = Caps::unit().haw;
    if args.mmio == 0 || args.mmio & 0xfff != 0 || args.mmio >> haw != 0 {
        return Err(format!("--mmio {:#x}: the BAR0 address must be a non-zero, 4 KiB aligned address below 2^{haw}", args.mmio));
    }
    let endpoints: Vec<u16> = args.endpoints.iter().map(|b| b.0).collect();
    if let Some(ep) = endpoints.iter().find(|&&ep| ep >> 8 != 0) {
        return Err(format!("--endpoint {}: only functions on the root bus (00) can be named", abi::Bdf(*ep)));
    }
    let t = table(args.mmio, &endpoints);
    std::fs::write(&args.output, &t).map_err(|e| format!("cannot write {}: {e}", args.output.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(t: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([t[i], t[i + 1]])
    }

    /// One DRHD as dmar.c keeps it: register base, register size, INCLUDE_ALL, and the
    /// functions its device scopes match.
    #[derive(Debug, PartialEq)]
    struct Drhd {
        base: u64,
        reg_size: u64,
        include_all: bool,
        devices: Vec<u16>,
    }

    /// parse_dmar_table and the device-scope matching, on a table: the checksum, the width
    /// check, the walk over remapping structures (stopping at a zero length, refusing one that
    /// passes the end), the DRHD fields, and for each endpoint scope the (bus, path) that
    /// dmar_match_pci_path compares with a function on the root bus.
    fn parse_as_linux(t: &[u8]) -> (u8, Vec<Drhd>) {
        assert_eq!(t.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0, "checksum");
        assert_eq!(&t[0..4], b"DMAR");
        let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, t.len());
        let width = t[36];
        assert!(width >= 11, "Invalid DMAR haw");
        let mut drhds = Vec::new();
        let mut p = HEADER_LEN;
        while p < len {
            let (kind, slen) = (u16_at(t, p), usize::from(u16_at(t, p + 2)));
            assert_ne!(slen, 0, "0-length structure");
            assert!(p + slen <= len, "Record passes table end");
            if kind == TYPE_DRHD {
                let base = u64::from_le_bytes(t[p + 8..p + 16].try_into().unwrap());
                assert_ne!(base, 0, "dmar_validate_one_drhd: no address");
                let mut devices = Vec::new();
                let mut s = p + DRHD_LEN;
                while s < p + slen {
                    let (stype, sl) = (t[s], usize::from(t[s + 1]));
                    assert_eq!(stype, SCOPE_ENDPOINT, "only endpoint scopes");
                    let levels = (sl - 6) / 2;
                    assert_eq!(levels, 1, "a path of one level: the function on the root bus");
                    let (bus, dev, func) = (t[s + 5], t[s + 6], t[s + 7]);
                    devices.push(u16::from(bus) << 8 | u16::from(dev) << 3 | u16::from(func));
                    s += sl;
                }
                assert_eq!(s, p + slen, "scopes end where the DRHD ends");
                drhds.push(Drhd { base, reg_size: 1 << (t[p + 5] as u64 + 12), include_all: t[p + 4] & 1 != 0, devices });
            }
            p += slen;
        }
        (width, drhds)
    }

    #[test]
    fn linux_reads_one_unit_with_the_endpoints_only() {
        let t = table(0xfebf_0000, &[0x20, 0x28]);
        let (width, drhds) = parse_as_linux(&t);
        assert_eq!(width + 1, 48, "Host address width 48, the unit's");
        assert_eq!(drhds, vec![Drhd { base: 0xfebf_0000, reg_size: 0x1000, include_all: false, devices: vec![0x20, 0x28] }]);
        assert_eq!(t[37], 0, "no INTR_REMAP: the unit has no interrupt remapping");
        // The register page the DRHD names covers every register the unit has (map_iommu).
        assert_eq!(drhds[0].reg_size, iommu_model::vtd::regs::MMIO_SIZE);
        assert_eq!(t.len(), HEADER_LEN + DRHD_LEN + 2 * SCOPE_LEN);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let out = std::env::temp_dir().join(format!("tiommu-dmar-{}", std::process::id()));
        let args = |mmio, endpoints: Vec<u16>| Args { mmio, endpoints: endpoints.into_iter().map(Bdf).collect(), output: out.clone() };
        assert!(run(args(0, vec![0x20])).unwrap_err().contains("non-zero"));
        assert!(run(args(0xfebf_0800, vec![0x20])).is_err(), "not page aligned");
        assert!(run(args(1 << 48, vec![0x20])).is_err(), "above the host address width");
        assert!(run(args(0xfebf_0000, vec![0x0120])).unwrap_err().contains("root bus"));
        run(args(0xfebf_0000, vec![0x20])).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), table(0xfebf_0000, &[0x20]));
        let _ = std::fs::remove_file(&out);
    }
}
