//! The SEV-TIO firmware commands (Linux drivers/crypto/ccp/sev-dev-tio.h and the SEV-TIO phase-2
//! patch series; their command ids are the mailbox's, abi::mailbox::Command) as the firmware's
//! state: device contexts, TDI contexts and their guest bindings, ASID fences. TDISP messages to the device go
//! through a transport the caller gives (the host carries them over DOE); SPDM and IDE are message
//! flow only, with no cryptography.

use crate::dma_check::TdiBinding;
use crate::tdisp::{self, Response, TdiState};
use std::collections::BTreeMap;

/// Status codes (Linux include/uapi/linux/psp-sev.h SEV_RET_*, the TIO ones 0x28-0x3f as the
/// SEV-TIO phase-1 series adds them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum TioStatus {
    Success = 0,
    InvalidPlatformState = 0x01,
    InvalidAddress = 0x09,
    InvalidCommand = 0x11,
    Unsupported = 0x15,
    InvalidParam = 0x16,
    ResourceLimit = 0x17,
    /// SEV_RET_SPDM_ERROR: the device did not answer the firmware's messages.
    SpdmError = 0x33,
    /// SEV_RET_SEV_STATUS_INVALID_DEV_CTX: no device context for this device.
    InvalidDevCtx = 0x36,
    /// SEV_RET_SEV_STATUS_INVALID_TDI_CTX: no such TDI context.
    InvalidTdiCtx = 0x37,
    InUse = 0x3a,
    /// SEV_RET_SEV_STATUS_INVALID_DEV_STATE: e.g. a TDI on a device not connected.
    InvalidDevState = 0x3b,
    InvalidTdiState = 0x3c,
}

impl TioStatus {
    pub fn code(self) -> u32 {
        self as u32
    }
    pub fn name(self) -> &'static str {
        match self {
            TioStatus::Success => "SUCCESS",
            TioStatus::InvalidPlatformState => "INVALID_PLATFORM_STATE",
            TioStatus::InvalidAddress => "INVALID_ADDRESS",
            TioStatus::InvalidCommand => "INVALID_COMMAND",
            TioStatus::Unsupported => "UNSUPPORTED",
            TioStatus::InvalidParam => "INVALID_PARAM",
            TioStatus::ResourceLimit => "RESOURCE_LIMIT",
            TioStatus::SpdmError => "SPDM_ERROR",
            TioStatus::InvalidDevCtx => "INVALID_DEV_CTX",
            TioStatus::InvalidTdiCtx => "INVALID_TDI_CTX",
            TioStatus::InUse => "IN_USE",
            TioStatus::InvalidDevState => "INVALID_DEV_STATE",
            TioStatus::InvalidTdiState => "INVALID_TDI_STATE",
        }
    }
}

/// TIO_MSG_SDTE_WRITE response statuses (phase-2 guest patches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SdteWriteStatus {
    Success = 0,
    InvalidTdi = 1,
    TdiNotBound = 2,
}

/// ASID fence status of TIO_ASID_FENCE_STATUS: DMA bits 1:0, MMIO bits 3:2.
pub mod fence {
    pub const DMA_ERROR_FENCED: u32 = 1;
    pub const MMIO_FENCED: u32 = 3 << 2;
}

