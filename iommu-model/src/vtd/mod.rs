//! Intel VT-d, legacy translation mode (RTADDR.TTM = 00): root table → context entry →
//! second-stage tables, with the fault reasons of VT-d spec §7.2 and Appendix A (Linux
//! drivers/iommu/intel/dmar.c dma_remap_fault_reasons). Scalable mode (RTADDR.TTM = 01, PASID
//! tables) would be another root/context decoder in this directory feeding the same walk.

pub mod context;
pub mod fault;
pub mod root;

pub use fault::{FaultReason, FaultRecord};

use crate::fmt::vtd_ss::VtdSs;
use crate::mem::PhysMem;
use crate::walk::{self, Access, FaultKind, Perm, Translation};
use context::{ContextEntry, TranslationType};

/// The result of one request: a translation, or the fault record the IOMMU would write.
/// `recorded` is false when the context entry's FPD suppresses recording.
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
}

/// Host address width the model implements (CAP.MGAW + 1 = 48 output bits is typical; 52 keeps
/// every address a test may pick).
pub const HAW: u8 = 52;

/// Translate a request with source-id `sid` (bus << 8 | devfn) through the root table at `rtaddr`.
pub fn translate<M: PhysMem + ?Sized>(mem: &M, rtaddr: u64, sid: u16, iova: u64, access: Access) -> VtdOutcome {
    let fault = |reason, level, recorded| VtdOutcome::Fault {
        record: FaultRecord::new(sid, iova, access, reason),
        level,
        recorded,
    };
    let root = match root::fetch(mem, rtaddr, (sid >> 8) as u8) {
        Ok(r) => r,
        Err(reason) => return fault(reason, None, true),
    };
    let ctx = match context::fetch(mem, &root, sid as u8) {
        Ok(c) => c,
        Err(reason) => return fault(reason, None, true),
    };
    translate_with_context(mem, &ctx, sid, iova, access)
}

/// The part after the context entry is known (the cached path starts here).
pub fn translate_with_context<M: PhysMem + ?Sized>(mem: &M, ctx: &ContextEntry, sid: u16, iova: u64, access: Access) -> VtdOutcome {
    let recorded = !ctx.fpd();
    let fault = |reason, level| VtdOutcome::Fault { record: FaultRecord::new(sid, iova, access, reason), level, recorded };
    let Some(levels) = ctx.levels() else { return fault(FaultReason::InvalidContext, None) };
    match ctx.translation_type() {
        Some(TranslationType::PassThrough) => {
            return VtdOutcome::Ok(Translation { spa: iova, size_log2: 12, perm: Perm::RW, level: 0 })
        }
        Some(TranslationType::Untranslated) => {}
        None => return fault(FaultReason::InvalidContext, None),
    }
    let fmt = VtdSs { haw: HAW, sp_2m: true, sp_1g: true };
    match walk::walk(&fmt, mem, ctx.ssptptr(), levels, iova) {
        Ok(t) if t.perm.allows(access) => VtdOutcome::Ok(t),
        Ok(t) => fault(denied(access), Some(t.level)),
        Err(f) => {
            let reason = match f.kind {
                FaultKind::AddressTooHigh => FaultReason::AddressBeyondMgaw,
                // A non-present entry has neither R nor W: the request lacks its permission.
                FaultKind::NotPresent => denied(access),
                FaultKind::Invalid | FaultKind::SkippedBitsNotZero => FaultReason::PteReserved,
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
