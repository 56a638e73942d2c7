//! Fault injection in the daemon (docs/fault-injection.md): the faults `tiommu inject` arms, read
//! from JSON, and the ones no model crate holds: the RMP's, the TDI's, the DOE mailbox's and the
//! endpoint's. The AMD-Vi and VT-d faults are iommu-model's (`amdvi::inject`, `vtd::inject`),
//! asked for inside their unit; all follow the same trigger rules (`iommu_model::inject`), and
//! their names are abi::inject's. Every fault that fires
//! is an `injected` record in the event stream, and the records of what it caused say
//! `"injected": true`.

use crate::pci::doe::DoeFault;
use crate::secure::SecureIommu;
use abi::event as ev;
use abi::inject::{FaultName, Unit};
use iommu_model::amdvi::event::{flags, Event};
use iommu_model::amdvi::inject::{Fault as AmdViFault, Fired};
use iommu_model::inject::{At, Chance, Injector, When};
use iommu_model::mem::PhysMem;
use iommu_model::vtd::inject::Fault as VtdFault;
use rmp_model::Rmp;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Any fault the daemon can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    AmdVi(AmdViFault),
    Vtd(VtdFault),
    Platform(Platform),
}

/// The faults outside the AMD-Vi unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// The next DMA request's RMP check cannot read the page's RMP entry: RMP_HW_ERROR (event
    /// code 0xE, as Linux amd_iommu_report_rmp_hw_error decodes it: SPA, Type = data error) and
    /// the request aborted: the IOMMU fails closed.
    RmpHwError,
    /// The RMP entry of the page at `spa` reads back changed: its copy in memory (the table at
    /// RMP_BASE) gets its Assigned bit flipped while the model's own state stays as it was. The
    /// next DMA request to the page finds the two disagreeing and is refused with RMP_HW_ERROR
    /// (never allowed on the strength of a changed entry), until the entry is written again.
    RmpEntryChanged {
        spa: u64,
    },
    /// The device moves its TDI to ERROR (TDISP §11.2): T=1 DMA stops until the host STOPs it.
    TdiError {
        devid: u16,
    },
    Doe {
        devid: u16,
        fault: DoeFault,
    },
    /// The device DMAs on its own, to an address of the tool's choosing.
    EndpointDma(RogueDma),
    /// The device's ring stops making progress: doorbells are taken, nothing is processed, BUSY
    /// stays set, until CTRL.RESET or a function-level reset.
    RingStall {
        devid: u16,
    },
}

/// A DMA the device makes without a descriptor: `len` bytes of 0x5a written (or read) at `iova`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RogueDma {
    pub devid: u16,
    pub iova: u64,
    pub len: u32,
    pub write: bool,
    pub t: bool,
}

/// What the faults of `Platform` do to a device: implemented by the device, which takes them at
/// its own points (its mailbox's next access, its worker).
pub trait FaultyDevice: Send + Sync {
    fn doe(&self, f: DoeFault);
    fn stall_ring(&self);
    /// Queue the DMA on the device's worker; false if the device cannot (no worker any more).
    fn rogue_dma(&self, d: RogueDma) -> bool;
    /// End the injected conditions that last (a stalled ring, a busy or hung mailbox).
    fn clear(&self);
}

/// The injection state the daemon's secure IOMMU keeps beside the AMD-Vi unit's.
#[derive(Default)]
pub struct State {
    pub injector: Injector<Platform>,
    pub devices: BTreeMap<u16, Arc<dyn FaultyDevice>>,
    /// Pages whose RMP entry an injection changed in memory.
    pub changed_rmp: BTreeSet<u64>,
    /// Commands the AMD-Vi unit had executed when last counted for the platform faults.
    commands_seen: u64,
    /// The newest fired faults, for `status`.
    pub fired: VecDeque<ev::Injected>,
}

const FIRED_KEPT: usize = 256;

impl Fault {
    /// Its name, description and unit (abi::inject, the one list of them).
    pub fn kind(&self) -> FaultName {
        match self {
            Fault::AmdVi(f) => amdvi_kind(f),
            Fault::Vtd(f) => vtd_kind(f),
            Fault::Platform(p) => p.kind(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

fn amdvi_kind(f: &AmdViFault) -> FaultName {
    match f {
        AmdViFault::EventLogOverflow => FaultName::EventLogOverflow,
        AmdViFault::IllegalCommand => FaultName::IllegalCommand,
        AmdViFault::CommandHardwareError => FaultName::CommandHardwareError,
        AmdViFault::CompletionWaitLost => FaultName::CompletionWaitLost,
        AmdViFault::DevTabHardwareError => FaultName::DevTabHardwareError,
        AmdViFault::PageTabHardwareError => FaultName::PageTabHardwareError,
        AmdViFault::IoPageFault { .. } => FaultName::IoPageFault,
    }
}

fn vtd_kind(f: &VtdFault) -> FaultName {
    match f {
        VtdFault::QueueError => FaultName::InvQueueError,
        VtdFault::WaitLost => FaultName::InvWaitLost,
        VtdFault::Timeout { .. } => FaultName::InvTimeout,
        VtdFault::PrimaryFaults { .. } => FaultName::PrimaryFault,
    }
}

impl Platform {
    pub fn kind(&self) -> FaultName {
        match self {
            Platform::RmpHwError => FaultName::RmpHwError,
            Platform::RmpEntryChanged { .. } => FaultName::RmpEntryChanged,
            Platform::TdiError { .. } => FaultName::TdiError,
            Platform::Doe { fault: DoeFault::Busy { .. }, .. } => FaultName::DoeBusy,
            Platform::Doe { fault: DoeFault::Error, .. } => FaultName::DoeError,
            Platform::Doe { fault: DoeFault::NeedsAbort, .. } => FaultName::DoeNeedsAbort,
            Platform::EndpointDma(_) => FaultName::EndpointDma,
            Platform::RingStall { .. } => FaultName::RingStall,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Fires at a DMA request's RMP check (the others fire wherever they are due).
    fn at_rmp_check(&self) -> bool {
        matches!(self, Platform::RmpHwError)
    }
}

fn num(v: &Value, key: &str) -> Result<Option<u64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| format!("{key}: not a non-negative integer")),
        Some(Value::String(s)) => {
            let t = s.trim();
            let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
                None => t.replace('_', "").parse(),
            };
            r.map(Some).map_err(|_| format!("{key}: {s:?} is not a number"))
        }
        Some(other) => Err(format!("{key}: {other} is not a number")),
    }
}

fn flag(v: &Value, key: &str) -> Result<bool, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{key}: {other} is not true or false")),
    }
}

