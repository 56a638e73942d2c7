//! The TDI responders: the TDISP responder of every endpoint (rmp-model's `TdispResponder`, the
//! device's side of TDISP), kept in one place. Every change of a TDI's state goes through here,
//! whoever causes it (the DOE mailbox, a configuration write, the SEV firmware's TIO commands,
//! the TDX module stand-in, an injected fault), and only here is a `tdisp` record emitted.
//!
//! A handle (`Tdis`, cheap to clone) is held by the secure IOMMU and by each endpoint; the map
//! has a lock of its own, so a DOE access from a socket thread never waits for the secure IOMMU.
//! Lock order: the secure IOMMU's lock, then this one, never the other way.

use crate::vfio::function::EventSink;
use abi::event as ev;
use abi::Bdf;
use rmp_model::tdisp::{MmioRange, TdiState, TdispResponder};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Who moved a TDI (the `via` of a `tdisp` record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A TDISP message over the endpoint's DOE mailbox.
    Doe,
    /// A write to the endpoint's configuration space at this offset (TDISP: a locked TDI goes to
    /// ERROR).
    ConfigWrite(u64),
    /// The SEV firmware's TIO commands (the IOMMU function's mailbox).
    Firmware,
    /// The TDX module stand-in's calls.
    TdxModule,
    /// An injected fault (docs/fault-injection.md).
    Injected,
}

impl Via {
    fn name(self) -> String {
        match self {
            Via::Doe => "doe".into(),
            Via::ConfigWrite(offset) => format!("config write at {offset:#x}"),
            Via::Firmware => "firmware".into(),
            Via::TdxModule => "tdx-module".into(),
            Via::Injected => "injected".into(),
        }
    }
}

/// The owner of every endpoint's TDISP responder, by requester ID.
#[derive(Clone)]
pub struct Tdis {
    responders: Arc<Mutex<BTreeMap<u16, TdispResponder>>>,
    events: Arc<dyn EventSink>,
}

impl Tdis {
    pub fn new(events: Arc<dyn EventSink>) -> Tdis {
        Tdis { responders: Arc::default(), events }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, TdispResponder>> {
        self.responders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device `rid` answers TDISP, reporting `ranges` as its TDI's MMIO (a new responder
    /// replaces an old one: the function was created again).
    pub fn add(&self, rid: u16, ranges: Vec<MmioRange>) {
        self.lock().insert(rid, TdispResponder::new(u32::from(rid), ranges));
    }

    /// Whether the device `rid` has a TDI.
    pub fn has(&self, rid: u16) -> bool {
        self.lock().contains_key(&rid)
    }

    /// The TDI's state (CONFIG_UNLOCKED for a device without one).
    pub fn state(&self, rid: u16) -> TdiState {
        self.lock().get(&rid).map(TdispResponder::state).unwrap_or_default()
    }

    /// One TDISP request to the device `rid`, its response; None when it has no responder.
    pub fn request(&self, rid: u16, message: &[u8], via: Via) -> Option<Vec<u8>> {
        let mut map = self.lock();
        let r = map.get_mut(&rid)?;
        let before = r.state();
        let response = r.handle_request(message);
        let after = r.state();
        drop(map);
        self.moved(rid, before, after, via);
        Some(response)
    }

    /// A write to the device's configuration space (TDISP: a locked TDI goes to ERROR).
    pub fn config_written(&self, rid: u16, offset: u64) {
        let mut map = self.lock();
        let Some(r) = map.get_mut(&rid) else { return };
        let before = r.state();
        r.config_changed();
        let after = r.state();
        drop(map);
        self.moved(rid, before, after, Via::ConfigWrite(offset));
    }

    /// The device moves its TDI to ERROR on its own (an injected fault, TDISP §11.2): Ok(the
    /// state it left), or Err(its state) when it was not locked, or Err(None) without a TDI.
    pub fn fail(&self, rid: u16) -> Result<TdiState, Option<TdiState>> {
        let mut map = self.lock();
        let Some(r) = map.get_mut(&rid) else { return Err(None) };
        let before = r.state();
        if !r.fail() {
            return Err(Some(before));
        }
        let after = r.state();
        drop(map);
        self.moved(rid, before, after, Via::Injected);
        Ok(before)
    }

    fn moved(&self, rid: u16, from: TdiState, to: TdiState, via: Via) {
        if from == to {
            return;
        }
        self.events.emit(ev::Event::Tdisp(ev::Tdisp {
            devid: Bdf(rid),
            from: from.name().into(),
            to: to.name().into(),
            via: via.name(),
            injected: (via == Via::Injected).then_some(true),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Collect;
    use rmp_model::tdisp;

    #[test]
    fn every_change_is_one_record_naming_its_cause() {
        let events = Arc::new(Collect::default());
        let tdis = Tdis::new(events.clone());
        assert_eq!(tdis.request(0x20, &tdisp::lock_interface(0x20, 0, 0, 0), Via::Doe), None, "no responder yet");
        tdis.add(0x20, Vec::new());
        assert!(tdis.has(0x20) && !tdis.has(0x28));
        assert!(tdis.request(0x20, &tdisp::lock_interface(0x20, 0, 0, 0), Via::Firmware).is_some());
        assert_eq!(tdis.state(0x20), TdiState::ConfigLocked);
        // A second LOCK changes nothing: no record.
        tdis.request(0x20, &tdisp::lock_interface(0x20, 0, 0, 0), Via::Doe);
        tdis.config_written(0x20, 0x10);
        assert_eq!(tdis.state(0x20), TdiState::Error);
        assert_eq!(tdis.fail(0x20), Err(Some(TdiState::Error)), "not locked any more");
        assert_eq!(tdis.fail(0x28), Err(None));
        let records = events.0.lock().unwrap().clone();
        let vias: Vec<_> = records.iter().map(|e| (e["type"].as_str(), e["via"].as_str(), e["to"].as_str())).collect();
        assert_eq!(
            vias,
            [(Some("tdisp"), Some("firmware"), Some("CONFIG_LOCKED")), (Some("tdisp"), Some("config write at 0x10"), Some("ERROR"))]
        );
    }
}
