//! `tiommu ivrs`: the ACPI I/O Virtualization Reporting Structure (AMD IOMMU spec 48882 §5.2)
//! that tells Linux's amd_iommu where the secure IOMMU is and which PCI functions it translates.
//! Read the way drivers/iommu/amd/init.c reads it (`detect_ivrs`, `check_ivrs_checksum`,
//! `get_highest_supported_ivhd_type`, `init_iommu_one`, `init_iommu_from_acpi`); QEMU takes it
//! with `-acpitable file=FILE`.
//!
//! Layout written: the 48-byte IVRS header (IVinfo at offset 36), then two IVHD blocks for the
//! same IOMMU, type 10h (24-byte header) and type 11h (40-byte header, carrying the EFR and EFR2
//! images), as firmware does so that a kernel picks the highest type it knows. Each block lists
//! the endpoints with one DEV_SELECT entry per function: never DEV_ALL, so QEMU's own devices
//! (which nothing translates) stay outside the IOMMU.
// An offline tool: lengths of a table built from the command line.
#![allow(clippy::arithmetic_side_effects)]

use crate::devices::iommu;
use crate::tools::walk::parse_u64;
use abi::Bdf;
use iommu_model::amdvi::mmio::{AmdVi, EXT_FEATURES, EXT_FEATURES2};
use std::path::PathBuf;

pub const HEADER_LEN: usize = 48;
/// IVinfo (init.c ivinfo_init, amd_iommu_types.h IOMMU_IVINFO_*): EFRSup in bit 0 says the IVHD
/// 11h/40h EFR images are valid; VASize (bits 21:15) caps the host page table's input size.
pub const IVINFO_EFRSUP: u32 = 1 << 0;
pub const IVINFO_VASIZE_SHIFT: u32 = 15;
pub const IVINFO_PASIZE_SHIFT: u32 = 8;
/// Input and output address sizes: the model walks six-level v1 tables (EFR.HATS) over a 52-bit
/// physical address space (Linux IOMMU_IN_ADDR_BIT_SIZE / IOMMU_OUT_ADDR_BIT_SIZE).
pub const VA_SIZE: u32 = 64;
pub const PA_SIZE: u32 = 52;
pub const IVHD_10_LEN: usize = 24;
pub const IVHD_11_LEN: usize = 40;
/// Device entry type (init.c IVHD_DEV_SELECT): a 4-byte entry naming one function.
pub const DEV_SELECT: u8 = 0x02;