/// An `inject` request's fault and trigger. `--device` and `--iova` are the fault's own
/// parameters where it has them (the device of a spurious IO_PAGE_FAULT, the TDI that fails...);
/// for the others they choose the DMA requests that count and where the fault fires.
pub fn parse(v: &Value) -> Result<(Fault, When), String> {
    let name = v.get("fault").and_then(Value::as_str).ok_or("no fault named (\"fault\": one of the names `tiommu inject --help` lists)")?;
    let device = match v.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<abi::Bdf>().map_err(|e| format!("device: {e}"))?.0),
        Some(other) => Err(format!("device: {other} is not a bus:device.function"))?,
    };
    let iova = num(v, "iova")?;
    let spa = num(v, "spa")?;
    let count = num(v, "count")?;
    let reads = num(v, "reads")?;
    let len = num(v, "len")?;
    let (read, t) = (flag(v, "read")?, flag(v, "t")?);
    // Parameters a fault does not take are refused rather than ignored.
    let only = |allowed: &[&str]| -> Result<(), String> {
        for (key, given) in [
            ("spa", spa.is_some()),
            ("count", count.is_some()),
            ("reads", reads.is_some()),
            ("len", len.is_some()),
            ("read", read),
            ("t", t),
        ] {
            if given && !allowed.contains(&key) {
                return Err(format!("{name} takes no {key}"));
            }
        }
        Ok(())
    };
    let need_device = || device.ok_or_else(|| format!("{name} needs a device (--device BUS:DEV.FN)"));
    let need = |x: Option<u64>, what: &str| x.ok_or_else(|| format!("{name} needs --{what}"));
    let mut when = When::now();
    // Where the device and IOVA are the fault's parameters they are not filters.
    let mut filters = true;
    let Some(kind) = FaultName::from_name(name) else {
        let all: Vec<&str> = FaultName::ALL.iter().map(|f| f.name()).collect();
        return Err(format!("no fault {name:?}; the faults: {}", all.join(", ")));
    };
    let count_of = |what: &str| -> Result<u32, String> {
        let count = count.unwrap_or(1);
        if !(1..=65536).contains(&count) {
            return Err(format!("{what}: count is 1 to 65536"));
        }
        Ok(count as u32)
    };
    // The queue's faults fire at a descriptor, never at a DMA request: a filter would keep them
    // from ever firing.
    if matches!(kind, FaultName::InvQueueError | FaultName::InvWaitLost) && (device.is_some() || iova.is_some()) {
        return Err(format!("{name} fires at an invalidation descriptor: it takes no device or iova"));
    }
    let fault = match kind {
        FaultName::EventLogOverflow
        | FaultName::IllegalCommand
        | FaultName::CommandHardwareError
        | FaultName::CompletionWaitLost
        | FaultName::DevTabHardwareError
        | FaultName::PageTabHardwareError
        | FaultName::InvQueueError
        | FaultName::InvWaitLost
        | FaultName::RmpHwError => {
            only(&[])?;
            match kind {
                FaultName::EventLogOverflow => Fault::AmdVi(AmdViFault::EventLogOverflow),
                FaultName::IllegalCommand => Fault::AmdVi(AmdViFault::IllegalCommand),
                FaultName::CommandHardwareError => Fault::AmdVi(AmdViFault::CommandHardwareError),
                FaultName::CompletionWaitLost => Fault::AmdVi(AmdViFault::CompletionWaitLost),
                FaultName::DevTabHardwareError => Fault::AmdVi(AmdViFault::DevTabHardwareError),
                FaultName::PageTabHardwareError => Fault::AmdVi(AmdViFault::PageTabHardwareError),
                FaultName::InvQueueError => Fault::Vtd(VtdFault::QueueError),
                FaultName::InvWaitLost => Fault::Vtd(VtdFault::WaitLost),
                _ => Fault::Platform(Platform::RmpHwError),
            }
        }
        FaultName::IoPageFault => {
            only(&["count"])?;
            filters = false;
            Fault::AmdVi(AmdViFault::IoPageFault { devid: need_device()?, iova: need(iova, "iova")?, count: count_of(name)? })
        }
        FaultName::PrimaryFault => {
            only(&["count"])?;
            filters = false;
            Fault::Vtd(VtdFault::PrimaryFaults { sid: need_device()?, addr: need(iova, "iova")? & !0xfff, count: count_of(name)? })
        }
        FaultName::InvTimeout => {
            only(&[])?;
            if iova.is_some() {
                return Err(format!("{name} takes no iova"));
            }
            // The device is the one IQER.ITESID names (none: 0, not reported).
            filters = false;
            Fault::Vtd(VtdFault::Timeout { sid: device.unwrap_or(0) })
        }
        FaultName::RmpEntryChanged => {
            only(&["spa"])?;
            if device.is_some() || iova.is_some() {
                return Err("rmp-entry-changed names its page with --spa alone".into());
            }
            Fault::Platform(Platform::RmpEntryChanged { spa: need(spa, "spa")? & !0xfff })
        }
        FaultName::TdiError => {
            only(&[])?;
            // The device is the TDI's; an IOVA still chooses the requests that count.
            filters = false;
            when.iova = iova;
            Fault::Platform(Platform::TdiError { devid: need_device()? })
        }
        FaultName::RingStall | FaultName::DoeError | FaultName::DoeNeedsAbort | FaultName::DoeBusy => {
            only(if kind == FaultName::DoeBusy { &["reads"] } else { &[] })?;
            if iova.is_some() {
                return Err(format!("{name} takes no iova"));
            }
            filters = false;
            let devid = need_device()?;
            match kind {
                FaultName::RingStall => Fault::Platform(Platform::RingStall { devid }),
                FaultName::DoeError => Fault::Platform(Platform::Doe { devid, fault: DoeFault::Error }),
                FaultName::DoeNeedsAbort => Fault::Platform(Platform::Doe { devid, fault: DoeFault::NeedsAbort }),
                _ => {
                    let reads = reads.unwrap_or(1000);
                    if !(1..=u64::from(u32::MAX)).contains(&reads) {
                        return Err("doe-busy: reads is 1 to 4294967295".into());
                    }
                    Fault::Platform(Platform::Doe { devid, fault: DoeFault::Busy { reads: reads as u32 } })
                }
            }
        }
        FaultName::EndpointDma => {
            only(&["len", "read", "t"])?;
            filters = false;
            let len = len.unwrap_or(64);
            if !(1..=crate::secure::dma::MAX_LEN).contains(&len) {
                return Err(format!("endpoint-dma: len is 1 to {}", crate::secure::dma::MAX_LEN));
            }
            Fault::Platform(Platform::EndpointDma(RogueDma {
                devid: need_device()?,
                iova: need(iova, "iova")?,
                len: len as u32,
                write: !read,
                t,
            }))
        }
    };
    if filters {
        when.device = device;
        when.iova = iova;
    }
    when.after_commands = num(v, "after_commands")?.unwrap_or(0);
    when.after_dma = num(v, "after_dma")?.unwrap_or(0);
    when.times = u32::try_from(num(v, "times")?.unwrap_or(1)).map_err(|_| "times: too large")?;
    match v.get("probability") {
        None | Some(Value::Null) => {
            if v.get("seed").is_some_and(|s| !s.is_null()) {
                return Err("seed without probability".into());
            }
        }
        Some(p) => {
            let p = p.as_f64().filter(|p| *p > 0.0 && *p <= 1.0).ok_or("probability: a number above 0 and at most 1")?;
            when.chance = Some(Chance { per_million: (p * 1e6).round() as u32, seed: num(v, "seed")?.unwrap_or(0) });
        }
    }
    Ok((fault, when))
}

