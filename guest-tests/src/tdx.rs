//! The TDX Connect personality's scenarios (`tiommu daemon --personality tdx-connect`, run-vm
//! `--personality tdx-connect`): this program is the host (it programs the VT-d unit's untrusted
//! tables for the endpoint's T=0 DMA and makes the host's module calls) and the TD (its module
//! calls); the TDX-module stand-in owns the PAMT and the TD's S-EPT, which is also the trusted
//! I/O page table. They mirror the SEV-TIO ones: bind and run a TDI, trusted DMA lands, the
//! host's own tables do not reach T=1, T=0 to a private page is refused, a page with a live
//! trusted mapping cannot leave the TD, STOP and unbind. docs/tdx-vs-sev-tio.md.

use crate::scenarios::{
    expect_event, poll, Rig, EP_CTRL, EP_RING_BASE, EP_RING_SIZE, F_T, R, RING_ENTRIES, RING_IOVA, SKIP, ST_IO_PAGE_FAULT, ST_OK,
    ST_RMP_PAGE_FAULT, ST_T1_REFUSED,
};
use crate::sys::Bar;
use iommu_model::fmt::vtd_ss;
use iommu_model::vtd::context::ContextEntry;
use iommu_model::vtd::regs::{self, gcmd};
use iommu_model::vtd::root::RootEntry;
use iommu_model::vtd::unit::IOTLB_REG;
use iommu_model::walk::Perm;

/// Module calls (docs/device-abi.md, "TDX Connect personality").
const TDH_MNG_CREATE: u32 = 0x40;
const TDH_MEM_PAGE_ADD: u32 = 0x41;
const TDH_MEM_PAGE_REMOVE: u32 = 0x42;
const TDH_TDI_BIND: u32 = 0x43;
const TDH_TDI_UNBIND: u32 = 0x44;
const TDG_TDI_START: u32 = 0x50;
const TDG_DMAR_ACCEPT: u32 = 0x51;
const TDG_DMAR_RELEASE: u32 = 0x52;
const PAGE_OWNER_MISMATCH: u32 = 2;
const PAGE_IN_USE: u32 = 3;
const MAPPING_EXISTS: u32 = 4;

const TD: u32 = 1;
/// The TD's private GPA for its page, which the host's VT-d tables do not map (at first).
const GPA: u64 = 0x4000_0000;
/// An IOVA at which the host maps the TD's page into its own, untrusted tables.
const STOLEN_IOVA: u64 = 0x5000_0000;

/// The TDX Connect personality is running (tiommu.personality=tdx-connect).
pub(crate) fn tdx_mode() -> bool {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|a| a == "tiommu.personality=tdx-connect")
}

/// The host's VT-d tables for the endpoint (legacy mode: root, context, 4-level second stage) in
/// a huge page of this program, and the unit's registers.
pub(crate) struct HostVtd {
    regs: Bar,
    l4: u64,
    next: u64,
    end: u64,
}

impl HostVtd {
    /// Bring the unit up as a driver does: tables, SRTP, global invalidations, TE; then map the
    /// rig's ring and small buffers and start the endpoint's ring.
    pub(crate) fn up(rig: &mut Rig, regs: Bar) -> Result<HostVtd, String> {
        let base = rig.mem.page()?;
        let (root, ctx, l4) = (base, base + 0x1000, base + 0x2000);
        rig.mem.wr(root, &RootEntry::new(ctx).to_bytes());
        // AW 2: 48-bit, 4-level tables; domain 1; TT 0 (translated).
        rig.mem.wr(ctx + u64::from(rig.rid & 0xff) * 16, &ContextEntry::new(l4, 2, 1, 0).to_bytes());
        let mut v = HostVtd { regs, l4, next: base + 0x3000, end: base + (2 << 20) };
        v.regs.w64(regs::RTADDR as usize, root);
        v.regs.w32(regs::GCMD as usize, gcmd::SRTP);
        check!(poll(|| v.regs.r32(regs::GSTS as usize) & gcmd::SRTP != 0), "RTPS never set");
        v.flush();
        v.regs.w32(regs::GCMD as usize, gcmd::TE);
        check!(poll(|| v.regs.r32(regs::GSTS as usize) & gcmd::TE != 0), "TES never set");
        v.map(rig, RING_IOVA, rig.hp1)?;
        for k in 0..8 {
            let (iova, pa) = rig.small(k);
            v.map(rig, iova, pa)?;
        }
        rig.ep.w32(EP_CTRL, 1);
        rig.ep.w64(EP_RING_BASE, RING_IOVA);
        rig.ep.w32(EP_RING_SIZE, RING_ENTRIES.trailing_zeros());
        Ok(v)
    }

