//! Type 0 config space (PCI Local Bus 3.0 §6.1; PCIe 6.x §7.5 for the PCI Express capability;
//! MSI §6.8.1, MSI-X §6.8.2) as a 4 KiB array with a write mask. QEMU's vfio-pci reads the header
//! and capabilities from here and emulates BAR sizing, the MSI capability and the MSI-X table
//! itself, handing the daemon one eventfd per vector.
// Offsets of the function's own capability layout, fixed when the function is built; guest
// config writes go through `write`, whose offsets the glue has bounded.
#![allow(clippy::arithmetic_side_effects)]

use crate::vfio::function::{Bar, PciIds};

pub const SIZE: usize = 4096;
const CAP_PCIE: u8 = 0x40;
/// After the PCI Express capability's 0x3c bytes (v2 endpoint, PCIe 6.x §7.5.3): at 0x70 the
/// MSI-X header overlapped Link Control 2 / Link Status 2, which QEMU's vfio-pci emulates as
/// zeroes, so the guest saw no MSI-X (measured with QEMU 11.1's vfio_pci_read_config trace).
const CAP_MSIX: u8 = 0x80;
const MSIX_CAP_LEN: usize = 12;
/// MSI, 64-bit address, no per-vector masking (PCI 3.0 §6.8.1: 14 bytes), after MSI-X.
const CAP_MSI: u8 = CAP_MSIX + MSIX_CAP_LEN as u8;
const MSI_CAP_LEN: usize = 14;
/// Where capabilities a function adds (`add_std_caps`) begin, whatever interrupts it has, so
/// their offsets are fixed (the AMD-Vi function's capability offset is named in the ACPI IVRS).
pub const STD_CAPS_START: u8 = 0xa0;
const _: () = assert!(CAP_MSI as usize + MSI_CAP_LEN <= STD_CAPS_START as usize);
/// The MSI-X table and PBA live in a BAR of their own.
pub const MSIX_BAR: u8 = 4;
pub const MSIX_BAR_SIZE: u64 = 0x1000;
pub const MSIX_PBA_OFFSET: u32 = 0x800;

/// Device Capabilities: Function Level Reset Capability (PCIe 6.x §7.5.3.3).
pub const DEVCAP_FLR: u32 = 1 << 28;
/// Device Control, "Initiate Function Level Reset" (bit 15, PCIe 6.x §7.5.3.4): always reads 0.
const DEVCTL_HI: usize = CAP_PCIE as usize + 9;
const DEVCTL_BCR_FLR_HI: u8 = 0x80;

pub struct ConfigSpace {
    bytes: [u8; SIZE],
    wmask: [u8; SIZE],
    /// The writable bits' power-on values, which a function-level reset restores.
    power_on: Box<[u8; SIZE]>,
}

impl ConfigSpace {
    /// `msi_vectors` is 0 (no MSI capability) or a power of two up to 32.
    pub fn new(ids: &PciIds, bars: &[Bar], msix_vectors: u16, msi_vectors: u8) -> ConfigSpace {
        let mut c = ConfigSpace { bytes: [0; SIZE], wmask: [0; SIZE], power_on: Box::new([0; SIZE]) };
        c.put16(0x00, ids.vendor);
        c.put16(0x02, ids.device);
        // Command: memory space, bus master, INTx disable are the driver's to set.
        c.wmask[0x04] = 0x06;
        c.wmask[0x05] = 0x04;
        c.put16(0x06, 1 << 4); // status: capabilities list
        c.bytes[0x08] = ids.revision;
        c.bytes[0x09] = ids.class as u8;
        c.bytes[0x0a] = (ids.class >> 8) as u8;
        c.bytes[0x0b] = (ids.class >> 16) as u8;
        c.wmask[0x0c] = 0xff; // cache line size
        c.put16(0x2c, ids.subsystem_vendor);
        c.put16(0x2e, ids.subsystem);
        c.bytes[0x34] = CAP_PCIE;
        c.wmask[0x3c] = 0xff; // interrupt line
        for b in bars.iter().chain(msix_vectors.gt(&0).then_some(&Bar { index: MSIX_BAR, size: MSIX_BAR_SIZE })) {
            // 64-bit memory BAR; QEMU sizes it from the region size and emulates the writes.
            let off = 0x10 + 4 * usize::from(b.index);
            c.put32(off, 0x4);
        }
        // PCI Express capability v2, endpoint, 4 KiB extended config space behind it.
        c.bytes[CAP_PCIE as usize] = 0x10;
        c.bytes[CAP_PCIE as usize + 1] = 0;
        c.put16(CAP_PCIE as usize + 2, 0x0002);
        // devcap: role-based errors, 256 B payload, FLR (so VFIO can reset the function).
        c.put32(CAP_PCIE as usize + 4, 0x0000_8000 | 0x1 | DEVCAP_FLR);
        c.wmask[CAP_PCIE as usize + 8] = 0xff; // devctl
        c.wmask[DEVCTL_HI] = !DEVCTL_BCR_FLR_HI;
        if msix_vectors > 0 {
            let m = CAP_MSIX as usize;
            c.bytes[m] = 0x11;
            c.put16(m + 2, msix_vectors - 1);
            c.wmask[m + 3] = 0xc0; // MSI-X enable, function mask
            c.put32(m + 4, u32::from(MSIX_BAR));
            c.put32(m + 8, MSIX_PBA_OFFSET | u32::from(MSIX_BAR));
            c.chain(CAP_MSIX);
        }
        if msi_vectors > 0 {
            let m = CAP_MSI as usize;
            c.bytes[m] = 0x05;
            // Message Control: 64-bit capable (bit 7), Multiple Message Capable in bits 3:1.
            let mmc = u16::from(msi_vectors.clamp(1, 32).next_power_of_two().trailing_zeros() as u8);
            c.put16(m + 2, 1 << 7 | mmc << 1);
            // Enable and Multiple Message Enable; address (dword aligned) and data.
            c.wmask[m + 2] = 0x71;
            c.wmask[m + 4..m + 12].copy_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            c.wmask[m + 12..m + 14].fill(0xff);
            c.chain(CAP_MSI);
        }
        c.power_on.copy_from_slice(&c.bytes);
        c
    }

