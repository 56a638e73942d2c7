//! RMPUPDATE and the conversion hazard: a page turned guest-private while a T=0 device can still
//! reach it through an I/O mapping. The hardware allows the conversion (the next DMA write faults
//! instead); the model reports it, as `hazard` records. Three sources of mappings: those
//! registered as devices used them (stage 3 of the DMA path), checked again against the tables
//! now; every translating entry's tables in guest RAM (AMD-Vi device table, VT-d root and
//! context tables), searched within a budget; and the virtio-iommu's domains, which the daemon
//! owns and knows completely.

use super::front::Which;
use super::{lock, SecureIommu};
use crate::vfio::guest_mem::GuestMem;
use abi::event as ev;
use abi::Bdf;
use iommu_model::amdvi;
use iommu_model::amdvi::dte::DevTabBase;
use iommu_model::amdvi::mmio;
use iommu_model::vtd;
use rmp_model::ops::RmpState;
use rmp_model::RmpStatus;

/// 4 KiB reads (device table and page tables) one conversion may spend looking for mappings of
/// its page: 16 MiB, a full 64K-entry device table (512 reads) and thousands of page tables.
pub const HAZARD_SEARCH_BUDGET: u32 = 4096;

/// A mapping of a converted page found in a driver's tables (AMD-Vi or VT-d).
struct TableHit {
    devid: u16,
    domain: u16,
    iova: u64,
    spa: u64,
    size_log2: u8,
    write: bool,
}

impl SecureIommu {
    /// RMPUPDATE from the firmware mailbox, reporting hazards of mappings still live in the
    /// tables (re-walked now: a mapping the driver has since removed is no hazard).
    pub fn rmpupdate(&mut self, mem: &mut GuestMem, spa: u64, st: &RmpState) -> RmpStatus {
        let Some(rmp) = self.rmp.as_mut() else { return RmpStatus::FailInput };
        let res = rmp.rmpupdate(spa, st);
        let devtab = DevTabBase(self.amdvi.mmio_read(mmio::DEV_TABLE_BASE, 8));
        let mut reported = std::collections::BTreeSet::new();
        for h in &res.hazards {
            // Live: the device's front still maps the page there (the unit enabled, the device's
            // entry translating, or its domain attached), read from the tables now.
            let now = self.live_mapping(mem, h.mapping.requester, h.mapping.iova);
            if now.is_none_or(|t| t.spa & !0xfff != h.mapping.spa & !0xfff) {
                if let Some(rmp) = self.rmp.as_mut() {
                    rmp.hazards.unregister(h.mapping.requester, h.mapping.iova);
                }
                continue;
            }
            reported.insert((h.mapping.requester, h.mapping.iova));
            self.events.emit(ev::Event::Hazard(ev::Hazard {
                spa: h.spa,
                asid: h.asid,
                devid: Bdf(h.mapping.requester),
                iova: h.mapping.iova,
                size: h.mapping.size,
                write: h.mapping.write,
                via: None,
                domain: None,
            }));
        }
        // Tables a driver built in guest RAM (Linux's amd_iommu, intel_iommu): every translating
        // device-table or context entry's tables are searched for the page, so a mapping counts
        // whether or not a device has walked it yet.
        if st.assigned && res.status == RmpStatus::Success {
            let mut budget = HAZARD_SEARCH_BUDGET;
            let len = st.page_size.bytes();
            let found = match &self.vtd {
                Some(v) if v.enabled() => {
                    let hits = |ms: Vec<vtd::reverse::Mapping>| {
                        ms.iter()
                            .map(|m| TableHit {
                                devid: m.sid,
                                domain: m.did,
                                iova: m.iova,
                                spa: m.spa,
                                size_log2: m.size_log2,
                                write: m.perm.write,
                            })
                            .collect()
                    };
                    Some((
                        Which::Vtd,
                        vtd::reverse::mappings_of(mem, v.caps(), v.root_table(), spa, len, &mut budget).map(hits).map_err(hits),
                    ))
                }
                None if self.amdvi.enabled() => {
                    let hits = |ms: Vec<amdvi::reverse::Mapping>| {
                        ms.iter()
                            .map(|m| TableHit {
                                devid: m.devid,
                                domain: m.domain_id,
                                iova: m.iova,
                                spa: m.spa,
                                size_log2: m.size_log2,
                                write: m.perm.write,
                            })
                            .collect()
                    };
                    Some((Which::AmdVi, amdvi::reverse::mappings_of(mem, devtab, spa, len, &mut budget).map(hits).map_err(hits)))
                }
                _ => None,
            };
            if let Some((via, found)) = found {
                let complete = found.is_ok();
                for m in found.unwrap_or_else(|partial: Vec<TableHit>| partial) {
                    // The first converted 4 KiB page the mapping reaches, and its IOVA there.
                    let hit = (spa & !0xfff).max(m.spa);
                    // hit >= m.spa, inside the mapping that starts at m.iova.
                    let iova = m.iova.wrapping_add(hit.wrapping_sub(m.spa));
                    if reported.insert((m.devid, iova)) {
                        self.events.emit(ev::Event::Hazard(ev::Hazard {
                            spa: hit,
                            asid: st.asid,
                            devid: Bdf(m.devid),
                            iova,
                            size: 1u64 << m.size_log2,
                            write: m.write,
                            via: Some(via.via()),
                            domain: Some(m.domain),
                        }));
                    }
                }
                if !complete {
                    self.events
                        .emit(ev::Event::HazardSearchIncomplete(ev::HazardSearchIncomplete { spa, budget: HAZARD_SEARCH_BUDGET.into() }));
                }
            }
        }
        // The virtio-iommu's domains are tables the daemon owns: every mapping of the page is
        // known, whether or not a device has used it yet.
        if st.assigned && res.status == RmpStatus::Success {
            let mappers = self.viommu.as_ref().map(|v| lock(&v.domains).mappers_of(spa, st.page_size.bytes())).unwrap_or_default();
            for (endpoint, iova, first, write) in mappers {
                let requester = endpoint as u16;
                if reported.insert((requester, iova & !0xfff)) {
                    self.events.emit(ev::Event::Hazard(ev::Hazard {
                        spa: first & !0xfff,
                        asid: st.asid,
                        devid: Bdf(requester),
                        iova: iova & !0xfff,
                        size: 0x1000,
                        write,
                        via: Some(Which::VirtioIommu.via()),
                        domain: None,
                    }));
                }
            }
        }
        self.events.emit(ev::Event::Rmpupdate(ev::Rmpupdate {
            spa,
            gpa: st.gpa,
            assigned: st.assigned,
            asid: st.asid,
            page_size: st.page_size.bytes(),
            status: ev::Code::from_number(res.status.code().into()),
        }));
        if res.status == RmpStatus::Success {
            self.mirror(mem, res.changed.start, res.changed.end.saturating_sub(res.changed.start));
        }
        res.status
    }
}
