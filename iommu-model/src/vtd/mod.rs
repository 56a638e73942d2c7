//! Intel VT-d, legacy translation mode (RTADDR.TTM = 00): root table → context entry →
//! second-stage tables, with the fault reasons of VT-d spec §7.2 and Appendix A (Linux
//! drivers/iommu/intel/dmar.c dma_remap_fault_reasons). The order of the checks, the level at
//! which a permission fault is taken and which faults FPD suppresses follow QEMU
//! hw/i386/intel_iommu.c (vtd_dev_to_context_entry, vtd_iova_to_slpte, vtd_qualified_faults).
//! Scalable mode (RTADDR.TTM = 01: scalable context entries, PASID directory and table) would be
//! another root/context decoder in this directory feeding the same second-stage walk.
//!
//! The functions here are the uncached request path. `unit` is the remapping unit software
//! programs through its registers (`regs`): caches, invalidation (`inv`), fault recording
//! (`recording`), its interrupt messages (`event`) and the faults a tool injects (`inject`).

pub mod context;
pub mod event;
pub mod fault;
pub mod inject;
pub mod inv;
pub mod recording;
pub mod regs;
pub mod reverse;
pub mod root;
pub mod unit;

pub use fault::{FaultReason, FaultRecord};

use crate::fmt::vtd_ss::{self, VtdSs};
use crate::mem::PhysMem;
use crate::walk::{self, Access, FaultKind, Perm, Translation};
use context::{ContextEntry, TranslationType};

/// The capabilities of the modelled remapping unit that change translation: the parts of CAP,
/// ECAP and the platform's host address width that the walk reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Host address width (the DMAR table's HAW; QEMU's aw-bits): table pointers and output
    /// addresses at or above 2^haw are reserved bits. 32..=52 (outside it, the nearest).
    pub haw: u8,
    /// CAP.MGAW + 1: input addresses at or above 2^min(AGAW, MGAW) fault with reason 0x4.
    pub mgaw: u8,
    /// CAP.SAGAW: bit n set means context AW n is supported (1: 39-bit 3-level, 2: 48-bit 4-level,
    /// 3: 57-bit 5-level). Any other AW is an invalid context entry (0x3).
    pub sagaw: u8,
    /// CAP.SLLPS: 2 MiB and 1 GiB second-stage pages.
    pub sp_2m: bool,
    pub sp_1g: bool,
    /// ECAP.PT: TT=2 (pass-through) is allowed.
    pub pass_through: bool,
    /// ECAP.DT: TT=1 (device-TLB) is allowed; untranslated requests then translate as TT=0.
    pub device_tlb: bool,
}

impl Default for Caps {
    /// HAW 52, MGAW 57, all three widths, both superpage sizes, pass-through, no device-TLB.
    fn default() -> Self {
        Caps { haw: 52, mgaw: 57, sagaw: 0b1110, sp_2m: true, sp_1g: true, pass_through: true, device_tlb: false }
    }
}

impl Caps {
    pub fn format(&self) -> VtdSs {
        VtdSs { haw: self.haw, sp_2m: self.sp_2m, sp_1g: self.sp_1g }
    }

    fn supports_aw(&self, aw: u8) -> bool {
        (1..=3).contains(&aw) && self.sagaw & (1 << aw) != 0
    }
}

/// The result of one request: a translation, or the fault record the unit would write.
/// `recorded` is false when the context entry's FPD suppresses a qualified fault; the request is
/// blocked all the same. `level` is the second-stage level whose entry ended the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdOutcome {
    Ok(Translation),
    Fault { record: FaultRecord, level: Option<u8>, recorded: bool },
}

