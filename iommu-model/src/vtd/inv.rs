//! Invalidation descriptors of the legacy-mode queue (128 bits each; VT-d spec §6.5.2; Linux
//! iommu.h QI_*; reserved bits as QEMU's VTD_INV_DESC_*_RSVD masks). Type is qw0 bits 3:0 with
//! bits 11:9 as its high part (zero for every type below 16).

use super::regs::iqei;

pub const CONTEXT_CACHE: u64 = 0x1;
pub const IOTLB: u64 = 0x2;
pub const DEVICE_TLB: u64 = 0x3;
pub const INTERRUPT_ENTRY_CACHE: u64 = 0x4;
pub const WAIT: u64 = 0x5;

/// Context-cache: qw0 bits 8:6, 15:12 and 63:50 reserved (QEMU VTD_INV_DESC_CC_RSVD); qw1 all.
const CC_RSVD: u64 = 0xfffc_0000_0000_f1c0;
/// IOTLB: qw0 bit 8, 15:12, 63:32 (QEMU VTD_INV_DESC_IOTLB_RSVD_LO); qw1 11:7 (RSVD_HI).
const IOTLB_RSVD_LO: u64 = 0xffff_ffff_0000_f100;
const IOTLB_RSVD_HI: u64 = 0xf80;
/// Wait: qw0 bit 8 and 31:12 (QEMU VTD_INV_DESC_WAIT_RSVD_LO); qw1 1:0.
const WAIT_RSVD_LO: u64 = 0xffff_f100;
const WAIT_RSVD_HI: u64 = 0x3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// G: 1 global, 2 domain-selective (DID), 3 device-selective (SID with function mask FM).
    ContextCache { g: u64, did: u16, sid: u16, fm: u8 },
    /// G: 1 global, 2 domain-selective, 3 page-selective (ADDR, 2^AM pages; IH leaf-only).
    Iotlb { g: u64, did: u16, addr: u64, am: u8, ih: bool },
    /// IF: set ICS.IWC (and the completion event); SW: write `data` (32 bits) at `addr`.
    Wait { interrupt: bool, status_write: bool, data: u32, addr: u64 },
}

/// Decode one descriptor; `Err(IQEI)` is why the queue stops at it. Types the unit does not
/// support (device-TLB without ECAP.DT, interrupt entry cache without ECAP.IR, the PASID-based
/// and page-request ones of scalable mode) are invalid types.
pub fn decode(qw0: u64, qw1: u64) -> Result<Descriptor, u64> {
    let ty = (qw0 & 0xf) | ((qw0 >> 9) & 7) << 4;
    let g = (qw0 >> 4) & 3;
    match ty {
        CONTEXT_CACHE => {
            if qw0 & CC_RSVD != 0 || qw1 != 0 || g == 0 {
                return Err(iqei::RESERVED_FIELD);
            }
            Ok(Descriptor::ContextCache { g, did: (qw0 >> 16) as u16, sid: (qw0 >> 32) as u16, fm: ((qw0 >> 48) & 3) as u8 })
        }
        IOTLB => {
            if qw0 & IOTLB_RSVD_LO != 0 || qw1 & IOTLB_RSVD_HI != 0 || g == 0 {
                return Err(iqei::RESERVED_FIELD);
            }
            Ok(Descriptor::Iotlb { g, did: (qw0 >> 16) as u16, addr: qw1 & !0xfff, am: (qw1 & 0x3f) as u8, ih: qw1 & (1 << 6) != 0 })
        }
        WAIT => {
            if qw0 & WAIT_RSVD_LO != 0 || qw1 & WAIT_RSVD_HI != 0 {
                return Err(iqei::RESERVED_FIELD);
            }
            // FN (fence) and PD (page-request drain) need nothing here: descriptors complete in
            // order, and there is no page request queue.
            Ok(Descriptor::Wait {
                interrupt: qw0 & (1 << 4) != 0,
                status_write: qw0 & (1 << 5) != 0,
                data: (qw0 >> 32) as u32,
                addr: qw1 & !3,
            })
        }
        _ => Err(iqei::INVALID_TYPE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_descriptors_decode() {
        // qi_flush_context(iommu, 0, 0, 0, DMA_CCMD_GLOBAL_INVL): QI_CC_GRAN(1 << 61) = 1 << 4.
        assert_eq!(decode(0x11, 0), Ok(Descriptor::ContextCache { g: 1, did: 0, sid: 0, fm: 0 }));
        // Device-selective for 00:04.0 in domain 5.
        assert_eq!(decode(0x31 | 5 << 16 | 0x20 << 32, 0), Ok(Descriptor::ContextCache { g: 3, did: 5, sid: 0x20, fm: 0 }));
        // qi_desc_iotlb page-selective: DID 3, 4 pages at 0x20_0000 with IH.
        assert_eq!(
            decode(0x32 | 3 << 16, 0x20_0000 | 1 << 6 | 2),
            Ok(Descriptor::Iotlb { g: 3, did: 3, addr: 0x20_0000, am: 2, ih: true })
        );
        // qi_submit_sync's wait: QI_IWD_STATUS_DATA(QI_DONE) | QI_IWD_STATUS_WRITE | QI_IWD_TYPE.
        assert_eq!(
            decode(2 << 32 | 1 << 5 | 5, 0x1234_5678),
            Ok(Descriptor::Wait { interrupt: false, status_write: true, data: 2, addr: 0x1234_5678 })
        );
    }

    #[test]
    fn reserved_bits_and_types_are_refused() {
        assert_eq!(decode(0x11 | 1 << 6, 0), Err(iqei::RESERVED_FIELD));
        assert_eq!(decode(0x11, 1), Err(iqei::RESERVED_FIELD), "context-cache qw1 is reserved");
        assert_eq!(decode(0x01, 0), Err(iqei::RESERVED_FIELD), "granularity 0");
        assert_eq!(decode(0x12 | 1 << 32, 0), Err(iqei::RESERVED_FIELD));
        assert_eq!(decode(0x12, 1 << 7), Err(iqei::RESERVED_FIELD));
        assert_eq!(decode(0x25, 1), Err(iqei::RESERVED_FIELD), "status address bits 1:0");
        assert_eq!(decode(0x25 | 1 << 12, 0), Err(iqei::RESERVED_FIELD));
        for ty in [0, DEVICE_TLB, INTERRUPT_ENTRY_CACHE, 6, 7, 8, 9, 0xf] {
            assert_eq!(decode(ty | 0x10, 0), Err(iqei::INVALID_TYPE), "type {ty}");
        }
        // A high type part makes an otherwise valid wait descriptor a type above 15.
        assert_eq!(decode(0x25 | 1 << 9, 0), Err(iqei::INVALID_TYPE));
    }
}
