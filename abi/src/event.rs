//! The records of the daemon's event stream (`tiommu daemon --events FILE`, one JSON object per
//! line) and of the TCG plugin's (`rmp_cpu_violation`), as one type: the daemon writes them, the
//! checker and `tiommu events` read them, a test states what it expects with them.
//!
//! How a record is written (docs/device-abi.md, "Event stream"):
//! - `type` names the record (the variant of [`Event`], in snake case); a daemon record also has
//!   `ts`, see [`Record`];
//! - a device is its requester id as a [`Bdf`], `"00:04.0"`, always in a field `devid`;
//! - addresses, and the other values of a register's width written in hex, are `"0x..."`
//!   strings; reading accepts a number in either base;
//! - a status or reason code is written as its name (a code without a name as its number) and
//!   read from either; fields given as names by the models (events, states, refusals) are
//!   strings;
//! - a field that does not apply to a record is left out.
//!
//! A test states a record it expects with [`expect!`](crate::expect): a subset of one record's
//! fields, checked field by field against the stream with typed values.

use crate::codes::codes;
use crate::endpoint::{DmaStatus, Op};
use crate::serde_helpers::{hex, words};
use crate::tdx::TdxStatus;
use crate::virtio_iommu::ReqStatus;
use crate::Bdf;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One line of a stream: the record, and when the daemon wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub event: Event,
    /// Seconds since the daemon started, from its monotonic clock (`Instant`, microsecond
    /// resolution), taken when the record was emitted; the TCG plugin's records have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    TranslationFault(TranslationFault),
    VtdInterrupt(VtdInterrupt),
    RmpViolation(RmpViolation),
    TdxViolation(TdxViolation),
    TdxCall(TdxCall),
    Hazard(Hazard),
    HazardSearchIncomplete(HazardSearchIncomplete),
    AmdviCommands(AmdviCommands),
    VtdInvalidations(VtdInvalidations),
    Rmpupdate(Rmpupdate),
    Tdisp(Tdisp),
    AsidFence(AsidFence),
    Dma(Dma),
    DmaHalted(DmaHalted),
    IoatHalted(IoatHalted),
    IoatReset(IoatReset),
    Viommu(Viommu),
    ViommuFault(ViommuFault),
    Injected(Injected),
    InjectedArmed(InjectedArmed),
    InjectedCleared(InjectedCleared),
    RmpMirrorMismatch(RmpMirrorMismatch),
    Snp(Snp),
    EventsLimit(EventsLimit),
    EventsDropped(EventsDropped),
    PowerCycle(PowerCycle),
    PartialAttach(PartialAttach),
    DaemonExit(DaemonExit),
    RmpCpuViolation(RmpCpuViolation),
}

/// Every record type, as `type` names it.
pub const KINDS: &[&str] = &[
    "translation_fault",
    "vtd_interrupt",
    "rmp_violation",
    "tdx_violation",
    "tdx_call",
    "hazard",
    "hazard_search_incomplete",
    "amdvi_commands",
    "vtd_invalidations",
    "rmpupdate",
    "tdisp",
    "asid_fence",
    "dma",
    "dma_halted",
    "ioat_halted",
    "ioat_reset",
    "viommu",
    "viommu_fault",
    "injected",
    "injected_armed",
    "injected_cleared",
    "rmp_mirror_mismatch",
    "snp",
    "events_limit",
    "events_dropped",
    "power_cycle",
    "partial_attach",
    "daemon_exit",
    "rmp_cpu_violation",
];

