//! The virtio-iommu device's wire format (virtio 1.2 §5.13; Linux include/uapi/linux/virtio_iommu.h
//! decodes the same bytes): feature bits, the configuration layout, request types, status codes,
//! and the decoding of a request's device-readable part.

pub use abi::virtio_iommu::{config, feature, map_flag, req, status, ATTACH_F_BYPASS, PROBE_T_RESV_MEM, RESV_MEM_T_MSI, TAIL_LEN};

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
