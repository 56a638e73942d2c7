//! The TDISP interface state machine and its messages (PCIe 6.x TDISP; message and error codes
//! and structures as DMTF libspdm include/industry_standard/pci_tdisp.h defines them). The
//! device side is [`TdispResponder`]: it parses untrusted bytes and answers every request,
//! TDISP_ERROR for anything malformed. SPDM secure sessions are out of scope: messages travel
//! in the clear (docs/device-abi.md says how).

pub const VERSION: u8 = 0x10;
pub const HEADER_LEN: usize = 16;

/// Request codes.
pub mod req {
    pub const GET_TDISP_VERSION: u8 = 0x81;
    pub const GET_TDISP_CAPABILITIES: u8 = 0x82;
    pub const LOCK_INTERFACE: u8 = 0x83;
    pub const GET_DEVICE_INTERFACE_REPORT: u8 = 0x84;
    pub const GET_DEVICE_INTERFACE_STATE: u8 = 0x85;
    pub const START_INTERFACE: u8 = 0x86;
    pub const STOP_INTERFACE: u8 = 0x87;
    pub const BIND_P2P_STREAM: u8 = 0x88;
    pub const UNBIND_P2P_STREAM: u8 = 0x89;
    pub const SET_MMIO_ATTRIBUTE: u8 = 0x8a;
    pub const VDM: u8 = 0x8b;
}

/// Response codes: the request code minus 0x80, and TDISP_ERROR.
pub mod rsp {
    pub const TDISP_VERSION: u8 = 0x01;
    pub const TDISP_CAPABILITIES: u8 = 0x02;
    pub const LOCK_INTERFACE: u8 = 0x03;
    pub const DEVICE_INTERFACE_REPORT: u8 = 0x04;
    pub const DEVICE_INTERFACE_STATE: u8 = 0x05;
    pub const START_INTERFACE: u8 = 0x06;
    pub const STOP_INTERFACE: u8 = 0x07;
    pub const TDISP_ERROR: u8 = 0x7f;
}

/// TDISP_ERROR codes.
pub mod err {
    pub const INVALID_REQUEST: u32 = 0x01;
    pub const BUSY: u32 = 0x03;
    pub const INVALID_INTERFACE_STATE: u32 = 0x04;
    pub const UNSPECIFIED: u32 = 0x05;
    pub const UNSUPPORTED_REQUEST: u32 = 0x07;
    pub const VERSION_MISMATCH: u32 = 0x41;
    pub const INVALID_INTERFACE: u32 = 0x101;
    pub const INVALID_NONCE: u32 = 0x102;
    pub const INSUFFICIENT_ENTROPY: u32 = 0x103;
    pub const INVALID_DEVICE_CONFIGURATION: u32 = 0x104;
}

/// DEVICE_INTERFACE_REPORT interface_info bits.
pub mod interface_info {
    pub const NO_UPDATE_AFTER_LOCK: u16 = 1 << 0;
    pub const DMA_WITHOUT_PASID: u16 = 1 << 1;
    pub const DMA_WITH_PASID: u16 = 1 << 2;
    pub const ATS_SUPPORTED: u16 = 1 << 3;
    pub const PRS_SUPPORTED: u16 = 1 << 4;
}

/// MMIO range attributes of the report.
pub mod mmio_attr {
    pub const MSIX_TABLE: u16 = 1 << 0;
    pub const MSIX_PBA: u16 = 1 << 1;
    pub const IS_NON_TEE_MEM: u16 = 1 << 2;
    pub const IS_MEM_ATTR_UPDATABLE: u16 = 1 << 3;
}

