//! The virtio-iommu device's wire format (virtio 1.2 §5.13; Linux include/uapi/linux/virtio_iommu.h
//! decodes the same bytes): feature bits, the configuration layout, request types, status codes,
//! and the decoding of a request's device-readable part.

/// Virtio device ID of the IOMMU (§5.13.1).
pub const DEVICE_ID: u16 = 23;

/// Feature bits (§5.13.3).
pub mod feature {
    pub const INPUT_RANGE: u64 = 1 << 0;
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    pub const MAP_UNMAP: u64 = 1 << 2;
    pub const BYPASS: u64 = 1 << 3;
    pub const PROBE: u64 = 1 << 4;
    pub const MMIO: u64 = 1 << 5;
    pub const BYPASS_CONFIG: u64 = 1 << 6;
}

/// struct virtio_iommu_config offsets (§5.13.4).
pub mod config {
    pub const PAGE_SIZE_MASK: u64 = 0;
    pub const INPUT_START: u64 = 8;
    pub const INPUT_END: u64 = 16;
    pub const DOMAIN_START: u64 = 24;
    pub const DOMAIN_END: u64 = 28;
    pub const PROBE_SIZE: u64 = 32;
    pub const BYPASS: u64 = 36;
    pub const LEN: usize = 40;
}

/// Request types (§5.13.6).
pub mod req {
    pub const ATTACH: u8 = 1;
    pub const DETACH: u8 = 2;
    pub const MAP: u8 = 3;
    pub const UNMAP: u8 = 4;
    pub const PROBE: u8 = 5;
}

/// Request status codes, in the tail (§5.13.6).
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
    pub const DEVERR: u8 = 3;
    pub const INVAL: u8 = 4;
    pub const RANGE: u8 = 5;
    pub const NOENT: u8 = 6;
    pub const FAULT: u8 = 7;
    pub const NOMEM: u8 = 8;
}

/// MAP flags (§5.13.6.6).
pub mod map_flag {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const MMIO: u32 = 1 << 2;
}

/// ATTACH flags (§5.13.6.3).
pub const ATTACH_F_BYPASS: u32 = 1 << 0;

/// Probe properties (§5.13.6.8): RESV_MEM and its MSI subtype.
pub const PROBE_T_RESV_MEM: u16 = 1;
pub const RESV_MEM_T_MSI: u8 = 1;
/// The tail: status and three reserved bytes.
pub const TAIL_LEN: usize = 4;

/// A decoded request (device-readable part); reserved fields are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Attach { domain: u32, endpoint: u32, flags: u32 },
    Detach { domain: u32, endpoint: u32 },
    Map { domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32 },
    Unmap { domain: u32, virt_start: u64, virt_end: u64 },
    Probe { endpoint: u32 },
}

impl Request {
    /// The request in `b`, or the status to answer: UNSUPP for an unknown type, INVAL when the
    /// readable part is shorter than the type's structure.
    pub fn decode(b: &[u8]) -> Result<Request, u8> {
        let u32_at = |i: usize| b.get(i..i.saturating_add(4)).map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()));
        let u64_at = |i: usize| b.get(i..i.saturating_add(8)).map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()));
        // Lengths of the readable part: head (4) + fields + reserved, up to the tail.
        let need = |n: usize| if b.len() >= n { Ok(()) } else { Err(status::INVAL) };
        let ty = *b.first().ok_or(status::INVAL)?;
        let r = match ty {
            req::ATTACH => {
                need(20)?;
                Request::Attach { domain: u32_at(4).unwrap_or(0), endpoint: u32_at(8).unwrap_or(0), flags: u32_at(12).unwrap_or(0) }
            }
            req::DETACH => {
                need(20)?;
                Request::Detach { domain: u32_at(4).unwrap_or(0), endpoint: u32_at(8).unwrap_or(0) }
            }
            req::MAP => {
                need(36)?;
                Request::Map {
                    domain: u32_at(4).unwrap_or(0),
                    virt_start: u64_at(8).unwrap_or(0),
                    virt_end: u64_at(16).unwrap_or(0),
                    phys_start: u64_at(24).unwrap_or(0),
                    flags: u32_at(32).unwrap_or(0),
                }
            }
            req::UNMAP => {
                need(28)?;
                Request::Unmap { domain: u32_at(4).unwrap_or(0), virt_start: u64_at(8).unwrap_or(0), virt_end: u64_at(16).unwrap_or(0) }
            }
            req::PROBE => {
                need(72)?;
                Request::Probe { endpoint: u32_at(4).unwrap_or(0) }
            }
            _ => return Err(status::UNSUPP),
        };
        Ok(r)
    }

    /// Bytes of the device-readable part the driver sends for this request (Linux's structures
    /// less the tail, and for PROBE less the properties).
    pub fn readable_len(ty: u8) -> usize {
        match ty {
            req::ATTACH | req::DETACH => 20,
            req::MAP => 36,
            req::UNMAP => 28,
            req::PROBE => 72,
            _ => 4,
        }
    }
}

