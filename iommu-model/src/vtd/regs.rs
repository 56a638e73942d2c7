//! The VT-d remapping unit's register map: offsets and fields as the VT-d specification's
//! chapter 11 ("Register Descriptions") lays them out and Linux drivers/iommu/intel/iommu.h
//! names them (DMAR_*_REG, DMA_GCMD_*, cap_*/ecap_*). No behaviour here: `unit.rs` is the logic.

/// Version (32-bit): bits 7:4 major, 3:0 minor.
pub const VER: u64 = 0x00;
/// Capability (64-bit, RO).
pub const CAP: u64 = 0x08;
/// Extended capability (64-bit, RO).
pub const ECAP: u64 = 0x10;
/// Global command (32-bit, WO).
pub const GCMD: u64 = 0x18;
/// Global status (32-bit, RO).
pub const GSTS: u64 = 0x1c;
/// Root table address (64-bit): 63:12 the table, 11:10 TTM.
pub const RTADDR: u64 = 0x20;
/// Context command (64-bit): register-based context-cache invalidation.
pub const CCMD: u64 = 0x28;
/// Fault status (32-bit).
pub const FSTS: u64 = 0x34;
/// Fault event control, data, address, upper address (32-bit each).
pub const FECTL: u64 = 0x38;
pub const FEDATA: u64 = 0x3c;
pub const FEADDR: u64 = 0x40;
pub const FEUADDR: u64 = 0x44;
/// Protected memory enable (32-bit); the unit reports no protected regions (CAP.PLMR/PHMR 0).
pub const PMEN: u64 = 0x64;
/// Invalidation queue head, tail (64-bit; QH/QT in bits 18:4), address (63:12 base, 11 DW,
/// 2:0 QS).
pub const IQH: u64 = 0x80;
pub const IQT: u64 = 0x88;
pub const IQA: u64 = 0x90;
/// Invalidation completion status (32-bit): bit 0 IWC.
pub const ICS: u64 = 0x9c;
/// Invalidation completion event control, data, address, upper address (32-bit each).
pub const IECTL: u64 = 0xa0;
pub const IEDATA: u64 = 0xa4;
pub const IEADDR: u64 = 0xa8;
pub const IEUADDR: u64 = 0xac;
/// Invalidation queue error record (64-bit, RO): 3:0 IQEI, 47:32 ITESID, 63:48 ICESID.
pub const IQER: u64 = 0xb0;

/// The register window: one 4 KiB page holds everything this unit has (the DRHD's Size field 0).
pub const MMIO_SIZE: u64 = 0x1000;

/// VER: 1.0, what QEMU's intel-iommu reports in legacy mode (Linux only prints it).
pub const VERSION: u32 = 0x10;

/// CAP fields (VT-d spec §11.4.2; Linux cap_*).
pub mod cap {
    /// ND, 2:0: number of domains = 2^(4 + 2 * ND); 6 is 65536, every 16-bit DID.
    pub const fn nd(v: u64) -> u64 {
        v & 7
    }
    /// RWBF, bit 4: software must flush the write buffer.
    pub const RWBF: u64 = 1 << 4;
    /// PLMR, PHMR, bits 5 and 6: protected low/high memory regions.
    pub const PLMR: u64 = 1 << 5;
    pub const PHMR: u64 = 1 << 6;
    /// CM, bit 7: caching mode (not-present and faulting entries may be cached).
    pub const CM: u64 = 1 << 7;
    /// SAGAW, 12:8: bit 1 39-bit (3-level), bit 2 48-bit (4-level), bit 3 57-bit (5-level).
    pub const fn sagaw(bits: u8) -> u64 {
        ((bits & 0x1f) as u64) << 8
    }
    /// MGAW, 21:16: maximum guest address width minus one.
    pub const fn mgaw(width: u8) -> u64 {
        ((width.saturating_sub(1) & 0x3f) as u64) << 16
    }
    /// FRO, 33:24: offset of the first fault recording register, in 16-byte units.
    pub const fn fro(offset: u64) -> u64 {
        ((offset / 16) & 0x3ff) << 24
    }
    /// SLLPS, 37:34: bit 34 2 MiB, bit 35 1 GiB second-stage pages.
    pub const SLLPS_2M: u64 = 1 << 34;
    pub const SLLPS_1G: u64 = 1 << 35;
    /// PSI, bit 39: page-selective IOTLB invalidation.
    pub const PSI: u64 = 1 << 39;
    /// NFR, 47:40: number of fault recording registers minus one.
    pub const fn nfr(count: u64) -> u64 {
        (count.wrapping_sub(1) & 0xff) << 40
    }
    /// MAMV, 53:48: the largest address mask a page-selective invalidation takes.
    pub const fn mamv(v: u64) -> u64 {
        (v & 0x3f) << 48
    }
    /// DWD, DRD, bits 54 and 55: write and read draining.
    pub const DWD: u64 = 1 << 54;
    pub const DRD: u64 = 1 << 55;
    /// ESRTPS, bit 63: SRTP also invalidates every translation cache.
    pub const ESRTPS: u64 = 1 << 63;
}