/// LOCK_INTERFACE flags.
pub mod lock_flags {
    pub const NO_FW_UPDATE: u16 = 1 << 0;
    pub const SYSTEM_CACHE_LINE_SIZE: u16 = 1 << 1;
    pub const LOCK_MSIX: u16 = 1 << 2;
    pub const BIND_P2P: u16 = 1 << 3;
    pub const ALL_REQUEST_REDIRECT: u16 = 1 << 4;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TdiState {
    #[default]
    ConfigUnlocked = 0,
    ConfigLocked = 1,
    Run = 2,
    Error = 3,
}

impl TdiState {
    pub fn name(self) -> &'static str {
        match self {
            TdiState::ConfigUnlocked => "CONFIG_UNLOCKED",
            TdiState::ConfigLocked => "CONFIG_LOCKED",
            TdiState::Run => "RUN",
            TdiState::Error => "ERROR",
        }
    }
    pub fn from_u8(v: u8) -> Option<TdiState> {
        [TdiState::ConfigUnlocked, TdiState::ConfigLocked, TdiState::Run, TdiState::Error].into_iter().find(|s| *s as u8 == v)
    }
}

/// One MMIO range of the interface report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRange {
    pub first_page: u64,
    pub pages: u32,
    pub attributes: u16,
    pub range_id: u16,
}

/// A request as a requester (the TSM, the firmware, a guest test) builds it.
pub fn request(message_type: u8, function_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = header(message_type, function_id);
    m.extend_from_slice(payload);
    m
}

fn header(message_type: u8, function_id: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.push(VERSION);
    m.push(message_type);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&function_id.to_le_bytes());
    m.extend_from_slice(&[0; 8]);
    m
}

/// LOCK_INTERFACE_REQUEST's parameters (flags, default stream, MMIO reporting offset, P2P mask).
pub fn lock_interface(function_id: u32, flags: u16, default_stream_id: u8, mmio_reporting_offset: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(20);
    p.extend_from_slice(&flags.to_le_bytes());
    p.push(default_stream_id);
    p.push(0);
    p.extend_from_slice(&mmio_reporting_offset.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    request(req::LOCK_INTERFACE, function_id, &p)
}

pub fn start_interface(function_id: u32, nonce: &[u8; 32]) -> Vec<u8> {
    request(req::START_INTERFACE, function_id, nonce)
}

pub fn get_report(function_id: u32, offset: u16, length: u16) -> Vec<u8> {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend_from_slice(&length.to_le_bytes());
    request(req::GET_DEVICE_INTERFACE_REPORT, function_id, &p)
}

/// A parsed response (what requesters need of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Version(Vec<u8>),
    Capabilities(Vec<u8>),
    Locked { nonce: [u8; 32] },
    Report { portion: Vec<u8>, remainder: u16 },
    State(TdiState),
    Started,
    Stopped,
    Error { code: u32, data: u32 },
}

pub fn parse_response(m: &[u8]) -> Option<Response> {
    if m.len() < HEADER_LEN || m[0] != VERSION {
        return None;
    }
    let body = &m[HEADER_LEN..];
    let u16_at = |i: usize| body.get(i..i.saturating_add(2)).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |i: usize| body.get(i..i.saturating_add(4)).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    Some(match m[1] {
        rsp::TDISP_VERSION => {
            let n = *body.first()? as usize;
            Response::Version(body.get(1..n.checked_add(1)?)?.to_vec())
        }
        rsp::TDISP_CAPABILITIES => Response::Capabilities(body.to_vec()),
        rsp::LOCK_INTERFACE => Response::Locked { nonce: body.get(..32)?.try_into().ok()? },
        rsp::DEVICE_INTERFACE_REPORT => {
            let portion = u16_at(0)? as usize;
            Response::Report { portion: body.get(4..portion.checked_add(4)?)?.to_vec(), remainder: u16_at(2)? }
        }
        rsp::DEVICE_INTERFACE_STATE => Response::State(TdiState::from_u8(*body.first()?)?),
        rsp::START_INTERFACE => Response::Started,
        rsp::STOP_INTERFACE => Response::Stopped,
        rsp::TDISP_ERROR => Response::Error { code: u32_at(0)?, data: u32_at(4)? },
        _ => return None,
    })
}

/// The device side of one TDI.
#[derive(Clone, Debug)]
pub struct TdispResponder {
    pub function_id: u32,
    state: TdiState,
    nonce: Option<[u8; 32]>,
    nonce_seed: u64,
    lock_flags: u16,
    mmio_reporting_offset: u64,
    ranges: Vec<MmioRange>,
}

/// Largest portion of the report one response carries.
pub const MAX_REPORT_PORTION: u16 = 0x400;