/// Devices and TDIs the firmware tracks at most (bounded state for a hostile host).
pub const MAX_DEVICES: usize = 64;
pub const MAX_TDIS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCtx {
    pub root_port_id: u8,
    pub connected: bool,
    pub ide_stream_ids: [u8; 8],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdiCtx {
    pub devid: u16,
    pub function_id: u32,
    pub bind: Option<Bind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bind {
    pub asid: u16,
    pub guest_device_id: u16,
    /// Set by the guest's SDTE_WRITE; until then T=1 DMA is not enabled (vTOM 0: all shared).
    pub vtom: Option<u64>,
    /// The firmware's view of the TDI's state, from the responses it saw.
    pub state: TdiState,
}

/// Carries one TDISP request to the device with `devid` and returns its response (`None`: the
/// device did not answer).
pub type Transport<'a> = &'a mut dyn FnMut(u16, &[u8]) -> Option<Vec<u8>>;

#[derive(Clone, Debug, Default)]
pub struct Tio {
    pub initialized: bool,
    pub devices: BTreeMap<u16, DevCtx>,
    pub tdis: BTreeMap<u32, TdiCtx>,
    fenced: BTreeMap<u16, u32>,
    next_tdi: u32,
}

impl Tio {
    pub fn status(&self) -> (bool, usize, usize) {
        (self.initialized, self.devices.len(), self.tdis.len())
    }

    pub fn init(&mut self) -> TioStatus {
        if self.initialized {
            return TioStatus::InvalidPlatformState;
        }
        self.initialized = true;
        TioStatus::Success
    }

    fn ready(&self) -> Result<(), TioStatus> {
        if self.initialized {
            Ok(())
        } else {
            Err(TioStatus::InvalidPlatformState)
        }
    }

    pub fn dev_create(&mut self, devid: u16, root_port_id: u8) -> TioStatus {
        if let Err(s) = self.ready() {
            return s;
        }
        if self.devices.contains_key(&devid) {
            return TioStatus::InUse;
        }
        if self.devices.len() >= MAX_DEVICES || root_port_id > 0x1f {
            return if root_port_id > 0x1f { TioStatus::InvalidParam } else { TioStatus::ResourceLimit };
        }
        self.devices.insert(devid, DevCtx { root_port_id, connected: false, ide_stream_ids: [0; 8] });
        TioStatus::Success
    }

    pub fn dev_reclaim(&mut self, devid: u16) -> TioStatus {
        let Some(d) = self.devices.get(&devid) else { return TioStatus::InvalidDevCtx };
        if d.connected || self.tdis.values().any(|t| t.devid == devid) {
            return TioStatus::InUse;
        }
        self.devices.remove(&devid);
        TioStatus::Success
    }

    /// DEV_CONNECT: SPDM and IDE set-up in the real firmware; here the message flow reduces to
    /// checking the device answers TDISP (GET_TDISP_VERSION) and recording the streams.
    pub fn dev_connect(&mut self, devid: u16, ide_stream_ids: [u8; 8], transport: Transport) -> TioStatus {
        let Some(d) = self.devices.get_mut(&devid) else { return TioStatus::InvalidDevCtx };
        if d.connected {
            return TioStatus::InUse;
        }
        match transport(devid, &tdisp::request(tdisp::req::GET_TDISP_VERSION, 0, &[])).and_then(|r| tdisp::parse_response(&r)) {
            Some(Response::Version(v)) if v.contains(&tdisp::VERSION) => {}
            // An error from a device that speaks TDISP (e.g. function 0 is not an interface) is
            // still an answer.
            Some(Response::Error { .. }) => {}
            _ => return TioStatus::SpdmError,
        }
        d.connected = true;
        d.ide_stream_ids = ide_stream_ids;
        TioStatus::Success
    }

    pub fn dev_disconnect(&mut self, devid: u16, force: bool) -> TioStatus {
        if !self.devices.contains_key(&devid) {
            return TioStatus::InvalidDevCtx;
        }
        if !force && self.tdis.values().any(|t| t.devid == devid && t.bind.is_some()) {
            return TioStatus::InUse;
        }
        for t in self.tdis.values_mut().filter(|t| t.devid == devid) {
            t.bind = None;
        }
        if let Some(d) = self.devices.get_mut(&devid) {
            d.connected = false;
        }
        TioStatus::Success
    }

    pub fn tdi_create(&mut self, devid: u16, function_id: u32) -> Result<u32, TioStatus> {
        let d = self.devices.get(&devid).ok_or(TioStatus::InvalidDevCtx)?;
        if !d.connected {
            return Err(TioStatus::InvalidDevState);
        }
        if self.tdis.len() >= MAX_TDIS {
            return Err(TioStatus::ResourceLimit);
        }
        if self.tdis.values().any(|t| t.devid == devid && t.function_id == function_id) {
            return Err(TioStatus::InUse);
        }
        // Ids are handed out in turn and wrap after 2^32 creations (a guest can get there with
        // TDI_CREATE/TDI_RECLAIM pairs); an id still in use, or 0, is skipped. At most MAX_TDIS
        // are in use, so the search ends within MAX_TDIS + 2 steps.
        let mut id = self.next_tdi;
        loop {
            id = id.wrapping_add(1);
            if id != 0 && !self.tdis.contains_key(&id) {
                break;
            }
        }
        self.next_tdi = id;
        self.tdis.insert(id, TdiCtx { devid, function_id, bind: None });
        Ok(id)
    }

    pub fn tdi_reclaim(&mut self, tdi: u32) -> TioStatus {
        match self.tdis.get(&tdi) {
            None => TioStatus::InvalidTdiCtx,
            Some(t) if t.bind.is_some() => TioStatus::InUse,
            Some(_) => {
                self.tdis.remove(&tdi);
                TioStatus::Success
            }
        }
    }

    fn send(&mut self, tdi: u32, msg: impl FnOnce(u32) -> Vec<u8>, transport: Transport) -> Result<Response, TioStatus> {
        let t = self.tdis.get(&tdi).ok_or(TioStatus::InvalidTdiCtx)?;
        let m = msg(t.function_id);
        let r = transport(t.devid, &m).and_then(|r| tdisp::parse_response(&r)).ok_or(TioStatus::InvalidTdiState)?;
        Ok(r)
    }

    /// TDI_BIND: LOCK_INTERFACE to the device, then (with `start`, the RUN request the guest makes
    /// through the host) START_INTERFACE with the nonce LOCK returned.
    pub fn tdi_bind(&mut self, tdi: u32, asid: u16, guest_device_id: u16, lock_flags: u16, start: bool, transport: Transport) -> TioStatus {
        match self.tdis.get(&tdi) {
            None => return TioStatus::InvalidTdiCtx,
            Some(t) if t.bind.is_some() => return TioStatus::InUse,
            Some(_) => {}
        }
        if asid == 0 || asid > crate::rmp::MAX_ASID {
            return TioStatus::InvalidParam;
        }
        let nonce = match self.send(tdi, |f| tdisp::lock_interface(f, lock_flags, 0, 0), transport) {
            Ok(Response::Locked { nonce }) => nonce,
            Ok(_) => return TioStatus::InvalidTdiState,
            Err(s) => return s,
        };
        let mut bind = Bind { asid, guest_device_id, vtom: None, state: TdiState::ConfigLocked };
        if start {
            match self.send(tdi, |f| tdisp::start_interface(f, &nonce), transport) {
                Ok(Response::Started) => bind.state = TdiState::Run,
                _ => return TioStatus::InvalidTdiState,
            }
        }
        if let Some(t) = self.tdis.get_mut(&tdi) {
            t.bind = Some(bind);
        }
        TioStatus::Success
    }

    /// The guest's RUN for a TDI bound without it: START_INTERFACE needs the LOCK nonce, which
    /// the firmware does not keep, so it re-locks: STOP, LOCK, START.
    pub fn tdi_run(&mut self, tdi: u32, transport: Transport) -> TioStatus {
        let Some(b) = self.tdis.get(&tdi).and_then(|t| t.bind) else { return TioStatus::InvalidTdiState };
        if b.state == TdiState::Run {
            return TioStatus::Success;
        }
        let _ = self.send(tdi, |f| tdisp::request(tdisp::req::STOP_INTERFACE, f, &[]), transport);
        let nonce = match self.send(tdi, |f| tdisp::lock_interface(f, 0, 0, 0), transport) {
            Ok(Response::Locked { nonce }) => nonce,
            _ => return TioStatus::InvalidTdiState,
        };
        match self.send(tdi, |f| tdisp::start_interface(f, &nonce), transport) {
            Ok(Response::Started) => {
                if let Some(Some(b)) = self.tdis.get_mut(&tdi).map(|t| t.bind.as_mut()) {
                    b.state = TdiState::Run;
                }
                TioStatus::Success
            }
            _ => TioStatus::InvalidTdiState,
        }
    }

    /// TDI_UNBIND: STOP_INTERFACE (its answer is not needed with `force`), then forget the binding.
    pub fn tdi_unbind(&mut self, tdi: u32, force: bool, transport: Transport) -> TioStatus {
        match self.tdis.get(&tdi) {
            None => return TioStatus::InvalidTdiCtx,
            Some(t) if t.bind.is_none() => return TioStatus::InvalidTdiState,
            Some(_) => {}
        }
        let r = self.send(tdi, |f| tdisp::request(tdisp::req::STOP_INTERFACE, f, &[]), transport);
        if !force && !matches!(r, Ok(Response::Stopped)) {
            return TioStatus::InvalidTdiState;
        }
        if let Some(t) = self.tdis.get_mut(&tdi) {
            t.bind = None;
        }
        TioStatus::Success
    }

    /// TDI_REPORT: the whole interface report, fetched in portions.
    pub fn tdi_report(&mut self, tdi: u32, transport: Transport) -> Result<Vec<u8>, TioStatus> {
        let mut report = Vec::new();
        for _ in 0..64 {
            let off = report.len() as u16;
            match self.send(tdi, |f| tdisp::get_report(f, off, tdisp::MAX_REPORT_PORTION), transport)? {
                Response::Report { portion, remainder } => {
                    report.extend_from_slice(&portion);
                    if remainder == 0 || portion.is_empty() {
                        return Ok(report);
                    }
                }
                _ => return Err(TioStatus::InvalidTdiState),
            }
        }
        Err(TioStatus::ResourceLimit)
    }

    /// TDI_STATUS: the device's TDISP state.
    pub fn tdi_status(&mut self, tdi: u32, transport: Transport) -> Result<TdiState, TioStatus> {
        match self.send(tdi, |f| tdisp::request(tdisp::req::GET_DEVICE_INTERFACE_STATE, f, &[]), transport)? {
            Response::State(s) => {
                if let Some(Some(b)) = self.tdis.get_mut(&tdi).map(|t| t.bind.as_mut()) {
                    b.state = s;
                }
                Ok(s)
            }
            _ => Err(TioStatus::InvalidTdiState),
        }
    }

    /// The guest's TIO_MSG_SDTE_WRITE: enable T=1 DMA with vTOM (bytes).
    pub fn sdte_write(&mut self, tdi: u32, vtom: u64) -> SdteWriteStatus {
        let Some(t) = self.tdis.get_mut(&tdi) else { return SdteWriteStatus::InvalidTdi };
        let Some(b) = t.bind.as_mut() else { return SdteWriteStatus::TdiNotBound };
        b.vtom = Some(vtom);
        SdteWriteStatus::Success
    }

    /// The T=1 binding of a requester, for the DMA check (`state` is the device's own state).
    /// None until the guest's SDTE_WRITE has enabled T=1 DMA (the sDTE is not valid before:
    /// the IOMMU blocks the device's T=1 requests), and while the ASID is fenced.
    pub fn binding_for(&self, devid: u16, function_id: u32, state: TdiState) -> Option<TdiBinding> {
        let t = self.tdis.values().find(|t| t.devid == devid && t.function_id == function_id)?;
        let b = t.bind?;
        if self.fenced.contains_key(&b.asid) {
            return None;
        }
        Some(TdiBinding { asid: b.asid, vtom: b.vtom?, state })
    }

    /// A host-caused fault on a bound TDI's request fences its ASID (SEV-TIO FW spec §2.11 as
    /// quoted in the notes §1.7).
    pub fn fence(&mut self, asid: u16) {
        if asid != 0 && asid <= crate::rmp::MAX_ASID {
            self.fenced.insert(asid, fence::DMA_ERROR_FENCED | fence::MMIO_FENCED);
        }
    }

    pub fn asid_fence_status(&self, asid: u16) -> u32 {
        self.fenced.get(&asid).copied().unwrap_or(0)
    }

    pub fn asid_fence_clear(&mut self, asid: u16) -> TioStatus {
        if asid == 0 || asid > crate::rmp::MAX_ASID {
            return TioStatus::InvalidParam;
        }
        self.fenced.remove(&asid);
        TioStatus::Success
    }

    /// TIO_DEV_STATUS: whether the device context exists and is connected, and its TDIs.
    pub fn dev_status(&self, devid: u16) -> Result<(bool, usize), TioStatus> {
        let d = self.devices.get(&devid).ok_or(TioStatus::InvalidDevCtx)?;
        Ok((d.connected, self.tdis.values().filter(|t| t.devid == devid).count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdisp::TdispResponder;

    #[test]
    fn create_connect_bind_run_unbind_reclaim() {
        let mut dev = TdispResponder::new(0x20, vec![]);
        let mut tr = |_: u16, m: &[u8]| Some(dev.handle_request(m));
        let mut tio = Tio::default();
        assert_eq!(tio.dev_create(0x20, 0), TioStatus::InvalidPlatformState);
        assert_eq!(tio.init(), TioStatus::Success);
        assert_eq!(tio.init(), TioStatus::InvalidPlatformState);
        assert_eq!(tio.dev_create(0x20, 0), TioStatus::Success);
        assert_eq!(tio.dev_create(0x20, 0), TioStatus::InUse);
        assert_eq!(tio.tdi_create(0x20, 0x20), Err(TioStatus::InvalidDevState), "not connected");
        assert_eq!(tio.tdi_create(0x21, 0x21), Err(TioStatus::InvalidDevCtx), "no device context");
        assert_eq!(tio.dev_status(0x20), Ok((false, 0)));
        assert_eq!(tio.dev_connect(0x20, [1, 0, 0, 0, 0, 0, 0, 0], &mut tr), TioStatus::Success);
        let tdi = tio.tdi_create(0x20, 0x20).unwrap();
        assert_eq!(tio.tdi_bind(tdi, 0, 1, 0, false, &mut tr), TioStatus::InvalidParam, "ASID 0");
        assert_eq!(tio.tdi_bind(tdi, 5, 0x0100, 0, false, &mut tr), TioStatus::Success);
        assert_eq!(tio.tdi_status(tdi, &mut tr), Ok(TdiState::ConfigLocked));
        assert_eq!(tio.tdi_run(tdi, &mut tr), TioStatus::Success);
        assert_eq!(tio.tdi_status(tdi, &mut tr), Ok(TdiState::Run));
        assert!(!tio.tdi_report(tdi, &mut tr).unwrap().is_empty());
        assert!(tio.binding_for(0x20, 0x20, TdiState::Run).is_none(), "no T=1 DMA before SDTE_WRITE");
        assert_eq!(tio.sdte_write(tdi, 1 << 40), SdteWriteStatus::Success);
        assert_eq!(tio.sdte_write(tdi + 1, 0), SdteWriteStatus::InvalidTdi);
        assert_eq!(tio.tdi_reclaim(tdi + 1), TioStatus::InvalidTdiCtx);
        assert_eq!(tio.binding_for(0x20, 0x20, TdiState::Run).map(|b| (b.asid, b.vtom)), Some((5, 1 << 40)));
        tio.fence(5);
        assert_eq!(tio.asid_fence_status(5), 0xd);
        assert!(tio.binding_for(0x20, 0x20, TdiState::Run).is_none(), "fenced");
        assert_eq!(tio.asid_fence_clear(0), TioStatus::InvalidParam);
        assert_eq!(tio.asid_fence_clear(5), TioStatus::Success);
        assert_eq!(tio.asid_fence_status(5), 0);
        assert_eq!(tio.tdi_reclaim(tdi), TioStatus::InUse);
        assert_eq!(tio.dev_disconnect(0x20, false), TioStatus::InUse);
        assert_eq!(tio.tdi_unbind(tdi, false, &mut tr), TioStatus::Success);
        assert_eq!(tio.tdi_status(tdi, &mut tr), Ok(TdiState::ConfigUnlocked));
        assert_eq!(tio.sdte_write(tdi, 0), SdteWriteStatus::TdiNotBound);
        assert_eq!(tio.dev_reclaim(0x20), TioStatus::InUse);
        assert_eq!(tio.tdi_reclaim(tdi), TioStatus::Success);
        assert_eq!(tio.dev_disconnect(0x20, false), TioStatus::Success);
        assert_eq!(tio.dev_reclaim(0x20), TioStatus::Success);
        assert_eq!(tio.dev_reclaim(0x20), TioStatus::InvalidDevCtx);
    }

    #[test]
    fn tdi_ids_wrap_without_reusing_one_in_use() {
        let mut dev = TdispResponder::new(1, vec![]);
        let mut tr = |_: u16, m: &[u8]| Some(dev.handle_request(m));
        let mut tio = Tio::default();
        tio.init();
        for devid in [1, 2] {
            tio.dev_create(devid, 0);
            assert_eq!(tio.dev_connect(devid, [0; 8], &mut tr), TioStatus::Success);
        }
        let bound = tio.tdi_create(1, 1).unwrap();
        assert_eq!(bound, 1);
        assert_eq!(tio.tdi_bind(bound, 5, 0x100, 0, false, &mut tr), TioStatus::Success);
        assert_eq!(tio.tdi_run(bound, &mut tr), TioStatus::Success);
        // As after 2^32 - 2 TDI_CREATE/TDI_RECLAIM pairs of device 2 (8 000 pairs/s over the
        // socket: six days).
        tio.next_tdi = u32::MAX - 2;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let id = tio.tdi_create(2, 2).unwrap();
            seen.push(id);
            assert_eq!(tio.tdi_reclaim(id), TioStatus::Success);
        }
        assert_eq!(seen, [u32::MAX - 1, u32::MAX, 2, 3], "0 and the bound TDI's id 1 skipped");
        assert_eq!(tio.tdis[&bound].bind.map(|b| b.asid), Some(5), "the TDI in RUN is untouched");
        assert_eq!(tio.tdi_status(bound, &mut tr), Ok(TdiState::Run));
    }

    #[test]
    fn a_device_that_does_not_answer_is_not_connected() {
        let mut tio = Tio::default();
        tio.init();
        tio.dev_create(1, 0);
        assert_eq!(tio.dev_connect(1, [0; 8], &mut |_, _| None), TioStatus::SpdmError);
        assert_eq!(tio.dev_connect(1, [0; 8], &mut |_, _| Some(vec![0x10, 0x55])), TioStatus::SpdmError, "garbage answer");
        assert_eq!(tio.dev_status(1), Ok((false, 0)));
        assert_eq!(tio.dev_create(2, 0x20), TioStatus::InvalidParam, "root port id has 5 bits");
    }

    #[test]
    fn a_silent_device_is_not_bound() {
        let mut tio = Tio::default();
        tio.init();
        tio.dev_create(1, 0);
        let mut dev = TdispResponder::new(1, vec![]);
        tio.dev_connect(1, [0; 8], &mut |_, m| Some(dev.handle_request(m)));
        let tdi = tio.tdi_create(1, 1).unwrap();
        assert_eq!(tio.tdi_bind(tdi, 3, 0, 0, true, &mut |_, _| None), TioStatus::InvalidTdiState);
        assert_eq!(tio.sdte_write(tdi, 0), SdteWriteStatus::TdiNotBound);
    }
}