/// ECAP fields (VT-d spec §11.4.3; Linux ecap_*).
pub mod ecap {
    /// C, bit 0: page-walk coherency (no clflush of tables needed).
    pub const C: u64 = 1 << 0;
    /// QI, bit 1: queued invalidation.
    pub const QI: u64 = 1 << 1;
    /// DT, bit 2: device-TLB (ATS).
    pub const DT: u64 = 1 << 2;
    /// IR, bit 3: interrupt remapping.
    pub const IR: u64 = 1 << 3;
    /// PT, bit 6: pass-through context entries (TT = 2).
    pub const PT: u64 = 1 << 6;
    /// IRO, 17:8: offset of the IVA/IOTLB register pair, in 16-byte units.
    pub const fn iro(offset: u64) -> u64 {
        ((offset / 16) & 0x3ff) << 8
    }
    /// SMTS, bit 43: scalable-mode translation.
    pub const SMTS: u64 = 1 << 43;
    /// TDXCS, bit 50: TDX Connect (Linux ecap_tdxc in the TDX Connect series).
    pub const TDXCS: u64 = 1 << 50;
}

/// GCMD and GSTS bits: a command bit in GCMD and its status bit in GSTS share a position
/// (VT-d spec §11.4.4, §11.4.5; Linux DMA_GCMD_* / DMA_GSTS_*).
pub mod gcmd {
    /// TE / TES: translation enable.
    pub const TE: u32 = 1 << 31;
    /// SRTP / RTPS: set root table pointer (one-shot).
    pub const SRTP: u32 = 1 << 30;
    /// SFL / FLS: set fault log (advanced fault logging, one-shot; not supported).
    pub const SFL: u32 = 1 << 29;
    /// EAFL / AFLS: enable advanced fault logging (not supported).
    pub const EAFL: u32 = 1 << 28;
    /// WBF / WBFS: write buffer flush (one-shot).
    pub const WBF: u32 = 1 << 27;
    /// QIE / QIES: queued invalidation enable.
    pub const QIE: u32 = 1 << 26;
    /// IRE / IRES: interrupt remapping enable (not supported).
    pub const IRE: u32 = 1 << 25;
    /// SIRTP / IRTPS: set interrupt remap table pointer (not supported).
    pub const SIRTP: u32 = 1 << 24;
    /// CFI / CFIS: compatibility format interrupts (not supported).
    pub const CFI: u32 = 1 << 23;
}

/// RTADDR: the translation table mode, 11:10 (00 legacy, 01 scalable).
pub const RTADDR_TTM: u64 = 3 << 10;

/// CCMD fields (VT-d spec §11.4.6; Linux DMA_CCMD_*).
pub mod ccmd {
    /// ICC, bit 63: invalidate context cache; hardware clears it when done.
    pub const ICC: u64 = 1 << 63;
    /// CIRG, 62:61: requested granularity; CAIG, 60:59: actual granularity.
    pub const CIRG_SHIFT: u32 = 61;
    pub const CAIG_SHIFT: u32 = 59;
    /// FM, 33:32: function mask; SID, 31:16; DID, 15:0.
    pub const FM_SHIFT: u32 = 32;
    pub const SID_SHIFT: u32 = 16;
}