impl TdispResponder {
    pub fn new(function_id: u32, ranges: Vec<MmioRange>) -> Self {
        TdispResponder {
            function_id,
            state: TdiState::ConfigUnlocked,
            nonce: None,
            nonce_seed: 0x7469_6f6d_6d75_0001 ^ u64::from(function_id),
            lock_flags: 0,
            mmio_reporting_offset: 0,
            ranges,
        }
    }

    pub fn state(&self) -> TdiState {
        self.state
    }

    /// A change to the device's configuration (config space, BARs, MSI-X when locked) made
    /// outside TDISP: in CONFIG_LOCKED or RUN the TDI goes to ERROR (TDISP §11.2).
    pub fn config_changed(&mut self) {
        if matches!(self.state, TdiState::ConfigLocked | TdiState::Run) {
            self.state = TdiState::Error;
            self.nonce = None;
        }
    }

    /// An error the device detected itself (an internal fault, a failed integrity check):
    /// TDISP §11.2 moves a TDI in CONFIG_LOCKED or RUN to ERROR, where it stops T=1 DMA and MMIO
    /// until the host's STOP_INTERFACE takes it to CONFIG_UNLOCKED. False if it was not locked.
    pub fn fail(&mut self) -> bool {
        let before = self.state;
        self.config_changed();
        self.state != before
    }

    /// The device's interface report (TDISP DEVICE_INTERFACE_REPORT structure): interface_info,
    /// reserved, MSI-X message control, LNR control, TPH control, MMIO range count, the ranges,
    /// and an empty device-specific part.
    pub fn report(&self) -> Vec<u8> {
        let mut r = Vec::new();
        let no_update = if self.lock_flags & lock_flags::NO_FW_UPDATE != 0 { interface_info::NO_UPDATE_AFTER_LOCK } else { 0 };
        r.extend_from_slice(&(no_update | interface_info::DMA_WITHOUT_PASID).to_le_bytes());
        r.extend_from_slice(&[0; 2]);
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for m in &self.ranges {
            r.extend_from_slice(&m.first_page.wrapping_add(self.mmio_reporting_offset >> 12).to_le_bytes());
            r.extend_from_slice(&m.pages.to_le_bytes());
            r.extend_from_slice(&m.attributes.to_le_bytes());
            r.extend_from_slice(&m.range_id.to_le_bytes());
        }
        r.extend_from_slice(&0u32.to_le_bytes());
        r
    }

    fn error(&self, code: u32, data: u32) -> Vec<u8> {
        let mut m = header(rsp::TDISP_ERROR, self.function_id);
        m.extend_from_slice(&code.to_le_bytes());
        m.extend_from_slice(&data.to_le_bytes());
        m
    }