    /// Map `iova` to `pa` (4 KiB, read-write), replacing what was there, and invalidate.
    fn map(&mut self, rig: &mut Rig, iova: u64, pa: u64) -> R {
        let mut table = self.l4;
        for level in (2..=4u32).rev() {
            let slot = table + ((iova >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let e = rig.mem.r64(slot);
            table = if e & 3 != 0 {
                e & vtd_ss::ADDR_MASK
            } else {
                check!(self.next < self.end, "out of table pages");
                let t = self.next;
                self.next += 0x1000;
                rig.mem.w64(slot, vtd_ss::table(t, Perm::RW));
                t
            };
        }
        rig.mem.w64(table + ((iova >> 12) & 0x1ff) * 8, vtd_ss::leaf(pa, Perm::RW, false));
        self.flush();
        Ok(())
    }

    /// Register-based global context-cache and IOTLB invalidation, waiting for ICC and IVT to
    /// clear as Linux's __iommu_flush_context / __iommu_flush_iotlb do.
    fn flush(&self) {
        self.regs.w64(regs::CCMD as usize, 1 << 63 | 1 << 61);
        poll(|| self.regs.r64(regs::CCMD as usize) >> 63 == 0);
        self.regs.w64(IOTLB_REG as usize, 1 << 63 | 1 << 60);
        poll(|| self.regs.r64(IOTLB_REG as usize) >> 63 == 0);
    }
}

fn need_tdx(r: &Rig) -> Result<(), String> {
    if !tdx_mode() || r.host_vtd.is_none() {
        return Err(format!("{SKIP}the TDX Connect personality is not running (scripts/run-vm --personality tdx-connect)"));
    }
    Ok(())
}

fn call(r: &mut Rig, id: u32, td: u32, gpa: u64, spa: u64) -> Result<u32, String> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&td.to_le_bytes());
    b.extend_from_slice(&r.rid.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&gpa.to_le_bytes());
    b.extend_from_slice(&spa.to_le_bytes());
    r.mailbox(id, &b)
}

/// The TD's page: in a huge page of its own, which the host's tables never map.
fn td_page(r: &mut Rig) -> Result<u64, String> {
    if r.td_page == 0 {
        r.td_page = r.mem.page()? + 0x1000;
    }
    Ok(r.td_page)
}

/// The host binds the endpoint's TDI to TD 1 (LOCK_INTERFACE), which only the TD can start; T=1
/// DMA waits for RUN and for the TD to accept trusted DMA.
pub fn binds_and_runs_a_tdi(r: &mut Rig) -> R {
    need_tdx(r)?;
    check!(call(r, TDH_MNG_CREATE, TD, 0, 0)? == 0, "TDH.MNG.CREATE");
    check!(call(r, TDH_TDI_BIND, TD, 0, 0)? == 0, "TDH.TDI.BIND");
    check!(r.tdi_state()? == 1, "the device's DOE says the TDI is not CONFIG_LOCKED");
    let st = r.fill(F_T, GPA, 64, 0x1111)?;
    check!(st == ST_T1_REFUSED, "T=1 before RUN: status {st}");
    expect_event("tdx_violation", &format!("t=true iova={GPA:#x}"));
    check!(call(r, TDG_TDI_START, TD + 1, 0, 0)? != 0, "another TD started the TDI");
    check!(call(r, TDG_TDI_START, TD, 0, 0)? == 0, "TDG.TDI.START");
    check!(r.tdi_state()? == 2, "the device's DOE says the TDI is not in RUN");
    expect_event("tdisp", "to=RUN via=tdx-module");
    let st = r.fill(F_T, GPA, 64, 0x1111)?;
    check!(st == ST_T1_REFUSED, "T=1 before the TD accepted trusted DMA: status {st}");
    check!(call(r, TDG_DMAR_ACCEPT, TD, 0, 0)? == 0, "TDG.DMAR.ACCEPT");
    Ok(())
}

/// The host gives the TD a page at GPA; the TDI's T=1 DMA to GPA lands in it through the TD's
/// trusted table, although the host's tables map nothing there (a T=0 write there faults).
pub fn trusted_dma_lands(r: &mut Rig) -> R {
    need_tdx(r)?;
    let p = td_page(r)?;
    check!(call(r, TDH_MEM_PAGE_ADD, TD, GPA, p)? == 0, "TDH.MEM.PAGE.ADD");
    let st = r.fill(F_T, GPA + 0x40, 64, 0x2222_3333)?;
    check!(st == ST_OK, "T=1 to the TD's page: status {st}");
    check!(r.mem.r64(p + 0x40) == 0x2222_3333, "the trusted write did not land in the TD's page");
    let st = r.fill(0, GPA, 64, 0x4444)?;
    check!(st == ST_IO_PAGE_FAULT, "T=0 at GPA, which the host's tables do not map: status {st}");
    expect_event("translation_fault", &format!("via=vt-d iova={GPA:#x}"));
    Ok(())
}