#[derive(clap::Args)]
pub struct Args {
    /// PCI address of the secure IOMMU function (bus:dev.fn, segment 0).
    #[arg(long, default_value = "00:03.0")]
    iommu: Bdf,
    /// Physical address of the function's BAR0 (the AMD-Vi registers) as the firmware placed it.
    #[arg(long, value_parser = parse_u64)]
    mmio: u64,
    /// PCI address of a function the IOMMU translates; repeat for more.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<Bdf>,
    /// Where to write the table.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// One IVHD block of `kind` 0x10 or 0x11.
fn ivhd(kind: u8, iommu: u16, mmio: u64, endpoints: &[u16], efr: u64, efr2: u64) -> Vec<u8> {
    let header = if kind == 0x10 { IVHD_10_LEN } else { IVHD_11_LEN };
    let len = header + 4 * endpoints.len();
    let mut h = Vec::with_capacity(len);
    // Flags 0: no HT tunnel, PassPW, ResPassPW or Isoc (Linux then clears those control bits).
    h.extend_from_slice(&[kind, 0]);
    h.extend_from_slice(&(len as u16).to_le_bytes());
    h.extend_from_slice(&iommu.to_le_bytes());
    h.extend_from_slice(&u16::from(iommu::CAP_PTR).to_le_bytes());
    h.extend_from_slice(&mmio.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // PCI segment
    h.extend_from_slice(&0u16.to_le_bytes()); // IOMMU info: MSI number 0, unit ID 0
                                              // Type 10h: IOMMU feature reporting, nothing beyond the EFR; type 11h: IOMMU attributes,
                                              // HATDis (bit 0) clear since the model walks host (v1) tables.
    h.extend_from_slice(&0u32.to_le_bytes());
    if kind != 0x10 {
        h.extend_from_slice(&efr.to_le_bytes());
        h.extend_from_slice(&efr2.to_le_bytes());
    }
    for &ep in endpoints {
        h.push(DEV_SELECT);
        h.extend_from_slice(&ep.to_le_bytes());
        h.push(0); // DTE setting: no INITPass, EIntPass, NMIPass, SysMgt, LINTnPass
    }
    h
}

/// The whole table for the IOMMU function at `iommu` with its registers at `mmio`, translating
/// `endpoints` (segment 0). The EFR images are the model's own registers, so the two cannot
/// disagree.
pub fn table(iommu: u16, mmio: u64, endpoints: &[u16]) -> Vec<u8> {
    let regs = AmdVi::new();
    let (efr, efr2) = (regs.mmio_read(EXT_FEATURES, 8), regs.mmio_read(EXT_FEATURES2, 8));
    let mut body = Vec::new();
    let ivinfo = IVINFO_EFRSUP | VA_SIZE << IVINFO_VASIZE_SHIFT | PA_SIZE << IVINFO_PASIZE_SHIFT;
    body.extend_from_slice(&ivinfo.to_le_bytes());
    body.extend_from_slice(&[0; 8]); // reserved
    body.extend(ivhd(0x10, iommu, mmio, endpoints, efr, efr2));
    body.extend(ivhd(0x11, iommu, mmio, endpoints, efr, efr2));
    crate::tools::acpi::table(b"IVRS", 2, b"TIOMMUIV", &body)
}

pub fn run(args: Args) -> Result<(), String> {
    if args.endpoints.contains(&args.iommu) {
        return Err("the IOMMU cannot be one of its own endpoints".into());
    }
    if args.mmio == 0 || args.mmio & 0x3fff != 0 || args.mmio >= 1 << PA_SIZE {
        return Err(format!("--mmio {:#x}: the BAR0 address must be a non-zero, 16 KiB aligned physical address", args.mmio));
    }
    let t = table(args.iommu.0, args.mmio, &args.endpoints.iter().map(|b| b.0).collect::<Vec<_>>());
    std::fs::write(&args.output, &t).map_err(|e| format!("cannot write {}: {e}", args.output.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(t: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([t[i], t[i + 1]])
    }
    fn u32_at(t: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(t[i..i + 4].try_into().unwrap())
    }
    fn u64_at(t: &[u8], i: usize) -> u64 {
        u64::from_le_bytes(t[i..i + 8].try_into().unwrap())
    }

    /// What Linux's amd_iommu takes from the table: the IVHD type it settles on, then from the
    /// blocks of that type the IOMMU's devid, cap_ptr, MMIO base, EFR image (with IVinfo.EFRSup)
    /// and the device ids its DEV_SELECT entries name.
    struct Parsed {
        ivhd_type: u8,
        devid: u16,
        cap_ptr: u16,
        mmio: u64,
        efr: Option<(u64, u64)>,
        devices: Vec<u16>,
        vasize: u32,
    }

    fn parse_as_linux(t: &[u8]) -> Parsed {
        // check_ivrs_checksum
        assert_eq!(t.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0, "checksum");
        let len = u32_at(t, 4) as usize;
        assert_eq!(len, t.len());
        let ivinfo = u32_at(t, 36);
        // get_highest_supported_ivhd_type: the last type (<= 0x40) for the first block's devid.
        let first_devid = u16_at(t, HEADER_LEN + 4);
        let (mut p, mut ivhd_type) = (HEADER_LEN, t[HEADER_LEN]);
        while p < len && t[p] <= 0x40 {
            if u16_at(t, p + 4) == first_devid {
                ivhd_type = t[p];
            }
            p += usize::from(u16_at(t, p + 2));
        }
        assert_eq!(p, len, "blocks end where the table ends (the WARN_ON in init_iommu_all)");
        let mut p = HEADER_LEN;
        let mut out = None;
        while p < len {
            let (kind, blen) = (t[p], usize::from(u16_at(t, p + 2)));
            if kind == ivhd_type {
                // get_ivhd_header_size, then the 4-byte entries (ivhd_entry_length: types < 0x80
                // are 4 << (type >> 6) bytes).
                let hsize = match kind {
                    0x10 => 24,
                    0x11 | 0x40 => 40,
                    k => panic!("unsupported IVHD type {k:#x}"),
                };
                let mut devices = Vec::new();
                let mut e = p + hsize;
                while e < p + blen {
                    assert_eq!(t[e], DEV_SELECT, "only DEV_SELECT entries, never DEV_ALL");
                    devices.push(u16_at(t, e + 1));
                    e += 4 << (t[e] >> 6);
                }
                assert_eq!(e, p + blen);
                let efr = (kind != 0x10 && ivinfo & IVINFO_EFRSUP != 0).then(|| (u64_at(t, p + 24), u64_at(t, p + 32)));
                out = Some(Parsed {
                    ivhd_type: kind,
                    devid: u16_at(t, p + 4),
                    cap_ptr: u16_at(t, p + 6),
                    mmio: u64_at(t, p + 8),
                    efr,
                    devices,
                    vasize: (ivinfo >> IVINFO_VASIZE_SHIFT) & 0x7f,
                });
            }
            p += blen;
        }
        out.expect("a block of the chosen type")
    }

    #[test]
    fn linux_reads_the_iommu_and_its_endpoints() {
        let t = table(0x18, 0xfebd_4000, &[0x20, 0x30]);
        assert_eq!(&t[0..4], b"IVRS");
        let p = parse_as_linux(&t);
        assert_eq!(p.ivhd_type, 0x11, "the highest type present");
        assert_eq!((p.devid, p.cap_ptr, p.mmio), (0x18, u16::from(iommu::CAP_PTR), 0xfebd_4000));
        assert_eq!(p.devices, [0x20, 0x30]);
        assert_eq!(p.vasize, 64);
        let regs = AmdVi::new();
        assert_eq!(p.efr, Some((regs.mmio_read(EXT_FEATURES, 8), regs.mmio_read(EXT_FEATURES2, 8))), "the EFR image is the register's");
    }

    #[test]
    fn the_type_10h_block_alone_names_the_same_iommu() {
        let t = table(0x18, 0x1_0000_0000, &[0x20]);
        // Drop the 11h block as a kernel that knows only 10h would see the table.
        let mut only10 = t[..HEADER_LEN + IVHD_10_LEN + 4].to_vec();
        let n = only10.len() as u32;
        only10[4..8].copy_from_slice(&n.to_le_bytes());
        only10[9] = 0;
        let sum = only10.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        only10[9] = 0u8.wrapping_sub(sum);
        let p = parse_as_linux(&only10);
        assert_eq!((p.ivhd_type, p.devid, p.mmio, p.efr), (0x10, 0x18, 0x1_0000_0000, None));
        assert_eq!(p.devices, [0x20]);
    }
}
