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

/// Bits `hi..=lo` of `q`, shifted down.
fn bits(q: u64, hi: u32, lo: u32) -> u64 {
    // Callers name fields with constants, 0 <= lo <= hi <= 63.
    (q >> lo) & (u64::MAX >> 63u32.saturating_sub(hi.saturating_sub(lo)))
}

impl Dte {
    pub fn from_bytes(b: &[u8; 32]) -> Dte {
        let q = |i: usize| u64::from_le_bytes(b.chunks_exact(8).nth(i).and_then(|c| c.try_into().ok()).unwrap_or([0; 8]));
        Dte([q(0), q(1), q(2), q(3)])
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (chunk, q) in b.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&q.to_le_bytes());
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
    /// GV: guest (v2/GCR3) translation; out of scope here (docs/amd-vi.md), treated as illegal.
    pub fn gv(&self) -> bool {
        self.0[0] & (1 << 55) != 0
    }

    // The remaining fields are decoded for tools and tests; the model does not act on them
    // (no host A/D update, PPR, guest tables, port I/O, exclusion range or interrupt remapping).

    /// HAD (bits 8:7): host access/dirty update (Linux DTE_FLAG_HAD).
    pub fn had(&self) -> u8 {
        bits(self.0[0], 8, 7) as u8
    }
    /// PPR (bit 52): peripheral page requests enabled.
    pub fn ppr(&self) -> bool {
        self.0[0] & (1 << 52) != 0
    }
    /// GIoV (bit 54): guest I/O protection valid (Linux DTE_FLAG_GIOV).
    pub fn giov(&self) -> bool {
        self.0[0] & (1 << 54) != 0
    }
    /// GLX (bits 57:56): levels of the GCR3 table.
    pub fn glx(&self) -> u8 {
        bits(self.0[0], 57, 56) as u8
    }
    /// GCR3 table root pointer, reassembled from its three pieces (Linux DTE_GCR3_14_12,
    /// DTE_GCR3_30_15, DTE_GCR3_51_31).
    pub fn gcr3_root(&self) -> u64 {
        bits(self.0[0], 60, 58) << 12 | bits(self.0[1], 31, 16) << 15 | bits(self.0[1], 63, 43) << 31
    }
    /// IoCtl (bits 100:99): port I/O control (0 abort, 1 forward, 2 translate).
    pub fn ioctl(&self) -> u8 {
        bits(self.0[1], 36, 35) as u8
    }
    /// Cache (bit 101): IOTLB cache hint.
    pub fn cache_hint(&self) -> bool {
        self.0[1] & (1 << 37) != 0
    }
    /// SD (bit 102): snoop disable.
    pub fn sd(&self) -> bool {
        self.0[1] & (1 << 38) != 0
    }
    /// EX (bit 103): the exclusion range applies to this device.
    pub fn ex(&self) -> bool {
        self.0[1] & (1 << 39) != 0
    }
    /// SysMgt (bits 105:104): system management message handling.
    pub fn sysmgt(&self) -> u8 {
        bits(self.0[1], 41, 40) as u8
    }
    /// IV (bit 128): the interrupt map is valid (Linux DTE_IRQ_REMAP_ENABLE).
    pub fn iv(&self) -> bool {
        self.0[2] & 1 != 0
    }
    /// IntTabLen (bits 132:129): log2 of the number of interrupt-table entries.
    pub fn int_tab_len(&self) -> u8 {
        bits(self.0[2], 4, 1) as u8
    }
    /// IG (bit 133): ignore unmapped interrupts.
    pub fn ig(&self) -> bool {
        self.0[2] & (1 << 5) != 0
    }
    /// Interrupt table root pointer, SPA[51:6] (Linux DTE_IRQ_PHYS_ADDR_MASK).
    pub fn int_table_root(&self) -> u64 {
        self.0[2] & 0x000f_ffff_ffff_ffc0
    }
    /// Guest paging mode for v2 tables (bits 183:182; Linux DTE_GPT_LEVEL_MASK).
    pub fn guest_paging_mode(&self) -> u8 {
        bits(self.0[2], 55, 54) as u8
    }
    /// INITPass, EIntPass, NMIPass (bits 184, 185, 186).
    pub fn init_pass(&self) -> bool {
        self.0[2] & (1 << 56) != 0
    }
    pub fn eint_pass(&self) -> bool {
        self.0[2] & (1 << 57) != 0
    }
    pub fn nmi_pass(&self) -> bool {
        self.0[2] & (1 << 58) != 0
    }
    /// IntCtl (bits 189:188): 0 target abort, 1 forward unmapped, 2 remap (Linux
    /// DTE_IRQ_REMAP_INTCTL is 2).
    pub fn int_ctl(&self) -> u8 {
        bits(self.0[2], 61, 60) as u8
    }
    /// Lint0Pass, Lint1Pass (bits 190, 191).
    pub fn lint0_pass(&self) -> bool {
        self.0[2] & (1 << 62) != 0
    }
    pub fn lint1_pass(&self) -> bool {
        self.0[2] & (1 << 63) != 0
    }
    /// AttrV (bit 246), Mode0FC (bit 247) and SnoopAttribute (bits 255:248), as Xen's
    /// `struct amd_iommu_dte` names them.
    pub fn attr_v(&self) -> bool {
        self.0[3] & (1 << 54) != 0
    }
    pub fn mode0_fc(&self) -> bool {
        self.0[3] & (1 << 55) != 0
    }
    pub fn snoop_attribute(&self) -> u8 {
        bits(self.0[3], 63, 56) as u8
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
        // Size is 9 bits: at most 512 pages.
        (self.0 & 0x1ff).saturating_add(1).saturating_mul(4096) / DTE_SIZE
    }
}

