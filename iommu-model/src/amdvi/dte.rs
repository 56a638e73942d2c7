//! The 256-bit device table entry (spec 48882 §2.2.2.2, Table 7; field positions as Xen's
//! `struct amd_iommu_dte` and Linux amd_iommu_types.h DTE_* decode them).

use crate::mem::{MemError, PhysMem};
use crate::walk::Perm;

pub const DTE_SIZE: u64 = 32;

/// Quad-word reserved masks, as recent QEMU checks them (hw/i386/amd_iommu.h
/// AMDVI_DTE_QUAD*_RESERVED): a set bit there makes the entry ILLEGAL_DEV_TABLE_ENTRY.
pub const QUAD0_RSVD: u64 = 0x8000_0000_0000_007c; // bits 6:2, 63
pub const QUAD2_RSVD: u64 = 0x0030_0000_0000_0000; // bits 53:52 of quad 2
pub const QUAD3_RSVD: u64 = 0x003f_0000_0000_7fff; // bits 14:0, 53:48 of quad 3

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dte(pub [u64; 4]);

impl Dte {
    pub fn from_bytes(b: &[u8; 32]) -> Dte {
        let q = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Dte([q(0), q(1), q(2), q(3)])
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, q) in self.0.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&q.to_le_bytes());
        }
        b
    }

    /// V: the entry is valid; V=0 lets DMA through untranslated.
    pub fn v(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// TV: the translation fields are valid.
    pub fn tv(&self) -> bool {
        self.0[0] & 2 != 0
    }
    /// Mode: the number of page-table levels (0 = no translation, 7 = reserved).
    pub fn mode(&self) -> u8 {
        ((self.0[0] >> 9) & 7) as u8
    }
    /// Host page-table root pointer, SPA[51:12].
    pub fn pt_root(&self) -> u64 {
        self.0[0] & 0x000f_ffff_ffff_f000
    }
    pub fn ir(&self) -> bool {
        self.0[0] & (1 << 61) != 0
    }
    pub fn iw(&self) -> bool {
        self.0[0] & (1 << 62) != 0
    }
    pub fn perm(&self) -> Perm {
        Perm::new(self.ir(), self.iw())
    }
    pub fn domain_id(&self) -> u16 {
        (self.0[1] & 0xffff) as u16
    }
    /// I: the device has an IOTLB (ATS); not modelled beyond the bit.
    pub fn iotlb(&self) -> bool {
        self.0[1] & (1 << 32) != 0
    }
    /// SE: suppress I/O page fault events for this device.
    pub fn se(&self) -> bool {
        self.0[1] & (1 << 33) != 0
    }
    /// SA: suppress all I/O page fault events (Linux DEV_ENTRY_NO_PAGE_FAULT).
    pub fn sa(&self) -> bool {
        self.0[1] & (1 << 34) != 0
    }
    /// GV: guest (v2/GCR3) translation; out of scope here (DESIGN.md), treated as illegal.
    pub fn gv(&self) -> bool {
        self.0[0] & (1 << 55) != 0
    }

    pub fn reserved_bits_set(&self) -> bool {
        self.0[0] & QUAD0_RSVD != 0 || self.0[2] & QUAD2_RSVD != 0 || self.0[3] & QUAD3_RSVD != 0
    }

    /// An entry as Linux's set_dte_entry writes one for a v1 paging domain.
    pub fn translated(root: u64, mode: u8, domain_id: u16, perm: Perm) -> Dte {
        let mut q0 = 1 | 2 | (root & 0x000f_ffff_ffff_f000) | (u64::from(mode & 7) << 9);
        if perm.read {
            q0 |= 1 << 61;
        }
        if perm.write {
            q0 |= 1 << 62;
        }
        Dte([q0, u64::from(domain_id), 0, 0])
    }
}

/// The Device Table Base Address register (MMIO 0x0000): base SPA[51:12] and Size in 4 KiB
/// pages minus one (bits 8:0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevTabBase(pub u64);

impl DevTabBase {
    pub fn base(&self) -> u64 {
        self.0 & 0x000f_ffff_ffff_f000
    }
    /// Number of entries the table holds.
    pub fn entries(&self) -> u64 {
        ((self.0 & 0x1ff) + 1) * 4096 / DTE_SIZE
    }
}

/// Why a DTE could not be fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DteFetchError {
    /// The DeviceID is past the table's Size (choice: docs/amd-vi.md).
    OutOfTable,
    Memory { dte_addr: u64, err: MemError },
}

pub fn fetch<M: PhysMem + ?Sized>(mem: &M, devtab: DevTabBase, devid: u16) -> Result<Dte, DteFetchError> {
    if u64::from(devid) >= devtab.entries() {
        return Err(DteFetchError::OutOfTable);
    }
    let dte_addr = devtab.base() + u64::from(devid) * DTE_SIZE;
    let mut b = [0u8; 32];
    mem.read(dte_addr, &mut b).map_err(|err| DteFetchError::Memory { dte_addr, err })?;
    Ok(Dte::from_bytes(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::ByteMem;

    #[test]
    fn fields_decode_where_linux_puts_them() {
        let d = Dte::translated(0x1234_5000, 4, 0xbeef, Perm::new(true, false));
        assert!(d.v() && d.tv());
        assert_eq!((d.mode(), d.pt_root(), d.domain_id()), (4, 0x1234_5000, 0xbeef));
        assert!(d.ir() && !d.iw());
        assert!(!d.reserved_bits_set());
        assert_eq!(Dte::from_bytes(&d.to_bytes()), d);
        let mut bad = d;
        bad.0[0] |= 1 << 63;
        assert!(bad.reserved_bits_set());
        let mut bad = d;
        bad.0[3] |= 1;
        assert!(bad.reserved_bits_set());
    }

    #[test]
    fn fetch_honours_size_and_memory() {
        let mut mem = ByteMem::new(0, 0x4000);
        let d = Dte::translated(0x3000, 3, 7, Perm::RW);
        mem.write(0x1000 + 5 * 32, &d.to_bytes()).unwrap();
        let devtab = DevTabBase(0x1000); // Size 0: one page, 128 entries
        assert_eq!(fetch(&mem, devtab, 5), Ok(d));
        assert_eq!(fetch(&mem, devtab, 128), Err(DteFetchError::OutOfTable));
        let far = DevTabBase(0x8000 | 1);
        assert!(matches!(fetch(&mem, far, 0), Err(DteFetchError::Memory { dte_addr: 0x8000, .. })));
    }
}
