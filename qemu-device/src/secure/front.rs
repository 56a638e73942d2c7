//! The translation fronts: the units a device's DMA can be translated by, each behind the one
//! trait [`Front`], each answering in the same typed form ([`Answer`]): which front, the
//! translation (SPA, permissions, page size), whether it walked the tables for it, or the
//! front's own fault.
//!
//! - The AMD-Vi unit (iommu-model `AmdVi`, spec 48882): device table, v1 tables, IOTLB; a fault
//!   is an event-log record unless the DTE suppresses it.
//! - The virtio-iommu's domains (`Domains`, virtio 1.2 §5.13): tables the daemon owns, walked
//!   uncached; a fault goes to the driver on the device's event queue, which the caller posts
//!   (the front only says what to post).
//! - The VT-d unit (iommu-model `VtdUnit`, legacy mode, fault reasons of VT-d §7.2): root and
//!   context tables, second-stage tables, IOTLB; a fault is a fault recording register unless
//!   FPD suppresses it.

use crate::devices::virtio_iommu::domains::Domains;
use crate::devices::virtio_iommu::proto::{fault, Fault};
use iommu_model::amdvi::dte::DevTabBase;
use iommu_model::amdvi::event::Event;
use iommu_model::amdvi::mmio::{self, AmdVi};
use iommu_model::amdvi::{self, Outcome};
use iommu_model::mem::PhysMem;
use iommu_model::vtd::unit::VtdUnit;
use iommu_model::vtd::{FaultRecord, VtdOutcome};
use iommu_model::walk::{Access, Translation};

/// Which unit translated a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    AmdVi,
    VirtioIommu,
    Vtd,
}

impl Which {
    /// As the event records name it (`via`).
    pub fn via(self) -> abi::event::Via {
        match self {
            Which::AmdVi => abi::event::Via::AmdVi,
            Which::VirtioIommu => abi::event::Via::VirtioIommu,
            Which::Vtd => abi::event::Via::VtD,
        }
    }
}

/// A front's translation of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translated {
    pub front: Which,
    /// SPA, permissions, page size and the level of the leaf (0: untranslated, the unit is off
    /// or the device passes through).
    pub translation: Translation,
    /// The tables were walked for this request (an IOTLB miss); false for an IOTLB hit.
    pub fresh_walk: bool,
}

/// A front's refusal of one request, as that front reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontFault {
    /// The AMD-Vi event; `logged` once it is in the event log (false: suppressed by the DTE or
    /// dropped on a full log).
    AmdVi { event: Event, level: Option<u8>, logged: bool },
    /// The walk's event (never in the AMD-Vi log: not its tables), and the fault record the
    /// virtio-iommu reports to its driver (§5.13.6.9).
    VirtioIommu { event: Event, level: Option<u8>, report: Fault },
    /// The VT-d fault record; `recorded` once it is in a fault recording register.
    Vtd { record: FaultRecord, level: Option<u8>, recorded: bool },
}

/// A front's answer to one request.
pub type Answer = Result<Translated, FrontFault>;

/// A unit that translates DMA requests.
pub trait Front {
    /// One request as the hardware takes it: through the caches, faults recorded where the unit
    /// records them.
    fn request<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, iova: u64, access: Access) -> Answer;

    /// Whether `rid` can reach `iova` through the tables right now, and where: the state itself
    /// (the unit enabled, the device's entry translating, the mapping present), uncached and
    /// recording nothing. None when the device's requests are not translated by tables at all.
    fn live<M: PhysMem + ?Sized>(&self, mem: &M, rid: u16, iova: u64) -> Option<Translation>;
}

impl Front for AmdVi {
    fn request<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, iova: u64, access: Access) -> Answer {
        match self.translate_walked(mem, rid, iova, access) {
            (Outcome::Ok(translation), fresh_walk) => Ok(Translated { front: Which::AmdVi, translation, fresh_walk }),
            (Outcome::Fault { event, level, logged }, _) => Err(FrontFault::AmdVi { event, level, logged }),
        }
    }

    fn live<M: PhysMem + ?Sized>(&self, mem: &M, rid: u16, iova: u64) -> Option<Translation> {
        if !self.enabled() {
            return None;
        }
        let devtab = DevTabBase(self.mmio_read(mmio::DEV_TABLE_BASE, 8));
        amdvi::translate(mem, devtab, rid, iova, Access::Read).translation().filter(|t| t.level > 0)
    }
}