/// Why a DTE could not be fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DteFetchError {
    /// The DeviceID is past the table's Size (choice: docs/amd-vi.md).
    OutOfTable,
    Memory {
        dte_addr: u64,
        err: MemError,
    },
}

pub fn fetch<M: PhysMem + ?Sized>(mem: &M, devtab: DevTabBase, devid: u16) -> Result<Dte, DteFetchError> {
    if u64::from(devid) >= devtab.entries() {
        return Err(DteFetchError::OutOfTable);
    }
    // base() has bits 51:12 and devid × 32 < 2^21: the sum cannot wrap.
    let dte_addr = devtab.base().wrapping_add(u64::from(devid).wrapping_mul(DTE_SIZE));
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

    /// Every field at the position Linux's amd_iommu_types.h masks put it (quad, bit).
    #[test]
    fn every_field_decodes_from_its_own_bits() {
        let one = |quad: usize, bit: u32| {
            let mut d = Dte::default();
            d.0[quad] = 1 << bit;
            d
        };
        assert_eq!(one(0, 7).had(), 1);
        assert_eq!(one(0, 8).had(), 2);
        assert_eq!(one(0, 9).mode(), 1);
        assert_eq!(one(0, 11).mode(), 4);
        assert!(one(0, 52).ppr() && one(0, 54).giov() && one(0, 55).gv());
        assert_eq!(one(0, 56).glx(), 1);
        assert_eq!(one(0, 58).gcr3_root(), 1 << 12);
        assert_eq!(one(1, 16).gcr3_root(), 1 << 15);
        assert_eq!(one(1, 43).gcr3_root(), 1 << 31);
        assert_eq!(one(1, 63).gcr3_root(), 1 << 51);
        assert_eq!(one(1, 15).domain_id(), 0x8000);
        assert!(one(1, 32).iotlb() && one(1, 33).se() && one(1, 34).sa());
        assert_eq!(one(1, 35).ioctl(), 1);
        assert!(one(1, 37).cache_hint() && one(1, 38).sd() && one(1, 39).ex());
        assert_eq!(one(1, 41).sysmgt(), 2);
        assert!(one(2, 0).iv() && one(2, 5).ig());
        assert_eq!(one(2, 1).int_tab_len(), 1);
        assert_eq!(one(2, 6).int_table_root(), 1 << 6);
        assert_eq!(one(2, 55).guest_paging_mode(), 2);
        assert!(one(2, 56).init_pass() && one(2, 57).eint_pass() && one(2, 58).nmi_pass());
        assert_eq!(one(2, 60).int_ctl(), 1);
        assert!(one(2, 62).lint0_pass() && one(2, 63).lint1_pass());
        assert!(one(3, 54).attr_v() && one(3, 55).mode0_fc());
        assert_eq!(one(3, 56).snoop_attribute(), 1);
        // A field reads nothing from its neighbours' bits.
        assert_eq!(Dte([!0x0000_0000_0000_0e00, !0, !0, !0]).mode(), 0);
        assert_eq!(Dte([!0, !0xffff, !0, !0]).domain_id(), 0);
        // The interrupt fields Linux writes for remapping (IV, IntTabLen 9, IntCtl 2, root)
        // leave quad 2's reserved bits clear.
        let mut d = Dte::translated(0x1000, 3, 1, Perm::RW);
        d.0[2] = 1 | 9 << 1 | 0x1234_5680 | 2 << 60;
        assert!(!d.reserved_bits_set());
        assert_eq!((d.iv(), d.int_tab_len(), d.int_table_root(), d.int_ctl()), (true, 9, 0x1234_5680, 2));
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