impl Event {
    /// The record's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TranslationFault(_) => "translation_fault",
            Event::VtdInterrupt(_) => "vtd_interrupt",
            Event::RmpViolation(_) => "rmp_violation",
            Event::TdxViolation(_) => "tdx_violation",
            Event::TdxCall(_) => "tdx_call",
            Event::Hazard(_) => "hazard",
            Event::HazardSearchIncomplete(_) => "hazard_search_incomplete",
            Event::AmdviCommands(_) => "amdvi_commands",
            Event::VtdInvalidations(_) => "vtd_invalidations",
            Event::Rmpupdate(_) => "rmpupdate",
            Event::Tdisp(_) => "tdisp",
            Event::AsidFence(_) => "asid_fence",
            Event::Dma(_) => "dma",
            Event::DmaHalted(_) => "dma_halted",
            Event::IoatHalted(_) => "ioat_halted",
            Event::IoatReset(_) => "ioat_reset",
            Event::Viommu(_) => "viommu",
            Event::ViommuFault(_) => "viommu_fault",
            Event::Injected(_) => "injected",
            Event::InjectedArmed(_) => "injected_armed",
            Event::InjectedCleared(_) => "injected_cleared",
            Event::RmpMirrorMismatch(_) => "rmp_mirror_mismatch",
            Event::Snp(_) => "snp",
            Event::EventsLimit(_) => "events_limit",
            Event::EventsDropped(_) => "events_dropped",
            Event::PowerCycle(_) => "power_cycle",
            Event::PartialAttach(_) => "partial_attach",
            Event::DaemonExit(_) => "daemon_exit",
            Event::RmpCpuViolation(_) => "rmp_cpu_violation",
        }
    }

    /// The device the record is about, where it names one.
    pub fn devid(&self) -> Option<Bdf> {
        match self {
            Event::TranslationFault(e) => Some(e.devid),
            Event::RmpViolation(e) => Some(e.devid),
            Event::TdxViolation(e) => Some(e.devid),
            Event::TdxCall(e) => Some(e.devid),
            Event::Hazard(e) => Some(e.devid),
            Event::Tdisp(e) => Some(e.devid),
            Event::AsidFence(e) => Some(e.devid),
            Event::Dma(e) => Some(e.devid),
            Event::DmaHalted(e) => Some(e.devid),
            Event::IoatHalted(e) => Some(e.devid),
            Event::IoatReset(e) => Some(e.devid),
            Event::Viommu(e) => e.devid,
            Event::ViommuFault(e) => e.devid,
            Event::Injected(e) => e.devid,
            Event::RmpMirrorMismatch(e) => Some(e.devid),
            _ => None,
        }
    }

    /// The record's `type` and the named fields only, as one JSON object: what a test expects
    /// (a field the record leaves out is expected absent, as null).
    pub fn expectation(&self, fields: &[&str]) -> String {
        let v = serde_json::to_value(self).unwrap_or_default();
        // The type first, for a person reading the line.
        let mut out = format!("{{\"type\":\"{}\"", self.kind());
        for f in fields {
            let x = v.get(f).cloned().unwrap_or_default();
            out.push_str(&format!(",{}:{x}", serde_json::Value::from(*f)));
        }
        out.push('}');
        out
    }

    /// One record of each type with every field present: for the documentation test, the
    /// checker's list of fields, and `tiommu events`' test.
    pub fn examples() -> Vec<Event> {
        let devid = Bdf::new(0, 4, 0);
        let counts = BTreeMap::from([("COMPLETION_WAIT".to_string(), 3)]);
        vec![
            Event::TranslationFault(TranslationFault {
                event: "IO_PAGE_FAULT".into(),
                devid,
                iova: 0x5000,
                access: Access::Write,
                level: Some(1),
                flags: 0x20,
                logged: true,
                via: Via::VtD,
                reason: Some("0x05".into()),
                description: Some("PTE Write access is not set".into()),
                injected: Some(true),
            }),
            Event::VtdInterrupt(VtdInterrupt { event: "fault".into(), addr: 0xfee0_0000, data: 0x41 }),
            Event::RmpViolation(RmpViolation {
                event: "RMP_PAGE_FAULT".into(),
                devid,
                t: false,
                iova: 0x5000,
                spa: 0x30_0000,
                access: Access::Write,
                reason: "write to assigned page".into(),
                flags_rmp: 1,
                vmg_tag: 0,
                logged: true,
            }),
            Event::TdxViolation(TdxViolation {
                event: "TDX_DMA_REFUSED".into(),
                devid,
                t: true,
                iova: 0x5000,
                spa: Some(0x30_0000),
                access: Access::Read,
                reason: "untrusted access to a TD-private page".into(),
                logged: false,
            }),
            Event::TdxCall(TdxCall { call: "TDH.MEM.PAGE.ADD".into(), td: 1, devid, gpa: 0x5000, status: TdxStatus::PageInUse.into() }),
            Event::Hazard(Hazard {
                spa: 0x30_0000,
                asid: 2,
                devid,
                iova: 0x5000,
                size: 0x1000,
                write: true,
                via: Some(Via::AmdVi),
                domain: Some(3),
            }),
            Event::HazardSearchIncomplete(HazardSearchIncomplete { spa: 0x30_0000, budget: 4096 }),
            Event::AmdviCommands(AmdviCommands { counts: counts.clone() }),
            Event::VtdInvalidations(VtdInvalidations { counts: BTreeMap::from([("qi_iotlb".to_string(), 2)]) }),
            Event::Rmpupdate(Rmpupdate {
                spa: 0x30_0000,
                gpa: 0x5000,
                assigned: true,
                asid: 2,
                page_size: 4096,
                status: RmpStatus::Success.into(),
            }),
            Event::Tdisp(Tdisp { devid, from: "CONFIG_LOCKED".into(), to: "RUN".into(), via: "doe".into(), injected: Some(true) }),
            Event::AsidFence(AsidFence { asid: 2, devid, iova: 0x5000 }),
            Event::Dma(Dma {
                devid,
                index: Some(0),
                op: Some(Op::Copy.into()),
                access: Some(Access::Write),
                t: false,
                len: 4096,
                status: DmaStatus::Ok.into(),
                status_written: Some(true),
                src: Some(0x1000),
                dst: Some(0x2000),
                iova: Some(0x3000),
                injected: Some(true),
            }),
            Event::DmaHalted(DmaHalted { devid, index: 1, iova: 0x1000, what: "fetch".into(), status: DmaStatus::IoPageFault.into() }),
            Event::IoatHalted(IoatHalted {
                devid: Bdf::new(0, 6, 0),
                channel: 0,
                chanerr: 0x200,
                error: "write data error".into(),
                descriptor: 0x10_0000,
                iova: 0x82_1000,
                refusal: Some("IO_PAGE_FAULT".into()),
            }),
            Event::IoatReset(IoatReset { devid: Bdf::new(0, 6, 0), channel: IoatChannel::All }),
            Event::Viommu(Viommu {
                req: "map".into(),
                domain: Some(1),
                devid: Some(devid),
                endpoint: Some(0x1_0000),
                virt_start: Some(0x10_0000),
                virt_end: Some(0x10_0fff),
                phys_start: Some(0x30_0000),
                flags: Some(3),
                pages: Some(1),
                status: ReqStatus::Ok.into(),
            }),
            Event::ViommuFault(ViommuFault {
                devid: Some(devid),
                endpoint: Some(0x1_0000),
                address: 0x5000,
                reason: ViommuFaultReason::Mapping.into(),
                flags: 0x102,
                posted: true,
            }),
            Event::Injected(Injected {
                id: 1,
                fault: "io-page-fault".into(),
                effect: "an IO_PAGE_FAULT record in the event log".into(),
                logged: Some(1),
                event: Some("IO_PAGE_FAULT".into()),
                devid: Some(devid),
                address: Some(0x5000),
                iova: Some(0x5000),
                spa: Some(0x30_0000),
            }),
            Event::InjectedArmed(InjectedArmed {
                id: 1,
                fault: "ring-stall".into(),
                when: InjectWhen {
                    after_commands: Some(2),
                    after_dma: Some(1),
                    device: Some(devid),
                    iova: Some(0x5000),
                    probability: Some(0.5),
                    seed: Some(7),
                    times: 1,
                },
            }),
            Event::InjectedCleared(InjectedCleared { ids: vec![1, 2] }),
            Event::RmpMirrorMismatch(RmpMirrorMismatch {
                devid,
                iova: 0x5000,
                spa: 0x30_0000,
                memory: "00000000000000000000000000000001".into(),
                rmp: "00000000000000000000000000000000".into(),
                event: "RMP_HW_ERROR".into(),
                logged: true,
                injected: true,
            }),
            Event::Snp(Snp {
                enabled: false,
                pages: Some(131072),
                error: Some("RMP_END is below RMP_BASE".into()),
                rmp_base: Some(0x1000_0000),
                rmp_end: Some(0x0fff_ffff),
            }),
            Event::EventsLimit(EventsLimit { limit_bytes: 1 << 20 }),
            Event::EventsDropped(EventsDropped { reason: DropReason::Limit, count: 12, limit_bytes: Some(1 << 20) }),
            Event::PowerCycle(PowerCycle { session: 1, error: Some("vfio-user: connection reset".into()), peak_rss_kib: Some(20480) }),
            Event::PartialAttach(PartialAttach { gone: "iommu".into(), never_attached: vec!["endpoint".into()] }),
            Event::DaemonExit(DaemonExit { peak_rss_kib: Some(20480), signal: Some(15) }),
            Event::RmpCpuViolation(RmpCpuViolation {
                vcpu: 0,
                pc: 0xffff_ffff_8100_0000,
                vaddr: 0xffff_8880_0020_0018,
                spa: 0x20_0018,
                error_code: 0x8000_0003,
                rmp: RmpEntry { assigned: true, asid: 2, gpa: 0x20_0000, page_size: 4096, immutable: false, validated: true },
            }),
        ]
    }
}