    /// Bus Master Enable reads 1 and cannot be cleared: for a function whose own memory writes
    /// (an IOMMU's event log, completion-wait stores, its MSI) are not gated by BME, which Linux
    /// therefore never sets. QEMU sends a vfio function's MSI through the function's bus-master
    /// address space (hw/pci/msi.c), so with BME clear the interrupt would be dropped; a driver's
    /// read-modify-write of Command then carries the 1 into QEMU's copy.
    pub fn hardwire_bus_master(&mut self) {
        self.bytes[0x04] |= 0x04;
        self.wmask[0x04] &= !0x04;
    }

    /// Function-level reset: every writable bit back to its power-on value (command register,
    /// device control, MSI and MSI-X control); the read-only rest is unchanged.
    pub fn flr(&mut self) {
        for ((b, &m), &p) in self.bytes.iter_mut().zip(self.wmask.iter()).zip(self.power_on.iter()) {
            *b = (*b & !m) | (p & m);
        }
    }

    /// Link the capability at `at` to the end of the standard list.
    fn chain(&mut self, at: u8) {
        let mut last = CAP_PCIE as usize;
        while self.bytes[last + 1] != 0 {
            last = usize::from(self.bytes[last + 1]);
        }
        self.bytes[last + 1] = at;
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Append read-only capabilities (each from its ID byte; the next pointer is filled here)
    /// at the end of the chain from `STD_CAPS_START` on, e.g. virtio-pci's vendor capabilities.
    /// Those that do not fit below 0x100 are left out.
    pub fn add_std_caps(&mut self, caps: &[Vec<u8>]) {
        let mut at = usize::from(STD_CAPS_START);
        for c in caps {
            if c.len() < 2 || at + c.len() > 0x100 {
                break;
            }
            self.bytes[at..at + c.len()].copy_from_slice(c);
            self.bytes[at + 1] = 0;
            self.chain(at as u8);
            at = (at + c.len() + 3) & !3;
        }
    }

    /// Chain an extended capability header at `off` (>= 0x100); the function answers its body.
    pub fn add_ext_cap(&mut self, off: u16, header: u32) {
        let off = usize::from(off) & !3;
        if !(0x100..SIZE - 4).contains(&off) {
            return;
        }
        // Append to the chain: find the last header.
        let mut prev = 0x100usize;
        if off != 0x100 {
            loop {
                let h = u32::from_le_bytes(self.bytes[prev..prev + 4].try_into().unwrap_or([0; 4]));
                let next = (h >> 20) as usize & !3;
                if next == 0 || next < 0x100 {
                    break;
                }
                prev = next;
            }
            let h = u32::from_le_bytes(self.bytes[prev..prev + 4].try_into().unwrap_or([0; 4]));
            self.put32(prev, (h & 0x000f_ffff) | (off as u32) << 20);
        }
        self.put32(off, header & 0x000f_ffff);
    }

    pub fn read(&self, off: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(off).ok().and_then(|o| o.checked_add(i)).and_then(|o| self.bytes.get(o)).copied().unwrap_or(0xff);
        }
    }

