//! The virtio-iommu device's wire format (virtio 1.2 §5.13; Linux include/uapi/linux/virtio_iommu.h
//! decodes the same bytes): feature bits, the configuration layout, request types, status codes,
//! and the decoding of a request's device-readable part.

use abi::virtio_iommu as vio;
pub use abi::virtio_iommu::{config, fault, feature, map_flag, req, status, ATTACH_F_BYPASS, PROBE_T_RESV_MEM, RESV_MEM_T_MSI, TAIL_LEN};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

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
        /// The type's structure from the front of `b`, or INVAL when `b` is shorter.
        fn read<T: FromBytes>(b: &[u8]) -> Result<T, u8> {
            T::read_from_prefix(b).map(|(t, _)| t).map_err(|_| status::INVAL)
        }
        let ty = *b.first().ok_or(status::INVAL)?;
        let r = match ty {
            req::ATTACH => {
                let a: vio::Attach = read(b)?;
                Request::Attach { domain: a.domain.get(), endpoint: a.endpoint.get(), flags: a.flags.get() }
            }
            req::DETACH => {
                let a: vio::Attach = read(b)?;
                Request::Detach { domain: a.domain.get(), endpoint: a.endpoint.get() }
            }
            req::MAP => {
                let m: vio::Map = read(b)?;
                Request::Map {
                    domain: m.domain.get(),
                    virt_start: m.virt_start.get(),
                    virt_end: m.virt_end.get(),
                    phys_start: m.phys_start.get(),
                    flags: m.flags.get(),
                }
            }
            req::UNMAP => {
                let u: vio::Unmap = read(b)?;
                Request::Unmap { domain: u.domain.get(), virt_start: u.virt_start.get(), virt_end: u.virt_end.get() }
            }
            req::PROBE => Request::Probe { endpoint: read::<vio::Probe>(b)?.endpoint.get() },
            _ => return Err(status::UNSUPP),
        };
        Ok(r)
    }

    /// Bytes of the device-readable part the driver sends for this request (Linux's structures
    /// less the tail, and for PROBE less the properties).
    pub fn readable_len(ty: u8) -> usize {
        match ty {
            req::ATTACH | req::DETACH => size_of::<vio::Attach>(),
            req::MAP => size_of::<vio::Map>(),
            req::UNMAP => size_of::<vio::Unmap>(),
            req::PROBE => size_of::<vio::Probe>(),
            _ => size_of::<vio::ReqHead>(),
        }
    }
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
    pub const LEN: usize = size_of::<vio::FaultRecord>();

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let r = vio::FaultRecord {
            reason: self.reason,
            flags: U32::new(self.flags),
            endpoint: U32::new(self.endpoint),
            address: U64::new(self.address),
            ..Default::default()
        };
        let mut b = [0u8; Self::LEN];
        b.copy_from_slice(r.as_bytes());
        b
    }
}

/// One RESV_MEM property: `[start, end]` of subtype `subtype` (struct virtio_iommu_probe_resv_mem).
pub fn resv_mem_property(subtype: u8, start: u64, end: u64) -> [u8; 24] {
    let p = vio::ResvMem {
        ty: U16::new(PROBE_T_RESV_MEM),
        // The bytes after the type and length fields.
        length: U16::new(20),
        subtype,
        reserved: [0; 3],
        start: U64::new(start),
        end: U64::new(end),
    };
    let mut b = [0u8; 24];
    b.copy_from_slice(p.as_bytes());
    b
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