/// The record's `type` and the listed fields of one record, as a test expects it:
/// `expect!(Hazard { iova: 0x5000, devid })`. The field names and value types are checked by
/// the compiler; the fields not listed are not compared.
#[macro_export]
macro_rules! expect {
    ($ty:ident { $($f:ident $(: $v:expr)?),* $(,)? }) => {{
        #[allow(clippy::needless_update)]
        let e = $crate::event::Event::$ty($crate::event::$ty { $($f $(: $v)?,)* ..::core::default::Default::default() });
        e.expectation(&[$(stringify!($f)),*])
    }};
}

words! {
    /// Which way a request moved data.
    Access { Read = "read", Write = "write", }
}

words! {
    /// The front that translated (or refused) a request.
    Via { AmdVi = "amd-vi", VtD = "vt-d", VirtioIommu = "virtio-iommu", }
}

words! {
    /// Why records were not written.
    DropReason {
        /// The writer's queue was full.
        QueueFull = "queue_full",
        /// The stream reached `--events-limit`.
        Limit = "limit",
    }
}

codes! {
    /// An RMP instruction's return code (AMD APM vol. 3, RMPUPDATE; rmp-model's `RmpStatus`):
    /// the `rmpupdate` record's status.
    pub enum RmpStatus: u8 {
        Success = 0 => "SUCCESS",
        FailInput = 1 => "FAIL_INPUT",
        FailPermission = 2 => "FAIL_PERMISSION",
        FailInuse = 3 => "FAIL_INUSE",
        FailOverlap = 4 => "FAIL_OVERLAP",
        FailSizeMismatch = 6 => "FAIL_SIZEMISMATCH",
        NoUpdate = 255 => "FAIL_NOUPDATE",
    }
}

