//! `tiommu viot`: the ACPI Virtual I/O Translation table (ACPI 6.4 §5.2.30) that tells the guest
//! kernel which PCI functions a virtio-pci IOMMU translates. Linux parses it in
//! drivers/acpi/viot.c; QEMU takes it with `-acpitable file=FILE` (the file holds the whole
//! table, header included).
//!
//! Layout written: the 48-byte VIOT header, one virtio-pci IOMMU node (type 3), then one PCI range
//! node (type 1) per endpoint, each covering one function whose endpoint ID is its requester ID
//! (the ID the virtio-iommu's ATTACH and PROBE requests carry).
// An offline tool: lengths of a table built from the command line.
#![allow(clippy::arithmetic_side_effects)]

use abi::Bdf;
use std::path::PathBuf;

pub const HEADER_LEN: usize = 48;
pub const IOMMU_NODE_LEN: usize = 16;
pub const PCI_RANGE_LEN: usize = 24;
/// Node types (ACPI 6.4 Table 5.XX "VIOT node types"; Linux include/acpi/actbl3.h).
pub const NODE_PCI_RANGE: u8 = 1;
pub const NODE_VIRTIO_PCI_IOMMU: u8 = 3;

#[derive(clap::Args)]
pub struct Args {
    /// PCI address of the virtio-iommu (bus:dev.fn, segment 0).
    #[arg(long)]
    iommu: Bdf,
    /// PCI address of an endpoint it translates; repeat for more.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<Bdf>,
    /// Where to write the table.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// The whole table for a virtio-pci IOMMU at `iommu` translating `endpoints` (segment 0).
pub fn table(iommu: u16, endpoints: &[u16]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_LEN - crate::tools::acpi::HEADER_LEN + IOMMU_NODE_LEN + PCI_RANGE_LEN * endpoints.len());
    // VIOT: node count, offset of the first node, 8 reserved bytes.
    t.extend_from_slice(&(1 + endpoints.len() as u16).to_le_bytes());
    t.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    t.extend_from_slice(&[0; 8]);
    // virtio-pci IOMMU node: type, reserved, length, segment, BDF, 8 reserved.
    let iommu_offset = (crate::tools::acpi::HEADER_LEN + t.len()) as u16;
    t.extend_from_slice(&[NODE_VIRTIO_PCI_IOMMU, 0]);
    t.extend_from_slice(&(IOMMU_NODE_LEN as u16).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&iommu.to_le_bytes());
    t.extend_from_slice(&[0; 8]);
    for &ep in endpoints {
        // PCI range node: type, reserved, length, endpoint start, segment start/end, BDF
        // start/end, output node (offset of the IOMMU node), 6 reserved.
        t.extend_from_slice(&[NODE_PCI_RANGE, 0]);
        t.extend_from_slice(&(PCI_RANGE_LEN as u16).to_le_bytes());
        t.extend_from_slice(&u32::from(ep).to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&ep.to_le_bytes());
        t.extend_from_slice(&ep.to_le_bytes());
        t.extend_from_slice(&iommu_offset.to_le_bytes());
        t.extend_from_slice(&[0; 6]);
    }
    crate::tools::acpi::table(b"VIOT", 0, b"TIOMMUVT", &t)
}

pub fn run(args: Args) -> Result<(), String> {
    if args.endpoints.contains(&args.iommu) {
        return Err("the IOMMU cannot be one of its own endpoints".into());
    }
    let t = table(args.iommu.0, &args.endpoints.iter().map(|b| b.0).collect::<Vec<_>>());
    std::fs::write(&args.output, &t).map_err(|e| format!("cannot write {}: {e}", args.output.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(t: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([t[i], t[i + 1]])
    }

    #[test]
    fn bytes_as_linux_viot_c_reads_them() {
        let t = table(0x28, &[0x20]);
        assert_eq!(t.len(), 88);
        assert_eq!(&t[0..4], b"VIOT");
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 88);
        assert_eq!(t.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0, "checksum");
        assert_eq!((u16_at(&t, 36), u16_at(&t, 38)), (2, 48), "node count, node offset");
        // IOMMU node at 48.
        assert_eq!((t[48], u16_at(&t, 50), u16_at(&t, 52), u16_at(&t, 54)), (3, 16, 0, 0x28));
        // PCI range at 64, pointing back at 48, endpoint ID = RID.
        assert_eq!((t[64], u16_at(&t, 66)), (1, 24));
        assert_eq!(u32::from_le_bytes(t[68..72].try_into().unwrap()), 0x20);
        assert_eq!((u16_at(&t, 72), u16_at(&t, 74), u16_at(&t, 76), u16_at(&t, 78), u16_at(&t, 80)), (0, 0, 0x20, 0x20, 48));
        let two = table(0x28, &[0x20, 0x30]);
        assert_eq!((two.len(), u16_at(&two, 36), u16_at(&two, 88 + 16)), (112, 3, 48));
        assert_eq!(two.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0);
    }
}