/// Fault reasons and flags of the event queue's fault record (§5.13.6.9).
pub mod fault {
    pub const R_UNKNOWN: u8 = 0;
    pub const R_DOMAIN: u8 = 1;
    pub const R_MAPPING: u8 = 2;
    pub const F_READ: u32 = 1 << 0;
    pub const F_WRITE: u32 = 1 << 1;
    pub const F_EXEC: u32 = 1 << 2;
    pub const F_ADDRESS: u32 = 1 << 8;
}

/// struct virtio_iommu_fault: what the device writes into an event queue buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub reason: u8,
    pub flags: u32,
    pub endpoint: u32,
    pub address: u64,
}

impl Fault {
    pub const LEN: usize = 24;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.reason;
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.endpoint.to_le_bytes());
        b[16..24].copy_from_slice(&self.address.to_le_bytes());
        b
    }
}

/// One RESV_MEM property: `[start, end]` of subtype `subtype` (struct virtio_iommu_probe_resv_mem).
pub fn resv_mem_property(subtype: u8, start: u64, end: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..2].copy_from_slice(&PROBE_T_RESV_MEM.to_le_bytes());
    // length counts the bytes after the type and length fields.
    p[2..4].copy_from_slice(&20u16.to_le_bytes());
    p[4] = subtype;
    p[8..16].copy_from_slice(&start.to_le_bytes());
    p[16..24].copy_from_slice(&end.to_le_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_linux_layouts() {
        let mut map = vec![req::MAP, 0, 0, 0];
        map.extend_from_slice(&7u32.to_le_bytes());
        map.extend_from_slice(&0x1000u64.to_le_bytes());
        map.extend_from_slice(&0x1fffu64.to_le_bytes());
        map.extend_from_slice(&0x8000u64.to_le_bytes());
        map.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(map.len(), Request::readable_len(req::MAP));
        assert_eq!(
            Request::decode(&map),
            Ok(Request::Map { domain: 7, virt_start: 0x1000, virt_end: 0x1fff, phys_start: 0x8000, flags: 3 })
        );
        assert_eq!(Request::decode(&map[..35]), Err(status::INVAL));
        assert_eq!(Request::decode(&[9, 0, 0, 0]), Err(status::UNSUPP));
        assert_eq!(Request::decode(&[]), Err(status::INVAL));
        let mut probe = vec![req::PROBE, 0, 0, 0, 0x20, 0, 0, 0];
        probe.resize(72, 0xaa);
        assert_eq!(Request::decode(&probe), Ok(Request::Probe { endpoint: 0x20 }));
        let p = resv_mem_property(RESV_MEM_T_MSI, 0xfee0_0000, 0xfeef_ffff);
        assert_eq!(&p[..5], &[1, 0, 20, 0, 1]);
    }
}