codes! {
    /// A virtio-iommu fault's reason (virtio 1.3 §5.13.6.9, VIRTIO_IOMMU_FAULT_R_*; the fault
    /// record's byte is [`crate::virtio_iommu::fault`]).
    pub enum ViommuFaultReason: u8 {
        Unknown = 0 => "UNKNOWN",
        Domain = 1 => "DOMAIN",
        Mapping = 2 => "MAPPING",
    }
}

/// An enum of codes the ABI names (made by `codes!`), as a record's [`Code`] uses it.
pub trait Named: Copy + PartialEq + 'static {
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
    fn number(self) -> u64;
}

macro_rules! named {
    ($($t:ty),*) => {
        $(impl Named for $t {
            fn all() -> &'static [Self] {
                <$t>::ALL
            }
            fn name(self) -> &'static str {
                <$t>::name(self)
            }
            fn number(self) -> u64 {
                u64::from(self.code())
            }
        })*
    };
}

named!(DmaStatus, Op, TdxStatus, ReqStatus, RmpStatus, ViommuFaultReason);

/// A status or reason in a record: a code the ABI names, written as its name, or a number it
/// does not define (a guest can write any op byte), written as the number. Read from the name
/// in any case, a number, or a number in a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code<E> {
    Known(E),
    Unknown(u64),
}

impl<E: Named> Code<E> {
    pub fn from_number(n: u64) -> Self {
        E::all().iter().copied().find(|e| e.number() == n).map_or(Code::Unknown(n), Code::Known)
    }

    pub fn number(self) -> u64 {
        match self {
            Code::Known(e) => e.number(),
            Code::Unknown(n) => n,
        }
    }