impl Front for VtdUnit {
    fn request<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, iova: u64, access: Access) -> Answer {
        match self.translate_walked(&*mem, rid, iova, access) {
            (VtdOutcome::Ok(translation), fresh_walk) => Ok(Translated { front: Which::Vtd, translation, fresh_walk }),
            (VtdOutcome::Fault { record, level, recorded }, _) => Err(FrontFault::Vtd { record, level, recorded }),
        }
    }

    fn live<M: PhysMem + ?Sized>(&self, mem: &M, rid: u16, iova: u64) -> Option<Translation> {
        if !self.enabled() {
            return None;
        }
        self.lookup(mem, rid, iova, Access::Read).translation().filter(|t| t.level > 0)
    }
}

/// The domain tables are the daemon's own memory, not guest RAM: `mem` is not used. A request
/// of an endpoint attached to no domain is not this front's (the caller picks the front with
/// `Domains::translates`); asked anyway, it is refused as an unmapped address.
impl Front for Domains {
    fn request<M: PhysMem + ?Sized>(&mut self, _mem: &mut M, rid: u16, iova: u64, access: Access) -> Answer {
        let rw = if access == Access::Write { fault::F_WRITE } else { fault::F_READ };
        let report = Fault { reason: fault::R_MAPPING, flags: rw | fault::F_ADDRESS, endpoint: u32::from(rid), address: iova };
        match self.translate(u32::from(rid), iova, access) {
            // Walked every time: the domain tables are not cached.
            Some(Outcome::Ok(translation)) => Ok(Translated { front: Which::VirtioIommu, translation, fresh_walk: true }),
            Some(Outcome::Fault { event, level, .. }) => Err(FrontFault::VirtioIommu { event, level, report }),
            None => Err(FrontFault::VirtioIommu { event: Event::io_page_fault(rid, 0, 0, iova), level: None, report }),
        }
    }

    fn live<M: PhysMem + ?Sized>(&self, _mem: &M, rid: u16, iova: u64) -> Option<Translation> {
        self.translate(u32::from(rid), iova, Access::Read).and_then(|o| o.translation())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_model::amdvi::builder::V1Builder;
    use iommu_model::amdvi::dte::Dte;
    use iommu_model::amdvi::mmio::control;
    use iommu_model::mem::ByteMem;
    use iommu_model::walk::Perm;

    #[test]
    fn each_front_says_which_it_is_and_whether_it_walked() {
        let mut mem = ByteMem::new(0, 4 << 20);
        let mut pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 4).unwrap();
        pt.map(&mut mem, 0x5000, 0x30_0000, 12, Perm::RW).unwrap();
        mem.write(0x1000 + 0x20 * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).unwrap();
        let mut vi = AmdVi::new();
        assert_eq!(vi.live(&mem, 0x20, 0x5000), None, "the unit is off");
        let off = vi.request(&mut mem, 0x20, 0x5000, Access::Read).unwrap();
        assert_eq!((off.translation.spa, off.translation.level, off.fresh_walk), (0x5000, 0, false), "untranslated");
        vi.mmio_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
        vi.mmio_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
        let first = vi.request(&mut mem, 0x20, 0x5008, Access::Write).unwrap();
        assert_eq!((first.front, first.translation.spa, first.fresh_walk), (Which::AmdVi, 0x30_0008, true));
        let again = vi.request(&mut mem, 0x20, 0x5010, Access::Write).unwrap();
        assert_eq!((again.translation.spa, again.fresh_walk), (0x30_0010, false), "an IOTLB hit");
        assert_eq!(vi.live(&mem, 0x20, 0x5000).map(|t| t.spa), Some(0x30_0000));
        assert!(matches!(vi.request(&mut mem, 0x20, 0x9000, Access::Read), Err(FrontFault::AmdVi { .. })));

        // The same tables as a virtio-iommu domain: walked every time, the fault to post.
        let mut d = Domains::new([0x20]);
        assert_eq!(d.live(&mem, 0x20, 0x5000), None, "attached to no domain");
        d.attach(1, 0x20, 0);
        d.map(1, 0x5000, 0x5fff, 0x30_0000, 3);
        for _ in 0..2 {
            let t = d.request(&mut mem, 0x20, 0x5008, Access::Read).unwrap();
            assert_eq!((t.front, t.translation.spa, t.fresh_walk), (Which::VirtioIommu, 0x30_0008, true));
        }
        match d.request(&mut mem, 0x20, 0x9000, Access::Write) {
            Err(FrontFault::VirtioIommu { report, .. }) => {
                assert_eq!(
                    (report.reason, report.flags, report.endpoint, report.address),
                    (fault::R_MAPPING, fault::F_WRITE | fault::F_ADDRESS, 0x20, 0x9000)
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