/// IOTLB register fields (VT-d spec §11.4.8.1; Linux DMA_TLB_*).
pub mod iotlb {
    /// IVT, bit 63: invalidate IOTLB; hardware clears it when done.
    pub const IVT: u64 = 1 << 63;
    /// IIRG, 61:60: requested granularity; IAIG, 58:57: actual granularity.
    pub const IIRG_SHIFT: u32 = 60;
    pub const IAIG_SHIFT: u32 = 57;
    /// DID, 47:32.
    pub const DID_SHIFT: u32 = 32;
    /// DR, DW, bits 49 and 48.
    pub const DR: u64 = 1 << 49;
    pub const DW: u64 = 1 << 48;
}

/// IVA fields (VT-d spec §11.4.8.2): 63:12 address, bit 6 IH, 5:0 AM.
pub mod iva {
    pub const IH: u64 = 1 << 6;
    pub const AM_MASK: u64 = 0x3f;
}

/// Invalidation granularities, as CCMD's CIRG/CAIG, IOTLB's IIRG/IAIG and the descriptors' G
/// encode them: 0 is reserved (in CAIG/IAIG: the request was not performed).
pub mod granularity {
    pub const NONE: u64 = 0;
    pub const GLOBAL: u64 = 1;
    /// Domain-selective.
    pub const DOMAIN: u64 = 2;
    /// Device-selective (context cache) or page-selective within a domain (IOTLB).
    pub const DEVICE_OR_PAGE: u64 = 3;
}

/// FSTS bits (VT-d spec §11.4.9.1; Linux DMA_FSTS_*).
pub mod fsts {
    /// PFO: primary fault overflow (RW1C).
    pub const PFO: u32 = 1 << 0;
    /// PPF: some fault recording register has F set (RO).
    pub const PPF: u32 = 1 << 1;
    /// IQE, ICE, ITE: invalidation queue, completion and time-out errors (RW1C).
    pub const IQE: u32 = 1 << 4;
    pub const ICE: u32 = 1 << 5;
    pub const ITE: u32 = 1 << 6;
    /// FRI, 15:8: index of the fault recording register PPF first pointed at (RO).
    pub const FRI_SHIFT: u32 = 8;
    pub const RW1C: u32 = PFO | IQE | ICE | ITE;
    /// The conditions a fault event reports.
    pub const EVENT: u32 = PFO | PPF | IQE | ICE | ITE;
}

/// FECTL and IECTL bits (VT-d spec §11.4.9.2, §11.4.9.7): bit 31 IM (interrupt mask, set at
/// reset), bit 30 IP (interrupt pending, RO).
pub mod ectl {
    pub const IM: u32 = 1 << 31;
    pub const IP: u32 = 1 << 30;
}

/// ICS bit 0: IWC, an invalidation wait descriptor with IF completed (RW1C).
pub const ICS_IWC: u32 = 1;

/// IQA fields (VT-d spec §11.4.9.4): 63:12 base, bit 11 DW (256-bit descriptors, scalable
/// mode only), 2:0 QS (2^QS 4 KiB pages).
pub mod iqa {
    pub const BASE_MASK: u64 = !0xfff;
    pub const DW: u64 = 1 << 11;
    pub const QS_MASK: u64 = 7;
}

/// IQH/IQT: the queue offset in bits 18:4 (128-bit descriptors).
pub const IQ_PTR_MASK: u64 = 0x7fff0;

/// IQER fields (VT-d spec §11.4.9.9; Linux DMAR_IQER_REG_IQEI/ITESID/ICESID): IQEI 3:0,
/// ITESID 47:32, ICESID 63:48.
pub const IQER_IQEI: u64 = 0xf;
pub const IQER_ITESID_SHIFT: u32 = 32;
pub const IQER_ITESID: u64 = 0xffff << IQER_ITESID_SHIFT;

/// IQER's IQEI (3:0), why the queue stopped (VT-d spec §11.4.9.9).
pub mod iqei {
    pub const INVALID_TAIL: u64 = 1;
    pub const FETCH_ERROR: u64 = 2;
    pub const INVALID_TYPE: u64 = 3;
    pub const RESERVED_FIELD: u64 = 4;
}

/// A fault recording register (128-bit, VT-d spec §11.4.14): F is bit 127, the top bit of the
/// upper quadword (Linux DMA_FRCD_F on the dword at +12); software writes 1 to clear it.
pub const FRCD_F: u64 = 1 << 63;
pub const FRCD_LEN: u64 = 16;