    pub fn known(self) -> Option<E> {
        match self {
            Code::Known(e) => Some(e),
            Code::Unknown(_) => None,
        }
    }
}

impl<E> From<E> for Code<E> {
    fn from(e: E) -> Self {
        Code::Known(e)
    }
}

impl<E: Named> Default for Code<E> {
    fn default() -> Self {
        Code::from_number(0)
    }
}

impl<E: Named> std::fmt::Display for Code<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Code::Known(e) => f.write_str(e.name()),
            Code::Unknown(n) => write!(f, "{n:#x}"),
        }
    }
}

impl<E: Named> Serialize for Code<E> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Code::Known(e) => s.serialize_str(e.name()),
            Code::Unknown(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de, E: Named> Deserialize<'de> for Code<E> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = crate::serde_helpers::code(
            d,
            |name| E::all().iter().find(|e| e.name().eq_ignore_ascii_case(name)).map(|e| e.number()),
            || E::all().iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
        )?;
        Ok(Code::from_number(n))
    }
}

/// Channels an IOAT reset stopped: one, or `"all"` (a function-level reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoatChannel {
    #[default]
    All,
    One(u32),
}

impl Serialize for IoatChannel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IoatChannel::All => s.serialize_str("all"),
            IoatChannel::One(c) => s.serialize_u32(*c),
        }
    }
}

impl<'de> Deserialize<'de> for IoatChannel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(c) => Ok(IoatChannel::One(c)),
            Raw::S(s) if s.eq_ignore_ascii_case("all") => Ok(IoatChannel::All),
            Raw::S(s) => {
                s.parse().map(IoatChannel::One).map_err(|_| serde::de::Error::custom(format!("channel {s:?}: a number or \"all\"")))
            }
        }
    }
}

/// A request the IOMMU's translation refused: through AMD-Vi the event it logs (spec name)
/// and its flags; through VT-d event `DMA_REMAP_FAULT`, flags the fault reason, `reason` that
/// reason in hex as Linux prints it and `description` Linux's words for it; through the
/// virtio-iommu what its domain's tables answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TranslationFault {
    pub event: String,
    pub devid: Bdf,
    #[serde(with = "hex")]
    pub iova: u64,
    pub access: Access,
    /// The page-table level the walk stopped at (none: before the tables).
    #[serde(default)]
    pub level: Option<u8>,
    pub flags: u32,
    /// Written to the guest's event log (VT-d: to a fault recording register).
    pub logged: bool,
    pub via: Via,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<bool>,
}

/// A VT-d unit's interrupt message (the daemon raised the function's MSI vector 0).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VtdInterrupt {
    /// "fault" or "invalidation_complete".
    pub event: String,
    #[serde(with = "hex")]
    pub addr: u64,
    #[serde(with = "hex")]
    pub data: u64,
}

/// The RMP check refused a request; `flags_rmp` and `vmg_tag` are the RMP_PAGE_FAULT record's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RmpViolation {
    pub event: String,
    pub devid: Bdf,
    pub t: bool,
    #[serde(with = "hex")]
    pub iova: u64,
    #[serde(with = "hex")]
    pub spa: u64,
    pub access: Access,
    pub reason: String,
    pub flags_rmp: u8,
    pub vmg_tag: u16,
    pub logged: bool,
}

/// The TDX Connect ownership check refused a request (no IOMMU record exists for it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TdxViolation {
    pub event: String,
    pub devid: Bdf,
    pub t: bool,
    #[serde(with = "hex")]
    pub iova: u64,
    /// None for a T=1 private request, which no host table translated.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub spa: Option<u64>,
    pub access: Access,
    pub reason: String,
    pub logged: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TdxCall {
    /// TDH.* / TDG.* name.
    pub call: String,
    pub td: u32,
    pub devid: Bdf,
    #[serde(with = "hex")]
    pub gpa: u64,
    pub status: Code<TdxStatus>,
}

/// A page made private while a T=0 mapping of it is live.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hazard {
    #[serde(with = "hex")]
    pub spa: u64,
    pub asid: u16,
    pub devid: Bdf,
    #[serde(with = "hex")]
    pub iova: u64,
    pub size: u64,
    pub write: bool,
    /// The tables searched (none: from the registry of walked mappings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// The DTE's domain or the context entry's DID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HazardSearchIncomplete {
    #[serde(with = "hex")]
    pub spa: u64,
    pub budget: u64,
}