/// An armed fault, as the control channel's `status` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PendingFault {
    pub id: u32,
    pub fault: &'static str,
    pub when: ev::InjectWhen,
    /// Times it fired so far.
    pub fired: u32,
}

/// The trigger, for answers and records.
pub fn when_record(w: &When) -> ev::InjectWhen {
    ev::InjectWhen {
        after_commands: Some(w.after_commands).filter(|&n| n > 0),
        after_dma: Some(w.after_dma).filter(|&n| n > 0),
        device: w.device.map(abi::Bdf),
        iova: w.iova.map(|i| i & !0xfff),
        probability: w.chance.map(|c| f64::from(c.per_million) / 1e6),
        seed: w.chance.map(|c| c.seed),
        times: w.times,
    }
}

impl SecureIommu {
    /// Arm a fault under `id`; one due at once fires before this returns. The records of what
    /// fired are in the event stream and returned.
    pub fn arm<M: PhysMem + ?Sized>(&mut self, mem: &mut M, id: u32, fault: Fault, when: When) -> Result<Vec<ev::Injected>, String> {
        let full = |_| "too many faults armed (64 per unit); clear some first".to_string();
        let before = self.inject.fired.len();
        let unit = fault.kind().unit();
        let here = if self.vtd.is_some() { Unit::Vtd } else { Unit::AmdVi };
        if unit != Unit::Platform && unit != here {
            return Err(format!("{} is a fault of the {} unit; this daemon's IOMMU is {}", fault.name(), unit.name(), here.name()));
        }
        match fault {
            Fault::AmdVi(f) => {
                self.amdvi.arm(mem, id, f, when).map_err(full)?;
                self.collect_amdvi();
                self.irq_if_pending();
            }
            Fault::Vtd(f) => {
                if let Some(v) = self.vtd.as_mut() {
                    v.arm(id, f, when).map_err(full)?;
                }
                self.collect_vtd();
                self.irq_if_pending();
            }
            Fault::Platform(p) => {
                self.inject.injector.arm(id, p, when).map_err(full)?;
                self.fire_platform(mem, At::Arm);
            }
        }
        Ok(self.inject.fired.iter().skip(before).cloned().collect())
    }

    /// Disarm fault `id`, or (None) every fault and the injected conditions that last: stalled
    /// rings, busy or hung mailboxes, RMP entries changed in memory. What a fault did to the
    /// architectural state (a stopped command processor, a TDI in ERROR) stays for the driver.
    pub fn clear_faults<M: PhysMem + ?Sized>(&mut self, mem: &mut M, id: Option<u32>) -> Vec<u32> {
        let mut gone = self.amdvi.inject.clear(id);
        if let Some(v) = self.vtd.as_mut() {
            gone.extend(v.inject.clear(id));
        }
        gone.extend(self.inject.injector.clear(id));
        if id.is_none() {
            self.inject.devices.values().for_each(|d| d.clear());
            for pfn in std::mem::take(&mut self.inject.changed_rmp) {
                self.mirror_entry(mem, pfn);
            }
        }
        gone.sort_unstable();
        gone
    }

    /// The device `rid` takes the platform faults aimed at it (its mailbox, ring, worker).
    pub fn add_faulty_device(&mut self, rid: u16, device: Arc<dyn FaultyDevice>) {
        self.inject.devices.insert(rid, device);
    }

    /// The device that takes the platform faults aimed at `rid`.
    pub fn faulty_device(&self, rid: u16) -> Option<Arc<dyn FaultyDevice>> {
        self.inject.devices.get(&rid).cloned()
    }

    /// The newest fired faults' records, oldest first (the control socket's status).
    pub fn fired_faults(&self) -> &VecDeque<ev::Injected> {
        &self.inject.fired
    }

