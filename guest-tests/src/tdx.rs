//! The TDX Connect personality's scenarios (`tiommu daemon --personality tdx-connect`, run-vm
//! `--personality tdx-connect`): this program is the host (it programs the VT-d unit's untrusted
//! tables for the endpoint's T=0 DMA and makes the host's module calls) and the TD (its module
//! calls); the TDX-module stand-in owns the PAMT and the TD's S-EPT, which is also the trusted
//! I/O page table. They mirror the SEV-TIO ones: bind and run a TDI, trusted DMA lands, the
//! host's own tables do not reach T=1, T=0 to a private page is refused, a page with a live
//! trusted mapping cannot leave the TD, STOP and unbind. docs/tdx-vs-sev-tio.md.

use crate::modes::tdx_mode;
use crate::report::{expect_event, R, SKIP};
use crate::rig::Rig;
use abi::endpoint::{DescFlags, DmaStatus};
use abi::event::Via;
use abi::expect;
use abi::tdx::{Call, TdxCall, TdxStatus};
use rmp_model::tdisp::TdiState;
use zerocopy::IntoBytes;

const TD: u32 = 1;
/// The TD's private GPA for its page, which the host's VT-d tables do not map (at first).
const GPA: u64 = 0x4000_0000;
/// An IOVA at which the host maps the TD's page into its own, untrusted tables.
const STOLEN_IOVA: u64 = 0x5000_0000;

fn need_tdx(r: &Rig) -> Result<(), String> {
    if !tdx_mode() || r.host_vtd.is_none() {
        return Err(format!("{SKIP}the TDX Connect personality is not running (scripts/run-vm --personality tdx-connect)"));
    }
    Ok(())
}

/// One module call for the endpoint's TDI; its status.
fn call(r: &mut Rig, c: Call, td: u32, gpa: u64, spa: u64) -> Result<TdxStatus, String> {
    let code = r.mailbox(c, TdxCall::new(td, r.rid, gpa, spa).as_bytes())?;
    TdxStatus::from_code(code).ok_or_else(|| format!("{c} answered {code:#x}, which the ABI does not define"))
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
    check!(call(r, Call::TdhMngCreate, TD, 0, 0)? == TdxStatus::Success, "TDH.MNG.CREATE");
    check!(call(r, Call::TdhTdiBind, TD, 0, 0)? == TdxStatus::Success, "TDH.TDI.BIND");
    check!(r.tdi_state()? == TdiState::ConfigLocked, "the device's DOE says the TDI is not CONFIG_LOCKED");
    let st = r.fill(DescFlags::T, GPA, 64, 0x1111)?;
    check!(st == DmaStatus::T1Refused, "T=1 before RUN: status {st}");
    expect_event(expect!(TdxViolation { t: true, iova: GPA }));
    check!(call(r, Call::TdgTdiStart, TD + 1, 0, 0)? != TdxStatus::Success, "another TD started the TDI");
    check!(call(r, Call::TdgTdiStart, TD, 0, 0)? == TdxStatus::Success, "TDG.TDI.START");
    check!(r.tdi_state()? == TdiState::Run, "the device's DOE says the TDI is not in RUN");
    expect_event(expect!(Tdisp { to: "RUN".into(), via: "tdx-module".into() }));
    let st = r.fill(DescFlags::T, GPA, 64, 0x1111)?;
    check!(st == DmaStatus::T1Refused, "T=1 before the TD accepted trusted DMA: status {st}");
    check!(call(r, Call::TdgDmarAccept, TD, 0, 0)? == TdxStatus::Success, "TDG.DMAR.ACCEPT");
    Ok(())
}