/// The AMD-Vi commands of a session, by spec name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AmdviCommands {
    pub counts: BTreeMap<String, u64>,
}

/// The VT-d invalidations of a session, by kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VtdInvalidations {
    pub counts: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rmpupdate {
    #[serde(with = "hex")]
    pub spa: u64,
    #[serde(with = "hex")]
    pub gpa: u64,
    pub assigned: bool,
    pub asid: u16,
    pub page_size: u64,
    pub status: Code<RmpStatus>,
}

/// A TDI's TDISP state changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tdisp {
    pub devid: Bdf,
    pub from: String,
    pub to: String,
    /// "doe", "firmware", "tdx-module", "injected", or the config write that moved it.
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<bool>,
}

/// An ASID fenced from further I/O by a host-caused fault on a TDI in RUN.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AsidFence {
    pub asid: u16,
    pub devid: Bdf,
    #[serde(with = "hex")]
    pub iova: u64,
}

/// A descriptor the DMA endpoint completed (index, op, src, dst...), or a DMA it made on its
/// own because of an injected fault (access, iova, injected).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dma {
    pub devid: Bdf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Code<Op>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    pub t: bool,
    pub len: u32,
    pub status: Code<DmaStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_written: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub src: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub dst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub iova: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<bool>,
}

/// The endpoint's ring halted: a descriptor fetch or status write-back was refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DmaHalted {
    pub devid: Bdf,
    pub index: u32,
    #[serde(with = "hex")]
    pub iova: u64,
    /// "fetch" or "status write-back".
    pub what: String,
    pub status: Code<DmaStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoatHalted {
    pub devid: Bdf,
    pub channel: u32,
    /// The CHANERR bit set, and its name in `error`.
    pub chanerr: u32,
    pub error: String,
    #[serde(with = "hex")]
    pub descriptor: u64,
    #[serde(with = "hex")]
    pub iova: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoatReset {
    pub devid: Bdf,
    pub channel: IoatChannel,
}

/// A virtio-iommu request and its answer. The endpoint id is the requester id (the VIOT says
/// so), so it is a `devid`; an id that is no 16-bit requester id is `endpoint` instead.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Viommu {
    /// attach, detach, map, unmap, probe, "type N" (unknown) or "short".
    pub req: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devid: Option<Bdf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub virt_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub virt_end: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub phys_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// A MAP's 4 KiB pages (for VFIO type1: the pages the kernel pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
    pub status: Code<ReqStatus>,
}

/// A fault the virtio-iommu reported on its event queue (`posted`: it found a buffer there).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ViommuFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devid: Option<Bdf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u32>,
    #[serde(with = "hex")]
    pub address: u64,
    pub reason: Code<ViommuFaultReason>,
    pub flags: u32,
    pub posted: bool,
}

/// A fault armed on purpose fired (docs/fault-injection.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Injected {
    pub id: u32,
    pub fault: String,
    /// What it did, in words.
    pub effect: String,
    /// Records it put in the guest's event log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logged: Option<u32>,
    /// The first record it logged (spec name), and that record's device and address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devid: Option<Bdf>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub address: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub iova: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub spa: Option<u64>,
}

/// When an armed fault fires.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InjectWhen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_commands: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_dma: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Bdf>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub iova: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub times: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InjectedArmed {
    pub id: u32,
    pub fault: String,
    pub when: InjectWhen,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InjectedCleared {
    pub ids: Vec<u32>,
}

/// A DMA to a page whose RMP entry in memory disagrees with the model's was refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RmpMirrorMismatch {
    pub devid: Bdf,
    #[serde(with = "hex")]
    pub iova: u64,
    #[serde(with = "hex")]
    pub spa: u64,
    /// The 16-byte entries, hex, high byte first.
    pub memory: String,
    pub rmp: String,
    pub event: String,
    pub logged: bool,
    pub injected: bool,
}

/// SNP_EN: the RMP created (pages), or refused (error, and the window it was refused for).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snp {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub rmp_base: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex::opt")]
    pub rmp_end: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsLimit {
    pub limit_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsDropped {
    pub reason: DropReason,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
}

/// A `--persist` daemon's session ended (QEMU went) and the model powered on afresh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PowerCycle {
    pub session: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
}