    /// Armed faults, by id.
    pub fn pending_faults(&self) -> Vec<PendingFault> {
        let amdvi = self.amdvi.inject.pending().iter().map(|a| (a.id, Fault::AmdVi(a.fault), a.when, a.fired));
        let vtd = self.vtd.iter().flat_map(|v| v.inject.pending()).map(|a| (a.id, Fault::Vtd(a.fault), a.when, a.fired));
        let platform = self.inject.injector.pending().iter().map(|a| (a.id, Fault::Platform(a.fault), a.when, a.fired));
        let mut all: Vec<_> = amdvi.chain(vtd).chain(platform).collect();
        all.sort_by_key(|a| a.0);
        all.into_iter().map(|(id, f, w, fired)| PendingFault { id, fault: f.name(), when: when_record(&w), fired }).collect()
    }

    fn note(&mut self, record: ev::Injected) {
        self.events.emit(ev::Event::Injected(record.clone()));
        if self.inject.fired.len() >= FIRED_KEPT {
            self.inject.fired.pop_front();
        }
        self.inject.fired.push_back(record);
    }

    /// Report what the AMD-Vi unit's faults did since the last call; returns them.
    pub fn collect_amdvi(&mut self) -> Vec<Fired> {
        let fired = self.amdvi.take_fired();
        for f in &fired {
            self.note(ev::Injected {
                id: f.id,
                fault: amdvi_kind(&f.fault).name().into(),
                effect: f.effect.clone(),
                logged: Some(f.logged),
                event: f.event.map(|e| e.name().into()),
                devid: f.event.map(|e| abi::Bdf(e.devid)),
                address: f.event.map(|e| e.address),
                ..Default::default()
            });
        }
        fired
    }

    /// Report what the VT-d unit's faults did since the last call.
    pub(crate) fn collect_vtd(&mut self) {
        let fired = self.vtd.as_mut().map(|v| v.take_fired()).unwrap_or_default();
        for f in fired {
            let (devid, iova) = match f.fault {
                VtdFault::PrimaryFaults { sid, .. } => (Some(abi::Bdf(sid)), None),
                VtdFault::Timeout { sid } => (Some(abi::Bdf(sid)), None),
                VtdFault::QueueError | VtdFault::WaitLost => (None, None),
            };
            let event = match f.fault {
                VtdFault::PrimaryFaults { .. } => Some("DMA_REMAP_FAULT"),
                VtdFault::QueueError => Some("IQE"),
                VtdFault::Timeout { .. } => Some("ITE"),
                VtdFault::WaitLost => None,
            };
            self.note(ev::Injected {
                id: f.id,
                fault: vtd_kind(&f.fault).name().into(),
                effect: f.effect,
                logged: Some(f.recorded),
                event: event.map(Into::into),
                devid,
                iova,
                address: f.address,
                ..Default::default()
            });
        }
    }

    /// After the guest's driver wrote an AMD-Vi or VT-d register: the commands (invalidation
    /// descriptors) it ran count for the platform faults, and what the unit's faults did is
    /// reported.
    pub(crate) fn after_register_write<M: PhysMem + ?Sized>(&mut self, mem: &mut M) {
        self.collect_amdvi();
        self.collect_vtd();
        let queued: u64 = self.vtd.as_ref().map_or(0, |v| v.invalidations[..3].iter().sum());
        let executed: u64 = self.amdvi.commands.iter().sum::<u64>().wrapping_add(queued);
        // A reset of the unit starts its count again.
        self.inject.commands_seen = self.inject.commands_seen.min(executed);
        // A ring's worth at most per write: the count only catches up on what ran.
        while self.inject.commands_seen < executed {
            self.inject.commands_seen = self.inject.commands_seen.saturating_add(1);
            self.inject.injector.count_command();
            if !self.inject.injector.is_empty() {
                self.fire_platform(mem, At::Command);
            }
        }
    }