/// The host maps GPA to a page of its own in its (untrusted) tables: T=0 goes there, T=1 still
/// lands in the TD's page. Nor can a host call put anything else in the trusted table: not the
/// TD's page at a second GPA, not another page over GPA.
pub fn host_tables_do_not_reach_t1(r: &mut Rig) -> R {
    need_tdx(r)?;
    let p = td_page(r)?;
    let (_, q) = r.small(3);
    r.mem.w64(q, 0);
    let mut v = r.host_vtd.take().ok_or("no host tables")?;
    let res = v.map(r, GPA, q);
    r.host_vtd = Some(v);
    res?;
    let st = r.fill(F_T, GPA, 64, 0x5555)?;
    check!(st == ST_OK && r.mem.r64(p) == 0x5555, "T=1 after the host remapped GPA: status {st}");
    check!(r.mem.r64(q) == 0, "T=1 reached the host's page");
    let st = r.fill(0, GPA, 64, 0x6666)?;
    check!(st == ST_OK && r.mem.r64(q) == 0x6666, "T=0 through the host's own mapping: status {st}");
    check!(r.mem.r64(p) == 0x5555, "T=0 reached the TD's page");
    check!(call(r, TDH_MEM_PAGE_ADD, TD, GPA + 0x1000, p)? == PAGE_OWNER_MISMATCH, "the TD's page mapped twice");
    check!(call(r, TDH_MEM_PAGE_ADD, TD, GPA, q)? == MAPPING_EXISTS, "a host page over the TD's mapping");
    Ok(())
}

/// The host points its own tables at the TD's page: the untrusted request is refused by the
/// PAMT and the page keeps its contents.
pub fn t0_to_a_private_page_refused(r: &mut Rig) -> R {
    need_tdx(r)?;
    let p = td_page(r)?;
    let mut v = r.host_vtd.take().ok_or("no host tables")?;
    let res = v.map(r, STOLEN_IOVA, p);
    r.host_vtd = Some(v);
    res?;
    let st = r.fill(0, STOLEN_IOVA, 64, 0xbad)?;
    check!(st == ST_RMP_PAGE_FAULT, "T=0 to the TD's page: status {st}");
    check!(r.mem.r64(p) == 0x5555, "the refused write changed the TD's page");
    expect_event("tdx_violation", &format!("t=false iova={STOLEN_IOVA:#x} spa={p:#x}"));
    Ok(())
}

/// While the TDI's trusted DMA can reach the page, it cannot leave the TD.
pub fn page_with_live_trusted_mapping_stays(r: &mut Rig) -> R {
    need_tdx(r)?;
    check!(call(r, TDH_MEM_PAGE_REMOVE, TD, GPA, 0)? == PAGE_IN_USE, "TDH.MEM.PAGE.REMOVE with trusted DMA attached");
    expect_event("tdx_call", "call=TDH.MEM.PAGE.REMOVE status=3");
    let p = td_page(r)?;
    let st = r.fill(F_T, GPA, 64, 0x7777)?;
    check!(st == ST_OK && r.mem.r64(p) == 0x7777, "T=1 after the refused removal: status {st}");
    Ok(())
}

/// The TD releases trusted DMA and the host unbinds (STOP_INTERFACE): T=1 is refused, the page
/// can leave the TD, and the host's own mapping of it works again for T=0.
pub fn stop_and_unbind(r: &mut Rig) -> R {
    need_tdx(r)?;
    check!(call(r, TDG_DMAR_RELEASE, TD, 0, 0)? == 0, "TDG.DMAR.RELEASE");
    let st = r.fill(F_T, GPA, 64, 0x8888)?;
    check!(st == ST_T1_REFUSED, "T=1 after release: status {st}");
    check!(call(r, TDH_TDI_UNBIND, TD, 0, 0)? == 0, "TDH.TDI.UNBIND");
    check!(r.tdi_state()? == 0, "the device's DOE says the TDI is not CONFIG_UNLOCKED");
    expect_event("tdisp", "from=RUN to=CONFIG_UNLOCKED via=tdx-module");
    check!(call(r, TDH_MEM_PAGE_REMOVE, TD, GPA, 0)? == 0, "TDH.MEM.PAGE.REMOVE after unbind");
    let p = td_page(r)?;
    let st = r.fill(0, STOLEN_IOVA, 64, 0x9999)?;
    check!(st == ST_OK && r.mem.r64(p) == 0x9999, "T=0 to the page, the host's again: status {st}");
    Ok(())
}