/// A function's client left while others were never attached: the session ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialAttach {
    pub gone: String,
    pub never_attached: Vec<String>,
}

/// Always the last record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonExit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
    /// The signal that ended the daemon (SIGTERM, SIGINT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// The TCG plugin: a host CPU write to a guest-assigned page (an RMP #PF on hardware).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RmpCpuViolation {
    pub vcpu: u32,
    #[serde(with = "hex")]
    pub pc: u64,
    #[serde(with = "hex")]
    pub vaddr: u64,
    #[serde(with = "hex")]
    pub spa: u64,
    #[serde(with = "hex")]
    pub error_code: u64,
    pub rmp: RmpEntry,
}

/// An RMP entry's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RmpEntry {
    pub assigned: bool,
    pub asid: u32,
    #[serde(with = "hex")]
    pub gpa: u64,
    pub page_size: u64,
    pub immutable: bool,
    pub validated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_example_of_each_type_and_every_type_listed() {
        let ex = Event::examples();
        let kinds: Vec<&str> = ex.iter().map(Event::kind).collect();
        assert_eq!(kinds, KINDS, "Event::examples and KINDS: one of each type, in the enum's order");
        for e in &ex {
            let v = serde_json::to_value(e).unwrap();
            assert_eq!(v["type"], e.kind(), "kind() is the serde tag");
        }
    }

    #[test]
    fn records_round_trip_with_their_timestamp() {
        for event in Event::examples() {
            let r = Record { event, ts: Some(1.25) };
            let line = serde_json::to_string(&r).unwrap();
            assert!(line.starts_with("{\"type\":"), "{line}");
            assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn addresses_are_hex_and_read_in_either_base() {
        let e = Event::AsidFence(AsidFence { asid: 2, devid: Bdf(0x20), iova: 0x5000 });
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"type":"asid_fence","asid":2,"devid":"00:04.0","iova":"0x5000"}"#);
        for iova in [r#""0x5000""#, "20480", r#""20480""#] {
            let line = format!(r#"{{"type":"asid_fence","asid":2,"devid":"0x20","iova":{iova}}}"#);
            assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e, "{line}");
        }
    }

    #[test]
    fn codes_are_written_as_names_and_read_from_either() {
        type Status = Code<DmaStatus>;
        let fault = Status::from(DmaStatus::RmpPageFault);
        assert_eq!(serde_json::to_string(&fault).unwrap(), r#""RMP_PAGE_FAULT""#);
        assert_eq!(serde_json::to_string(&Status::from_number(99)).unwrap(), "99", "a code without a name");
        assert_eq!(Status::from_number(3), fault);
        for s in [r#""rmp_page_fault""#, "3", r#""0x3""#] {
            assert_eq!(serde_json::from_str::<Status>(s).unwrap(), fault, "{s}");
        }
        assert!(serde_json::from_str::<Status>(r#""RMP_PAGE_FALT""#).is_err());
        assert_eq!(serde_json::from_str::<Status>("70000").unwrap(), Status::Unknown(70000), "kept as the number");
        assert_eq!(Status::default(), DmaStatus::Pending.into());
        assert_eq!(serde_json::from_str::<Via>(r#""VT-D""#).unwrap(), Via::VtD);
        assert_eq!(serde_json::from_str::<IoatChannel>(r#""all""#).unwrap(), IoatChannel::All);
        assert_eq!(serde_json::from_str::<IoatChannel>("1").unwrap(), IoatChannel::One(1));
    }

    #[test]
    fn an_expectation_is_the_type_and_the_listed_fields() {
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let x = crate::expect!(Hazard { iova: 0x5000, devid: Bdf(0x20) });
        assert_eq!(x, r#"{"type":"hazard","iova":"0x5000","devid":"00:04.0"}"#, "the type first, the fields in order");
        assert_eq!(json(&x), json(r#"{"type":"hazard","iova":"0x5000","devid":"00:04.0"}"#));
        let via = Some(Via::VirtioIommu);
        let x = crate::expect!(Hazard { via });
        assert_eq!(json(&x), json(r#"{"type":"hazard","via":"virtio-iommu"}"#));
    }
}