/// The host gives the TD a page at GPA; the TDI's T=1 DMA to GPA lands in it through the TD's
/// trusted table, although the host's tables map nothing there (a T=0 write there faults).
pub fn trusted_dma_lands(r: &mut Rig) -> R {
    need_tdx(r)?;
    let p = td_page(r)?;
    check!(call(r, Call::TdhMemPageAdd, TD, GPA, p)? == TdxStatus::Success, "TDH.MEM.PAGE.ADD");
    let st = r.fill(DescFlags::T, GPA + 0x40, 64, 0x2222_3333)?;
    check!(st == DmaStatus::Ok, "T=1 to the TD's page: status {st}");
    check!(r.mem.r64(p + 0x40) == 0x2222_3333, "the trusted write did not land in the TD's page");
    let st = r.fill(DescFlags::empty(), GPA, 64, 0x4444)?;
    check!(st == DmaStatus::IoPageFault, "T=0 at GPA, which the host's tables do not map: status {st}");
    expect_event(expect!(TranslationFault { via: Via::VtD, iova: GPA }));
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
    let st = r.fill(DescFlags::T, GPA, 64, 0x5555)?;
    check!(st == DmaStatus::Ok && r.mem.r64(p) == 0x5555, "T=1 after the host remapped GPA: status {st}");
    check!(r.mem.r64(q) == 0, "T=1 reached the host's page");
    let st = r.fill(DescFlags::empty(), GPA, 64, 0x6666)?;
    check!(st == DmaStatus::Ok && r.mem.r64(q) == 0x6666, "T=0 through the host's own mapping: status {st}");
    check!(r.mem.r64(p) == 0x5555, "T=0 reached the TD's page");
    check!(call(r, Call::TdhMemPageAdd, TD, GPA + 0x1000, p)? == TdxStatus::PageOwnerMismatch, "the TD's page mapped twice");
    check!(call(r, Call::TdhMemPageAdd, TD, GPA, q)? == TdxStatus::MappingExists, "a host page over the TD's mapping");
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
    let st = r.fill(DescFlags::empty(), STOLEN_IOVA, 64, 0xbad)?;
    check!(st == DmaStatus::RmpPageFault, "T=0 to the TD's page: status {st}");
    check!(r.mem.r64(p) == 0x5555, "the refused write changed the TD's page");
    expect_event(expect!(TdxViolation { t: false, iova: STOLEN_IOVA, spa: Some(p) }));
    Ok(())
}

/// While the TDI's trusted DMA can reach the page, it cannot leave the TD.
pub fn page_with_live_trusted_mapping_stays(r: &mut Rig) -> R {
    need_tdx(r)?;
    check!(call(r, Call::TdhMemPageRemove, TD, GPA, 0)? == TdxStatus::PageInUse, "TDH.MEM.PAGE.REMOVE with trusted DMA attached");
    expect_event(expect!(TdxCall { call: "TDH.MEM.PAGE.REMOVE".into(), status: TdxStatus::PageInUse.into() }));
    let p = td_page(r)?;
    let st = r.fill(DescFlags::T, GPA, 64, 0x7777)?;
    check!(st == DmaStatus::Ok && r.mem.r64(p) == 0x7777, "T=1 after the refused removal: status {st}");
    Ok(())
}

/// The TD releases trusted DMA and the host unbinds (STOP_INTERFACE): T=1 is refused, the page
/// can leave the TD, and the host's own mapping of it works again for T=0.
pub fn stop_and_unbind(r: &mut Rig) -> R {
    need_tdx(r)?;
    check!(call(r, Call::TdgDmarRelease, TD, 0, 0)? == TdxStatus::Success, "TDG.DMAR.RELEASE");
    let st = r.fill(DescFlags::T, GPA, 64, 0x8888)?;
    check!(st == DmaStatus::T1Refused, "T=1 after release: status {st}");
    check!(call(r, Call::TdhTdiUnbind, TD, 0, 0)? == TdxStatus::Success, "TDH.TDI.UNBIND");
    check!(r.tdi_state()? == TdiState::ConfigUnlocked, "the device's DOE says the TDI is not CONFIG_UNLOCKED");
    expect_event(expect!(Tdisp { from: "RUN".into(), to: "CONFIG_UNLOCKED".into(), via: "tdx-module".into() }));
    check!(call(r, Call::TdhMemPageRemove, TD, GPA, 0)? == TdxStatus::Success, "TDH.MEM.PAGE.REMOVE after unbind");
    let p = td_page(r)?;
    let st = r.fill(DescFlags::empty(), STOLEN_IOVA, 64, 0x9999)?;
    check!(st == DmaStatus::Ok && r.mem.r64(p) == 0x9999, "T=0 to the page, the host's again: status {st}");
    Ok(())
}