    /// Not random: the model has no entropy source and needs none (no cryptography); the nonce
    /// only has to match between LOCK and START.
    fn next_nonce(&mut self) -> [u8; 32] {
        let mut n = [0u8; 32];
        for chunk in n.chunks_mut(8) {
            // splitmix64
            self.nonce_seed = self.nonce_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.nonce_seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        n
    }

    /// Answer one request. Every input gets a response.
    pub fn handle_request(&mut self, m: &[u8]) -> Vec<u8> {
        if m.len() < HEADER_LEN {
            return self.error(err::INVALID_REQUEST, 0);
        }
        if m[0] != VERSION {
            return self.error(err::VERSION_MISMATCH, 0);
        }
        let fid = u32::from_le_bytes([m[4], m[5], m[6], m[7]]);
        if fid != self.function_id || m[8..16].iter().any(|&b| b != 0) {
            return self.error(err::INVALID_INTERFACE, 0);
        }
        let body = &m[HEADER_LEN..];
        let state = self.state;
        match m[1] {
            req::GET_TDISP_VERSION => {
                let mut r = header(rsp::TDISP_VERSION, fid);
                r.extend_from_slice(&[1, VERSION]);
                r
            }
            req::GET_TDISP_CAPABILITIES => {
                if body.len() < 4 {
                    return self.error(err::INVALID_REQUEST, 0);
                }
                let mut r = header(rsp::TDISP_CAPABILITIES, fid);
                r.extend_from_slice(&0u32.to_le_bytes()); // dsm_caps
                let mut supported = [0u8; 16];
                // Request codes 0x81..=0x87: bits 1..=7 of the first byte.
                supported[0] = 0xfe;
                r.extend_from_slice(&supported);
                let flags = lock_flags::NO_FW_UPDATE | lock_flags::LOCK_MSIX;
                r.extend_from_slice(&flags.to_le_bytes());
                r.extend_from_slice(&[0; 3]);
                r.extend_from_slice(&[52, 1, 1]); // dev_addr_width, num_req_this, num_req_all
                r
            }
            req::LOCK_INTERFACE => {
                if body.len() < 20 {
                    return self.error(err::INVALID_REQUEST, 0);
                }
                if state != TdiState::ConfigUnlocked {
                    return self.error(err::INVALID_INTERFACE_STATE, 0);
                }
                self.lock_flags = u16::from_le_bytes([body[0], body[1]]);
                self.mmio_reporting_offset = u64::from_le_bytes(body[4..12].try_into().unwrap_or([0; 8]));
                let nonce = self.next_nonce();
                self.nonce = Some(nonce);
                self.state = TdiState::ConfigLocked;
                let mut r = header(rsp::LOCK_INTERFACE, fid);
                r.extend_from_slice(&nonce);
                r
            }
            req::GET_DEVICE_INTERFACE_REPORT => {
                if body.len() < 4 {
                    return self.error(err::INVALID_REQUEST, 0);
                }
                if !matches!(state, TdiState::ConfigLocked | TdiState::Run) {
                    return self.error(err::INVALID_INTERFACE_STATE, 0);
                }
                let report = self.report();
                let off = u16::from_le_bytes([body[0], body[1]]) as usize;
                let len = u16::from_le_bytes([body[2], body[3]]).min(MAX_REPORT_PORTION) as usize;
                if off > report.len() {
                    return self.error(err::INVALID_REQUEST, 0);
                }
                let portion = &report[off..off.saturating_add(len).min(report.len())];
                let remainder = report.len().saturating_sub(off).saturating_sub(portion.len());
                let mut r = header(rsp::DEVICE_INTERFACE_REPORT, fid);
                r.extend_from_slice(&(portion.len() as u16).to_le_bytes());
                r.extend_from_slice(&(remainder as u16).to_le_bytes());
                r.extend_from_slice(portion);
                r
            }
            req::GET_DEVICE_INTERFACE_STATE => {
                let mut r = header(rsp::DEVICE_INTERFACE_STATE, fid);
                r.push(state as u8);
                r
            }
            req::START_INTERFACE => {
                if body.len() < 32 {
                    return self.error(err::INVALID_REQUEST, 0);
                }
                if state != TdiState::ConfigLocked {
                    return self.error(err::INVALID_INTERFACE_STATE, 0);
                }
                if self.nonce.as_ref().map(|n| &n[..]) != Some(&body[..32]) {
                    // Choice (docs/rmp.md): a wrong nonce is a security violation: ERROR.
                    self.state = TdiState::Error;
                    self.nonce = None;
                    return self.error(err::INVALID_NONCE, 0);
                }
                self.nonce = None;
                self.state = TdiState::Run;
                header(rsp::START_INTERFACE, fid)
            }
            req::STOP_INTERFACE => {
                self.state = TdiState::ConfigUnlocked;
                self.nonce = None;
                header(rsp::STOP_INTERFACE, fid)
            }
            _ => self.error(err::UNSUPPORTED_REQUEST, u32::from(m[1])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_and_nonce(r: &mut TdispResponder) -> [u8; 32] {
        let fid = r.function_id;
        match parse_response(&r.handle_request(&lock_interface(fid, lock_flags::NO_FW_UPDATE, 0, 0))) {
            Some(Response::Locked { nonce }) => nonce,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lock_start_stop() {
        let mut r = TdispResponder::new(7, vec![MmioRange { first_page: 0xfe000, pages: 1, attributes: 0, range_id: 0 }]);
        let nonce = lock_and_nonce(&mut r);
        assert_eq!(r.state(), TdiState::ConfigLocked);
        let report = r.handle_request(&get_report(7, 0, 0x400));
        match parse_response(&report) {
            Some(Response::Report { portion, remainder: 0 }) => {
                assert_eq!(u32::from_le_bytes(portion[12..16].try_into().unwrap()), 1, "one MMIO range");
                assert_eq!(u64::from_le_bytes(portion[16..24].try_into().unwrap()), 0xfe000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_response(&r.handle_request(&start_interface(7, &nonce))), Some(Response::Started));
        assert_eq!(r.state(), TdiState::Run);
        assert_eq!(
            parse_response(&r.handle_request(&request(req::GET_DEVICE_INTERFACE_STATE, 7, &[]))),
            Some(Response::State(TdiState::Run))
        );
        assert_eq!(parse_response(&r.handle_request(&request(req::STOP_INTERFACE, 7, &[]))), Some(Response::Stopped));
        assert_eq!(r.state(), TdiState::ConfigUnlocked);
    }

    #[test]
    fn errors_and_transitions_to_error() {
        let mut r = TdispResponder::new(7, vec![]);
        let e = |m: Vec<u8>| match parse_response(&m) {
            Some(Response::Error { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(e(r.handle_request(&start_interface(7, &[0; 32]))), err::INVALID_INTERFACE_STATE);
        assert_eq!(e(r.handle_request(&get_report(7, 0, 16))), err::INVALID_INTERFACE_STATE);
        assert_eq!(e(r.handle_request(&request(req::GET_DEVICE_INTERFACE_STATE, 8, &[]))), err::INVALID_INTERFACE);
        assert_eq!(e(r.handle_request(&[0x10, 0x81])), err::INVALID_REQUEST);
        assert_eq!(
            e(r.handle_request(&{
                let mut m = request(req::GET_TDISP_VERSION, 7, &[]);
                m[0] = 0x20;
                m
            })),
            err::VERSION_MISMATCH
        );
        assert_eq!(e(r.handle_request(&request(req::VDM, 7, &[]))), err::UNSUPPORTED_REQUEST);
        let nonce = lock_and_nonce(&mut r);
        assert_eq!(e(r.handle_request(&lock_interface(7, 0, 0, 0))), err::INVALID_INTERFACE_STATE);
        let mut wrong = nonce;
        wrong[0] ^= 1;
        assert_eq!(e(r.handle_request(&start_interface(7, &wrong))), err::INVALID_NONCE);
        assert_eq!(r.state(), TdiState::Error);
        assert_eq!(e(r.handle_request(&start_interface(7, &nonce))), err::INVALID_INTERFACE_STATE);
        r.handle_request(&request(req::STOP_INTERFACE, 7, &[]));
        let nonce = lock_and_nonce(&mut r);
        r.handle_request(&start_interface(7, &nonce));
        r.config_changed();
        assert_eq!(r.state(), TdiState::Error, "config change in RUN");
        r.handle_request(&request(req::STOP_INTERFACE, 7, &[]));
        r.config_changed();
        assert_eq!(r.state(), TdiState::ConfigUnlocked, "config change while unlocked is fine");
        assert!(!r.fail(), "an error while unlocked leaves it unlocked");
        let nonce = lock_and_nonce(&mut r);
        r.handle_request(&start_interface(7, &nonce));
        assert!(r.fail());
        assert_eq!(r.state(), TdiState::Error, "a device error in RUN");
        assert_eq!(e(r.handle_request(&get_report(7, 0, 16))), err::INVALID_INTERFACE_STATE, "no report in ERROR");
        assert_eq!(parse_response(&r.handle_request(&request(req::STOP_INTERFACE, 7, &[]))), Some(Response::Stopped));
        assert_eq!(r.state(), TdiState::ConfigUnlocked, "STOP recovers it");
    }

    #[test]
    fn nonces_differ_between_locks() {
        let mut r = TdispResponder::new(1, vec![]);
        let a = lock_and_nonce(&mut r);
        r.handle_request(&request(req::STOP_INTERFACE, 1, &[]));
        assert_ne!(a, lock_and_nonce(&mut r));
    }
}