impl VtdOutcome {
    pub fn translation(&self) -> Option<Translation> {
        match self {
            VtdOutcome::Ok(t) => Some(*t),
            VtdOutcome::Fault { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<FaultReason> {
        match self {
            VtdOutcome::Ok(_) => None,
            VtdOutcome::Fault { record, .. } => Some(record.reason),
        }
    }
}

/// Translate an untranslated request (no PASID) from source-id `sid` (bus << 8 | devfn) through
/// the root table at `rtaddr` (the RTADDR register's address bits; its low 12 bits are ignored).
pub fn translate<M: PhysMem + ?Sized>(mem: &M, caps: &Caps, rtaddr: u64, sid: u16, iova: u64, access: Access) -> VtdOutcome {
    match fetch_context(mem, caps, rtaddr, sid) {
        Ok(ctx) => translate_with_context(mem, caps, &ctx, sid, iova, access),
        // Nothing here has a context entry yet, so nothing here is suppressible.
        Err(reason) => VtdOutcome::Fault { record: FaultRecord::new(sid, iova, access, reason), level: None, recorded: true },
    }
}

/// The root entry for `sid`'s bus and the context entry for its devfn (present or not: FPD counts
/// either way), or the fault found before a context entry is in hand.
pub fn fetch_context<M: PhysMem + ?Sized>(mem: &M, caps: &Caps, rtaddr: u64, sid: u16) -> Result<ContextEntry, FaultReason> {
    let root = root::fetch(mem, rtaddr, (sid >> 8) as u8)?;
    if !root.present() {
        return Err(FaultReason::RootNotPresent);
    }
    if root.reserved_bits_set(caps.haw) {
        return Err(FaultReason::RootReserved);
    }
    context::fetch(mem, &root, sid as u8)
}

/// The context entry's own checks, in QEMU vtd_dev_to_context_entry's order: P, reserved bits, AW
/// in SAGAW, TT. An entry that passes them is one hardware may cache.
pub fn check_context(caps: &Caps, ctx: &ContextEntry) -> Result<(), FaultReason> {
    if !ctx.present() {
        return Err(FaultReason::ContextNotPresent);
    }
    if ctx.reserved_bits_set(caps.haw) {
        return Err(FaultReason::ContextReserved);
    }
    if !caps.supports_aw(ctx.aw()) {
        return Err(FaultReason::InvalidContext);
    }
    match ctx.translation_type() {
        TranslationType::Untranslated => Ok(()),
        TranslationType::DeviceTlb if caps.device_tlb => Ok(()),
        TranslationType::PassThrough if caps.pass_through => Ok(()),
        _ => Err(FaultReason::InvalidContext),
    }
}

/// The part after the context entry has been read (a context-cache hit starts here).
pub fn translate_with_context<M: PhysMem + ?Sized>(
    mem: &M,
    caps: &Caps,
    ctx: &ContextEntry,
    sid: u16,
    iova: u64,
    access: Access,
) -> VtdOutcome {
    let fault = |reason: FaultReason, level| VtdOutcome::Fault {
        record: FaultRecord::new(sid, iova, access, reason),
        level,
        recorded: !(ctx.fpd() && reason.is_qualified()),
    };
    if let Err(reason) = check_context(caps, ctx) {
        return fault(reason, None);
    }
    if ctx.translation_type() == TranslationType::PassThrough {
        return VtdOutcome::Ok(Translation { spa: iova, size_log2: 12, perm: Perm::RW, level: 0 });
    }
    let width = ctx.agaw().min(u32::from(caps.mgaw));
    if width < 64 && iova >> width != 0 {
        return fault(FaultReason::AddressBeyondMgaw, None);
    }
    let levels = ctx.levels();
    let need = match access {
        Access::Read => vtd_ss::R,
        Access::Write => vtd_ss::W,
    };
    // The first entry lacking the access's right ends the walk there, before its reserved bits
    // are looked at (QEMU vtd_iova_to_slpte checks the right, then the reserved bits, per level).
    let mut denied_at = None;
    let res = walk::walk_traced(&caps.format(), mem, ctx.ssptptr(), levels, iova, |s| {
        if denied_at.is_none() && s.raw & need == 0 {
            denied_at = Some(s.level);
        }
    });
    if let Some(level) = denied_at {
        return fault(denied(access), Some(level));
    }
    match res {
        Ok(t) => VtdOutcome::Ok(t),
        Err(f) => {
            let reason = match f.kind {
                FaultKind::AddressTooHigh => FaultReason::AddressBeyondMgaw,
                FaultKind::NotPresent => denied(access),
                FaultKind::Invalid | FaultKind::SkippedBitsNotZero => FaultReason::PteReserved,
                // The top table is where SSPTPTR points: an error reading it is a badly
                // programmed context entry (spec Appendix A reason 3; QEMU vtd_iova_to_slpte).
                FaultKind::Memory(_) if f.level == levels => FaultReason::InvalidContext,
                FaultKind::Memory(_) => FaultReason::NextTableInvalid,
            };
            fault(reason, Some(f.level))
        }
    }
}

fn denied(access: Access) -> FaultReason {
    match access {
        Access::Write => FaultReason::WriteDenied,
        Access::Read => FaultReason::ReadDenied,
    }
}

fn to_bytes(lo: u64, hi: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&lo.to_le_bytes());
    b[8..].copy_from_slice(&hi.to_le_bytes());
    b
}

fn from_bytes(b: &[u8; 16]) -> (u64, u64) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
}
