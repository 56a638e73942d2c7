//! One DMA request through the device table and the v1 host tables, uncached: the rules of spec
//! 48882 §2.2 (device table lookup, host translation) and the event each failure logs (§2.5.3).
//! The cached path ([`super::mmio::AmdVi::translate`]) gives the same answers, or stale ones until
//! an invalidation, as hardware does.

use super::dte::{self, DevTabBase, Dte, DteFetchError};
use super::event::{flags, Event};
use crate::fmt::amdv1::AmdV1;
use crate::mem::PhysMem;
use crate::walk::{self, Access, FaultKind, Perm, Translation};

/// The result of a request: a translation, or the event that aborted it. `logged` is false when
/// the DTE suppresses the event (SA/SE), as the access is aborted all the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Translation),
    Fault { event: Event, level: Option<u8>, logged: bool },
}

impl Outcome {
    pub fn translation(&self) -> Option<Translation> {
        match self {
            Outcome::Ok(t) => Some(*t),
            Outcome::Fault { .. } => None,
        }
    }

    /// The translation, or the event that aborted the request (logged or suppressed).
    pub fn result(self) -> Result<Translation, Event> {
        match self {
            Outcome::Ok(t) => Ok(t),
            Outcome::Fault { event, .. } => Err(event),
        }
    }
}

/// An untranslated access: the IOVA is the SPA, 4 KiB granule.
pub fn untranslated(iova: u64, perm: Perm) -> Translation {
    Translation { spa: iova, size_log2: 12, perm, level: 0 }
}

fn rw(access: Access) -> u16 {
    if access == Access::Write {
        flags::RW
    } else {
        0
    }
}

/// Look up `devid` in the device table and translate.
pub fn translate<M: PhysMem + ?Sized>(mem: &M, devtab: DevTabBase, devid: u16, iova: u64, access: Access) -> Outcome {
    match dte::fetch(mem, devtab, devid) {
        Ok(d) => translate_with_dte(mem, &d, devid, iova, access),
        // Choice (docs/amd-vi.md): a DeviceID past the table is an illegal entry.
        Err(DteFetchError::OutOfTable) => Outcome::Fault { event: Event::illegal_dte(devid, rw(access), iova), level: None, logged: true },
        Err(DteFetchError::Memory { dte_addr, .. }) => Outcome::Fault {
            event: Event::dev_tab_hw_error(devid, rw(access) | flags::TYPE_MASTER_ABORT, dte_addr),
            level: None,
            logged: true,
        },
    }
}

/// The access check of a DTE that is already in hand, then the walk.
pub fn translate_with_dte<M: PhysMem + ?Sized>(mem: &M, d: &Dte, devid: u16, iova: u64, access: Access) -> Outcome {
    translate_with_dte_traced(mem, d, devid, iova, access, |_| {})
}

/// As [`translate_with_dte`], calling `trace` with each page-table entry the walk reads, top
/// level first (for tools that show the walk).
pub fn translate_with_dte_traced<M: PhysMem + ?Sized>(
    mem: &M,
    d: &Dte,
    devid: u16,
    iova: u64,
    access: Access,
    trace: impl FnMut(&walk::Step),
) -> Outcome {
    match check_dte(d, devid, iova, access) {
        DteVerdict::Walk { root, levels } => {
            let res = walk::walk_traced(&AmdV1, mem, root, levels, iova, trace);
            finish_walk(d, devid, iova, access, res)
        }
        DteVerdict::Done(o) => o,
    }
}

pub(crate) enum DteVerdict {
    Walk { root: u64, levels: u8 },
    Done(Outcome),
}

pub(crate) fn check_dte(d: &Dte, devid: u16, iova: u64, access: Access) -> DteVerdict {
    let io_pf = |fl: u16| {
        DteVerdict::Done(Outcome::Fault {
            event: Event::io_page_fault(devid, d.domain_id(), fl | rw(access), iova),
            level: None,
            logged: !(d.sa() || d.se()),
        })
    };
    // V=0: the IOMMU does not translate this device (Table 7; QEMU treats it as pass-through).
    if !d.v() {
        return DteVerdict::Done(Outcome::Ok(untranslated(iova, Perm::RW)));
    }
    if d.reserved_bits_set() || d.mode() == 7 || (d.tv() && d.gv()) {
        return DteVerdict::Done(Outcome::Fault {
            event: Event::illegal_dte(devid, rw(access) | flags::RZ, iova),
            level: None,
            logged: true,
        });
    }
    // V=1, TV=0: no translation information; Linux writes this as its "blocked" entry
    // (clear_dte_entry keeps only V). The request is aborted (choice: docs/amd-vi.md).
    if !d.tv() {
        return io_pf(0);
    }
    if d.mode() == 0 {
        let t = untranslated(iova, d.perm());
        return if t.perm.allows(access) { DteVerdict::Done(Outcome::Ok(t)) } else { io_pf(flags::PR | flags::PE) };
    }
    DteVerdict::Walk { root: d.pt_root(), levels: d.mode() }
}

pub(crate) fn finish_walk(d: &Dte, devid: u16, iova: u64, access: Access, res: Result<Translation, walk::WalkFault>) -> Outcome {
    let logged = !(d.sa() || d.se());
    let domid = d.domain_id();
    match res {
        Ok(mut t) => {
            t.perm = t.perm.and(d.perm());
            if t.perm.allows(access) {
                Outcome::Ok(t)
            } else {
                let event = Event::io_page_fault(devid, domid, flags::PR | flags::PE | rw(access), iova);
                Outcome::Fault { event, level: Some(t.level), logged }
            }
        }
        Err(f) => {
            let fl = match f.kind {
                FaultKind::NotPresent | FaultKind::AddressTooHigh | FaultKind::SkippedBitsNotZero => 0,
                FaultKind::Invalid => flags::PR | flags::RZ,
                FaultKind::Memory(_) => {
                    let addr = f.entry_addr.unwrap_or(0);
                    let event = Event::page_tab_hw_error(devid, domid, rw(access) | flags::TYPE_MASTER_ABORT, addr);
                    return Outcome::Fault { event, level: Some(f.level), logged: true };
                }
            };
            let event = Event::io_page_fault(devid, domid, fl | rw(access), iova);
            Outcome::Fault { event, level: Some(f.level), logged }
        }
    }
}