    /// A DMA request arrives: the platform faults due here fire (before it is translated).
    pub(crate) fn before_request<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, iova: u64) {
        if !self.inject.injector.is_empty() {
            self.fire_platform(mem, At::Dma { devid: rid, iova });
        }
    }

    pub(crate) fn after_request(&mut self, rid: u16, iova: u64) {
        self.inject.injector.count_dma(rid, iova);
    }

    fn fire_platform<M: PhysMem + ?Sized>(&mut self, mem: &mut M, at: At) {
        for (id, p) in self.inject.injector.fire(at, |p| !p.at_rmp_check()) {
            let effect = self.apply(mem, p);
            let mut r = ev::Injected { id, fault: p.name().into(), effect, ..Default::default() };
            match p {
                Platform::TdiError { devid } | Platform::Doe { devid, .. } | Platform::RingStall { devid } => {
                    r.devid = Some(abi::Bdf(devid))
                }
                Platform::EndpointDma(d) => {
                    r.devid = Some(abi::Bdf(d.devid));
                    r.iova = Some(d.iova);
                }
                Platform::RmpEntryChanged { spa } => r.spa = Some(spa),
                Platform::RmpHwError => {}
            }
            self.note(r);
        }
    }

    /// What a platform fault does now; its effect in words.
    fn apply<M: PhysMem + ?Sized>(&mut self, mem: &mut M, p: Platform) -> String {
        let device = |s: &Self, devid: u16| s.inject.devices.get(&devid).cloned();
        match p {
            Platform::RmpHwError => String::new(),
            Platform::RmpEntryChanged { spa } => {
                let pfn = spa >> 12;
                let Some(raw) = self.rmp.as_ref().and_then(|r| r.raw(pfn)) else {
                    return format!("nothing: no RMP entry for {spa:#x} (SNP off, or outside RAM)");
                };
                if self.rmp_base == 0 {
                    return "nothing: RMP_BASE is not set, so the RMP has no copy in memory".into();
                }
                let mut changed = raw;
                changed[0] ^= 1;
                // RMP_BASE is checked at SNP_EN (check_rmp_window); the sum is checked still.
                if Rmp::entry_offset(pfn).checked_add(self.rmp_base).is_none_or(|at| mem.write(at, &changed).is_err()) {
                    return format!("nothing: the entry of {spa:#x} is not in guest RAM");
                }
                self.inject.changed_rmp.insert(pfn);
                format!("the RMP entry of {spa:#x} reads {} in memory while the RMP holds {}", hex(&changed), hex(&raw))
            }
            Platform::TdiError { devid } => match self.tdis.fail(devid) {
                Ok(before) => format!("the TDI went from {} to ERROR", before.name()),
                Err(Some(state)) => format!("nothing: the TDI is {}, not locked", state.name()),
                Err(None) => format!("nothing: {} has no TDI", abi::Bdf(devid)),
            },
            Platform::Doe { devid, fault } => match device(self, devid) {
                Some(d) => {
                    d.doe(fault);
                    match fault {
                        DoeFault::Busy { reads } => format!("the DOE mailbox shows Busy for the next {reads} Status reads"),
                        DoeFault::Error => "DOE Error set; an Abort clears it".into(),
                        DoeFault::NeedsAbort => "the DOE mailbox answers nothing until an Abort".into(),
                    }
                }
                None => format!("nothing: {} has no DOE mailbox", abi::Bdf(devid)),
            },
            Platform::RingStall { devid } => match device(self, devid) {
                Some(d) => {
                    d.stall_ring();
                    "the ring stopped making progress (BUSY stays set until CTRL.RESET)".into()
                }
                None => format!("nothing: {} has no ring", abi::Bdf(devid)),
            },
            Platform::EndpointDma(dma) => match device(self, dma.devid) {
                Some(d) if d.rogue_dma(dma) => format!(
                    "the device {} {} bytes at {:#x} (T={}) on its own",
                    if dma.write { "writes" } else { "reads" },
                    dma.len,
                    dma.iova,
                    u8::from(dma.t)
                ),
                _ => format!("nothing: {} cannot DMA now", abi::Bdf(dma.devid)),
            },
        }
    }

    /// Rewrite one page's RMP entry in memory from the model's state.
    fn mirror_entry<M: PhysMem + ?Sized>(&self, mem: &mut M, pfn: u64) {
        if let (Some(raw), true) = (self.rmp.as_ref().and_then(|r| r.raw(pfn)), self.rmp_base != 0) {
            if let Some(at) = Rmp::entry_offset(pfn).checked_add(self.rmp_base) {
                let _ = mem.write(at, &raw);
            }
        }
    }

    /// The RMP check of a DMA request cannot be made: an injected RMP hardware error, or the
    /// page's entry in memory disagreeing with the model's. Logs RMP_HW_ERROR; the request is
    /// aborted.
    pub(crate) fn rmp_read_fails<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, iova: u64, spa: u64, write: bool) -> Option<Event> {
        if self.rmp.is_none() || (self.inject.injector.is_empty() && self.inject.changed_rmp.is_empty()) {
            return None;
        }
        let pfn = spa >> 12;
        let rw = if write { flags::RW } else { 0 };
        let ev = Event::rmp_hw_error(rid, 0, rw | flags::TYPE_DATA_ERROR, spa & !0xfff);
        if let Some((id, p)) = self.inject.injector.fire_one(At::Dma { devid: rid, iova }, Platform::at_rmp_check) {
            let logged = self.amdvi.log_event(mem, &ev);
            let effect = format!("RMP_HW_ERROR for {spa:#x}: {}'s request to {iova:#x} aborted", abi::Bdf(rid));
            self.note(ev::Injected {
                id,
                fault: p.name().into(),
                effect,
                logged: Some(u32::from(logged)),
                event: Some("RMP_HW_ERROR".into()),
                devid: Some(abi::Bdf(rid)),
                address: Some(spa & !0xfff),
                ..Default::default()
            });
            return Some(ev);
        }
        if !self.inject.changed_rmp.contains(&pfn) {
            return None;
        }
        let want = self.rmp.as_ref().and_then(|r| r.raw(pfn))?;
        let mut have = [0u8; 16];
        if self.rmp_base == 0
            || Rmp::entry_offset(pfn).checked_add(self.rmp_base).is_none_or(|at| mem.read(at, &mut have).is_err())
            || have == want
        {
            // Written back (by the model or anyone): nothing disagrees any more.
            self.inject.changed_rmp.remove(&pfn);
            return None;
        }
        let logged = self.amdvi.log_event(mem, &ev);
        self.events.emit(ev::Event::RmpMirrorMismatch(ev::RmpMirrorMismatch {
            devid: abi::Bdf(rid),
            iova,
            spa: spa & !0xfff,
            memory: hex(&have),
            rmp: hex(&want),
            event: "RMP_HW_ERROR".into(),
            logged,
            injected: true,
        }));
        Some(ev)
    }
}