    /// Writes land only on writable bits.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = usize::try_from(off).ok().and_then(|o| o.checked_add(i)).filter(|&o| o < SIZE) else { return };
            self.bytes[o] = (self.bytes[o] & !self.wmask[o]) | (b & self.wmask[o]);
        }
    }

    /// Whether a write of `data` at `off` sets Device Control's "Initiate Function Level Reset".
    pub fn initiates_flr(off: u64, data: &[u8]) -> bool {
        (DEVCTL_HI as u64).checked_sub(off).and_then(|i| data.get(i as usize)).is_some_and(|b| b & DEVCTL_BCR_FLR_HI != 0)
    }

    #[cfg(test)]
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[4], self.bytes[5]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_capabilities_and_masks() {
        let ids = PciIds { vendor: 0x1234, device: 0x7101, subsystem_vendor: 0x1234, subsystem: 1, class: 0x080600, revision: 1 };
        let mut c = ConfigSpace::new(&ids, &[Bar { index: 0, size: 0x4000 }], 2, 0);
        let mut b = [0u8; 4];
        c.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x7101_1234);
        c.read(0x80, &mut b);
        assert_eq!(b, [0x11, 0, 1, 0], "MSI-X, 2 vectors");
        c.read(0x40, &mut b);
        assert!(usize::from(b[1]) >= 0x40 + 0x3c, "MSI-X clear of the 0x3c-byte PCI Express capability");
        c.write(0, &[0xff, 0xff]);
        c.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x7101_1234, "ids are read-only");
        c.write(4, &[0xff, 0xff]);
        assert_eq!(c.command(), 0x0406);
        c.hardwire_bus_master();
        c.write(4, &[0, 0]);
        assert_eq!(c.command(), 0x0004, "bus master stays on");
        c.add_ext_cap(0x100, 0x0001_002e);
        c.add_ext_cap(0x200, 0x0001_0001);
        c.read(0x100, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x2001_002e, "DOE header chained to the next");
        c.add_std_caps(&[vec![0x09, 0xee, 16, 1], vec![0x09, 0, 20, 2]]);
        c.read(0x80, &mut b);
        assert_eq!(b[1], STD_CAPS_START, "MSI-X points at the first added capability");
        c.read(0xa0, &mut b);
        assert_eq!(b, [0x09, 0xa4, 16, 1], "next filled in, 4-byte aligned");
        c.read(0xa4, &mut b);
        assert_eq!(b, [0x09, 0, 20, 2]);
        let mut far = [0u8; 2];
        c.read(4095, &mut far);
        assert_eq!(far[1], 0xff, "past the end reads ones");
    }

    #[test]
    fn flr_is_advertised_initiated_and_restores_writable_bits() {
        let ids = PciIds { vendor: 0x1234, device: 0x7102, subsystem_vendor: 0x1234, subsystem: 1, class: 0xff0000, revision: 1 };
        let mut c = ConfigSpace::new(&ids, &[Bar { index: 0, size: 0x1000 }], 1, 1);
        let mut b = [0u8; 4];
        c.read(0x44, &mut b);
        assert_ne!(u32::from_le_bytes(b) & DEVCAP_FLR, 0, "DevCap: FLR capable");
        c.write(4, &[0x06, 0x04]);
        c.write(0x48, &[0x1f, 0x80]);
        assert!(ConfigSpace::initiates_flr(0x48, &[0x1f, 0x80]) && ConfigSpace::initiates_flr(0x49, &[0x80]));
        assert!(
            !ConfigSpace::initiates_flr(0x48, &[0x1f, 0x00])
                && !ConfigSpace::initiates_flr(0x48, &[0xff])
                && !ConfigSpace::initiates_flr(0x4a, &[0x80])
        );
        c.read(0x48, &mut b);
        assert_eq!(b[1] & 0x80, 0, "Initiate FLR reads 0");
        c.flr();
        assert_eq!(c.command(), 0, "memory and bus master off after FLR");
        c.read(0x48, &mut b);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0);
        c.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x7102_1234, "read-only bits unchanged");
    }

    #[test]
    fn msi_capability_as_qemu_reads_it() {
        let ids = PciIds { vendor: 0x1234, device: 0x7101, subsystem_vendor: 0x1234, subsystem: 1, class: 0x080600, revision: 1 };
        let mut c = ConfigSpace::new(&ids, &[Bar { index: 0, size: 0x4000 }], 0, 1);
        let mut b = [0u8; 4];
        c.read(0x40, &mut b);
        assert_eq!(b[1], CAP_MSI, "PCI Express points at MSI when there is no MSI-X");
        c.read(u64::from(CAP_MSI), &mut b);
        assert_eq!(b, [0x05, 0, 0x80, 0], "MSI, last, 64-bit, one vector");
        // The driver enables it and programs the message; reserved and read-only bits stay.
        c.write(u64::from(CAP_MSI) + 2, &[0xff, 0xff]);
        c.read(u64::from(CAP_MSI), &mut b);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0x80 | 0x71);
        c.write(u64::from(CAP_MSI) + 4, &0xfee0_0003u32.to_le_bytes());
        c.read(u64::from(CAP_MSI) + 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xfee0_0000, "address is dword aligned");
        let c = ConfigSpace::new(&ids, &[], 4, 8);
        let mut b = [0u8; 4];
        c.read(0x80, &mut b);
        assert_eq!(b[1], CAP_MSI, "MSI-X, then MSI");
        c.read(u64::from(CAP_MSI), &mut b);
        assert_eq!(b[2] & 0x0e, 3 << 1, "8 vectors: MMC = 3");
        let mut far = [0u8; 2];
        c.read(4095, &mut far);
        assert_eq!(far[1], 0xff, "past the end reads ones");
    }
}