fn hex(b: &[u8; 16]) -> String {
    b.iter().rev().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::tdi::Via;
    use crate::secure::{bind_running_tdi, Refusal};
    use crate::testing::Collect;
    use crate::testing::Irqs;
    use iommu_model::amdvi::builder::V1Builder;
    use iommu_model::amdvi::dte::Dte;
    use iommu_model::amdvi::mmio::{self, control};
    use iommu_model::mem::ByteMem;
    use iommu_model::walk::{Access, Perm};
    use rmp_model::dma_check::DmaRefusal;
    use rmp_model::ops::{GuestCtx, RmpState};
    use rmp_model::tdisp::TdiState;
    use rmp_model::PageSize;
    use std::sync::Mutex;

    const RID: u16 = 0x20;
    const EVT: u64 = 0x8000;
    const RMP_BASE: u64 = 0x40_0000;

    /// SNP on with the RMP mirrored at RMP_BASE, an event log, the endpoint's TDI in RUN for
    /// ASID 2; IOVA 0x5000-0x8fff mapped to ASID 2's private pages 0x30_0000.., IOVA 0x9000
    /// to the shared page 0x31_0000.
    fn rig() -> (SecureIommu, ByteMem, Arc<Collect>) {
        let mut mem = ByteMem::new(0, 8 << 20);
        let mut pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 4).unwrap();
        for i in 0..4u64 {
            pt.map(&mut mem, 0x5000 + i * 0x1000, 0x30_0000 + i * 0x1000, 12, Perm::RW).unwrap();
        }
        pt.map(&mut mem, 0x9000, 0x31_0000, 12, Perm::RW).unwrap();
        mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).unwrap();
        let events = Arc::new(Collect::default());
        let mut s = SecureIommu::new(events.clone(), Arc::new(Irqs::default()));
        s.amdvi.mmio_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
        s.amdvi.mmio_write(&mut mem, mmio::EVENT_LOG_BASE, 8, EVT | 8 << 56);
        s.amdvi.mmio_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN | control::EVENT_LOG_EN);
        s.rmp_base = RMP_BASE;
        s.rmp_end = RMP_BASE + Rmp::table_bytes(2048) - 1;
        let mut rmp = Rmp::new(2048);
        for i in 0..4u64 {
            let (spa, gpa) = (0x30_0000 + i * 0x1000, 0x5000 + i * 0x1000);
            assert_eq!(rmp.rmpupdate(spa, &RmpState::private(gpa, 2, PageSize::Size4K)).status, rmp_model::RmpStatus::Success);
            rmp.pvalidate(GuestCtx { asid: 2, vmpl: 0 }, spa, gpa, PageSize::Size4K, true);
        }
        s.rmp = Some(rmp);
        bind_running_tdi(&mut s, RID, 2, 1 << 40);
        (s, mem, events)
    }

    fn of(events: &Collect, ty: &str) -> Vec<Value> {
        events.0.lock().unwrap().iter().filter(|e| e["type"] == ty).cloned().collect()
    }

    fn log(mem: &ByteMem, s: &SecureIommu) -> Vec<Event> {
        let tail = s.amdvi.mmio_read(mmio::EVENT_LOG_TAIL, 8);
        (0..tail / 16)
            .map(|i| {
                let mut b = [0u8; 16];
                mem.read(EVT + i * 16, &mut b).unwrap();
                Event::from_bytes(&b)
            })
            .collect()
    }

    fn arm(s: &mut SecureIommu, mem: &mut ByteMem, id: u32, req: &str) -> Vec<Value> {
        let (f, w) = parse(&serde_json::from_str(req).unwrap()).unwrap();
        s.arm(mem, id, f, w).unwrap().iter().map(|r| serde_json::to_value(r).unwrap()).collect()
    }

    #[test]
    fn rmp_hw_error_aborts_the_chosen_request_fails_closed_and_is_logged() {
        let (mut s, mut mem, events) = rig();
        arm(&mut s, &mut mem, 1, r#"{"fault":"rmp-hw-error","iova":"0x6000"}"#);
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Write).is_ok(), "another IOVA");
        match s.page(&mut mem, RID, true, 0x6000, Access::Write) {
            Err(Refusal::HwError(e)) => assert_eq!(e, Event::rmp_hw_error(RID, 0, flags::RW | flags::TYPE_DATA_ERROR, 0x30_1000)),
            r => panic!("{r:?}"),
        }
        assert_eq!(log(&mem, &s).last().map(Event::name), Some("RMP_HW_ERROR"));
        assert_eq!(of(&events, "injected")[0]["address"], "0x301000");
        assert!(s.page(&mut mem, RID, true, 0x6000, Access::Write).is_ok(), "once");
    }

    /// The RMP's copy in memory disagrees with the model: the page's next DMA check cannot
    /// trust either, so it is refused with RMP_HW_ERROR, until the entry is written again.
    #[test]
    fn an_rmp_entry_changed_in_memory_refuses_dma_to_its_page_until_rewritten() {
        let (mut s, mut mem, events) = rig();
        let want = s.rmp.as_ref().unwrap().raw(0x300).unwrap();
        let fired = arm(&mut s, &mut mem, 1, r#"{"fault":"rmp-entry-changed","spa":"0x300000"}"#);
        assert!(fired[0]["effect"].as_str().unwrap().contains("reads"), "{fired:?}");
        let mut have = [0u8; 16];
        mem.read(RMP_BASE + Rmp::entry_offset(0x300), &mut have).unwrap();
        assert_eq!(have[0] ^ want[0], 1, "Assigned flipped in memory");
        assert_eq!(s.rmp.as_ref().unwrap().raw(0x300), Some(want), "the model's state kept");
        for _ in 0..2 {
            assert!(matches!(s.page(&mut mem, RID, true, 0x5000, Access::Read), Err(Refusal::HwError(_))));
        }
        assert!(s.page(&mut mem, RID, true, 0x6000, Access::Read).is_ok(), "other pages are checked as before");
        let mm = of(&events, "rmp_mirror_mismatch");
        assert_eq!((mm.len(), mm[0]["spa"].as_str(), mm[0]["injected"].as_bool()), (2, Some("0x300000"), Some(true)));
        // clear rewrites the entry from the model's state.
        s.clear_faults(&mut mem, None);
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Read).is_ok());
        // Changed again, then written back (as the model's next RMPUPDATE of the page would):
        // allowed again.
        arm(&mut s, &mut mem, 2, r#"{"fault":"rmp-entry-changed","spa":"0x300000"}"#);
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Read).is_err());
        mem.write(RMP_BASE + Rmp::entry_offset(0x300), &want).unwrap();
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Read).is_ok(), "the host wrote it back");
        assert!(s.inject.changed_rmp.is_empty());
    }

    /// An AMD-Vi fault that fires at a DMA request the unit then allows (here: records logged
    /// for another address) is reported at that request, not at the next register write.
    #[test]
    fn an_amdvi_fault_firing_at_an_allowed_request_is_reported_at_once() {
        let (mut s, mut mem, events) = rig();
        arm(&mut s, &mut mem, 1, r#"{"fault":"io-page-fault","device":"00:04.0","iova":"0xdead0000","after_dma":1}"#);
        assert!(of(&events, "injected").is_empty(), "not due yet");
        assert!(s.page(&mut mem, RID, false, 0x9000, Access::Read).is_ok());
        assert!(s.page(&mut mem, RID, false, 0x9000, Access::Read).is_ok(), "allowed: the fault is a logged record, not this request's");
        let fired = of(&events, "injected");
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!((fired[0]["event"].as_str(), fired[0]["address"].as_str()), (Some("IO_PAGE_FAULT"), Some("0xdead0000")));
    }

    /// The TDI goes to ERROR in the middle of a T=1 transfer: the pages before passed, the
    /// one at which it fired and all after are refused (T=1 from a TDI not in RUN).
    #[test]
    fn tdi_error_after_n_requests_stops_t1_dma_until_stop_and_rebind() {
        let (mut s, mut mem, events) = rig();
        arm(&mut s, &mut mem, 1, r#"{"fault":"tdi-error","device":"00:04.0","after_dma":2}"#);
        let got: Vec<bool> = (0..4u64).map(|i| s.page(&mut mem, RID, true, 0x5000 + i * 0x1000, Access::Write).is_ok()).collect();
        assert_eq!(got, [true, true, false, false]);
        assert!(matches!(s.page(&mut mem, RID, true, 0x5000, Access::Write), Err(Refusal::Rmp(DmaRefusal::TdiNotRun))));
        assert!(s.page(&mut mem, RID, false, 0x9000, Access::Write).is_ok(), "T=0 DMA goes on");
        assert_eq!(s.tio.asid_fence_status(2), 0, "the device's own error fences nothing");
        let t: Vec<_> = of(&events, "tdisp").into_iter().filter(|e| e["via"] == "injected").collect();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0]["from"].as_str(), t[0]["to"].as_str(), t[0]["injected"].as_bool()), (Some("RUN"), Some("ERROR"), Some(true)));
        // The host STOPs the TDI; T=1 stays refused until it is bound and RUN again.
        let tdis = s.tdis();
        let stop = rmp_model::tdisp::request(rmp_model::tdisp::req::STOP_INTERFACE, u32::from(RID), &[]);
        tdis.request(RID, &stop, Via::Firmware);
        assert_eq!(tdis.state(RID), TdiState::ConfigUnlocked);
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Write).is_err());
        let tdi = *s.tio.tdis.keys().next().unwrap();
        let mut tr = |rid: u16, m: &[u8]| tdis.request(rid, m, Via::Firmware);
        assert_eq!(s.tio.tdi_unbind(tdi, false, &mut tr), rmp_model::tio::TioStatus::Success);
        assert_eq!(s.tio.tdi_bind(tdi, 2, 0x100, 0, true, &mut tr), rmp_model::tio::TioStatus::Success);
        s.tio.sdte_write(tdi, 1 << 40);
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Write).is_ok(), "a clean re-bind");
        // Not locked: nothing to move.
        tdis.request(RID, &stop, Via::Firmware);
        let fired = arm(&mut s, &mut mem, 2, r#"{"fault":"tdi-error","device":"00:04.0"}"#);
        assert!(fired[0]["effect"].as_str().unwrap().starts_with("nothing"), "{fired:?}");
    }

    #[test]
    fn an_injected_table_error_is_marked_in_the_translation_fault_record() {
        let (mut s, mut mem, events) = rig();
        arm(&mut s, &mut mem, 4, r#"{"fault":"page-tab-hardware-error","device":"00:04.0"}"#);
        assert!(matches!(s.page(&mut mem, RID, false, 0x9000, Access::Read), Err(Refusal::Translation(_))));
        assert!(s.page(&mut mem, RID, false, 0xa000, Access::Read).is_err(), "a real fault (unmapped)");
        let tf = of(&events, "translation_fault");
        assert_eq!((tf[0]["event"].as_str(), tf[0]["injected"].as_bool()), (Some("PAGE_TAB_HARDWARE_ERROR"), Some(true)));
        assert_eq!((tf[1]["event"].as_str(), tf[1].get("injected")), (Some("IO_PAGE_FAULT"), None));
        assert_eq!(of(&events, "injected")[0]["id"], 4);
    }

    #[derive(Default)]
    struct Dev {
        did: Mutex<Vec<String>>,
    }
    impl FaultyDevice for Dev {
        fn doe(&self, f: DoeFault) {
            self.did.lock().unwrap().push(format!("{f:?}"));
        }
        fn stall_ring(&self) {
            self.did.lock().unwrap().push("stall".into());
        }
        fn rogue_dma(&self, d: RogueDma) -> bool {
            self.did.lock().unwrap().push(format!("dma {:#x}", d.iova));
            true
        }
        fn clear(&self) {
            self.did.lock().unwrap().push("clear".into());
        }
    }

    /// Device faults reach the device when due: after N commands the driver ran, or at once.
    #[test]
    fn device_faults_are_handed_to_the_device_when_due() {
        let (mut s, mut mem, events) = rig();
        let dev = Arc::new(Dev::default());
        s.inject.devices.insert(RID, dev.clone());
        arm(&mut s, &mut mem, 1, r#"{"fault":"ring-stall","device":"00:04.0","after_commands":2}"#);
        arm(&mut s, &mut mem, 2, r#"{"fault":"doe-busy","device":"00:04.0","reads":9}"#);
        arm(&mut s, &mut mem, 3, r#"{"fault":"endpoint-dma","device":"00:04.0","iova":"0x9000"}"#);
        let fired = arm(&mut s, &mut mem, 4, r#"{"fault":"doe-error","device":"00:05.0"}"#);
        assert!(fired[0]["effect"].as_str().unwrap().starts_with("nothing"), "no such device");
        assert_eq!(*dev.did.lock().unwrap(), ["Busy { reads: 9 }", "dma 0x9000"]);
        // Two commands through the command buffer: the stall is due.
        s.amdvi.commands[2] += 2;
        s.after_register_write(&mut mem);
        assert_eq!(dev.did.lock().unwrap().last().map(String::as_str), Some("stall"));
        s.clear_faults(&mut mem, None);
        assert_eq!(dev.did.lock().unwrap().last().map(String::as_str), Some("clear"));
        assert_eq!(of(&events, "injected").len(), 4);
        assert_eq!(s.inject.fired.len(), 4, "kept for status");
    }

    fn p(s: &str) -> Result<(Fault, When), String> {
        parse(&serde_json::from_str(s).unwrap())
    }

    #[test]
    fn requests_parse_with_their_triggers() {
        let (f, w) = p(r#"{"fault":"illegal-command","after_commands":3}"#).unwrap();
        assert_eq!((f, w.after_commands, w.times), (Fault::AmdVi(AmdViFault::IllegalCommand), 3, 1));
        let (f, w) = p(r#"{"fault":"io-page-fault","device":"00:04.0","iova":"0x7000","count":600,"after_dma":2}"#).unwrap();
        assert_eq!(f, Fault::AmdVi(AmdViFault::IoPageFault { devid: 0x20, iova: 0x7000, count: 600 }));
        assert_eq!((w.device, w.iova, w.after_dma), (None, None, 2), "the device and IOVA are the record's, not filters");
        let (f, w) = p(r#"{"fault":"page-tab-hardware-error","device":"00:04.0","iova":4096}"#).unwrap();
        assert_eq!((f, w.device, w.iova), (Fault::AmdVi(AmdViFault::PageTabHardwareError), Some(0x20), Some(0x1000)), "filters");
        let (_, w) = p(r#"{"fault":"rmp-hw-error","probability":0.25,"seed":"7","times":0}"#).unwrap();
        assert_eq!((w.chance, w.times), (Some(Chance { per_million: 250_000, seed: 7 }), 0));
        let (f, w) = p(r#"{"fault":"tdi-error","device":"00:04.0","after_dma":5}"#).unwrap();
        assert_eq!((f, w.device, w.after_dma), (Fault::Platform(Platform::TdiError { devid: 0x20 }), None, 5));
        let (f, _) = p(r#"{"fault":"endpoint-dma","device":"00:04.0","iova":"0x9000","len":4096,"t":true}"#).unwrap();
        assert_eq!(f, Fault::Platform(Platform::EndpointDma(RogueDma { devid: 0x20, iova: 0x9000, len: 4096, write: true, t: true })));
        let (f, _) = p(r#"{"fault":"doe-busy","device":"00:04.0","reads":5}"#).unwrap();
        assert_eq!(f, Fault::Platform(Platform::Doe { devid: 0x20, fault: DoeFault::Busy { reads: 5 } }));
        let (f, _) = p(r#"{"fault":"rmp-entry-changed","spa":"0x20_5123"}"#).unwrap();
        assert_eq!(f, Fault::Platform(Platform::RmpEntryChanged { spa: 0x20_5000 }));
        let (f, w) = p(r#"{"fault":"primary-fault","device":"00:04.0","iova":"0x7123","count":600,"after_dma":2}"#).unwrap();
        assert_eq!(f, Fault::Vtd(VtdFault::PrimaryFaults { sid: 0x20, addr: 0x7000, count: 600 }));
        assert_eq!((w.device, w.iova, w.after_dma), (None, None, 2));
        let (f, w) = p(r#"{"fault":"inv-time-out","device":"00:04.0","after_commands":4}"#).unwrap();
        assert_eq!((f, w.device, w.after_commands), (Fault::Vtd(VtdFault::Timeout { sid: 0x20 }), None, 4), "ITESID, not a filter");
        assert_eq!(p(r#"{"fault":"inv-time-out"}"#).unwrap().0, Fault::Vtd(VtdFault::Timeout { sid: 0 }));
        let (f, w) = p(r#"{"fault":"inv-queue-error","after_commands":1}"#).unwrap();
        assert_eq!((f, w.after_commands), (Fault::Vtd(VtdFault::QueueError), 1));
        assert_eq!(p(r#"{"fault":"inv-wait-lost"}"#).unwrap().0.kind(), FaultName::InvWaitLost);
        for name in FaultName::ALL.iter().map(|f| f.name()) {
            assert!(!p(&format!(r#"{{"fault":"{name}"}}"#)).is_err_and(|e| e.starts_with("no fault")), "{name} is known");
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        for (req, why) in [
            (r#"{}"#, "no fault named"),
            (r#"{"fault":"melt"}"#, "no fault \"melt\""),
            (r#"{"fault":"io-page-fault","iova":1}"#, "needs a device"),
            (r#"{"fault":"io-page-fault","device":"00:04.0"}"#, "needs --iova"),
            (r#"{"fault":"io-page-fault","device":"00:04.0","iova":1,"count":0}"#, "count is 1 to 65536"),
            (r#"{"fault":"primary-fault","device":"00:04.0"}"#, "needs --iova"),
            (r#"{"fault":"primary-fault","iova":1}"#, "needs a device"),
            (r#"{"fault":"inv-time-out","iova":1}"#, "takes no iova"),
            (r#"{"fault":"inv-wait-lost","count":2}"#, "takes no count"),
            (r#"{"fault":"inv-queue-error","device":"00:04.0"}"#, "takes no device or iova"),
            (r#"{"fault":"illegal-command","count":3}"#, "takes no count"),
            (r#"{"fault":"ring-stall","device":"00:04.0","iova":1}"#, "takes no iova"),
            (r#"{"fault":"tdi-error","device":"zz"}"#, "device:"),
            (r#"{"fault":"illegal-command","after_commands":-1}"#, "after_commands"),
            (r#"{"fault":"illegal-command","probability":1.5}"#, "probability"),
            (r#"{"fault":"illegal-command","seed":3}"#, "seed without probability"),
            (r#"{"fault":"endpoint-dma","device":"00:04.0","iova":1,"len":99999999}"#, "len is 1 to"),
        ] {
            let e = p(req).expect_err(req);
            assert!(e.contains(why), "{req}: {e}");
        }
    }
}
