//! The scenarios. Each builds on the rig (rig.rs): the two functions found and mapped, a device
//! table, command buffer, event log and v1 page tables written in huge pages, the endpoint's ring
//! mapped.

use crate::ioat;
use crate::kernel_paths;
use crate::modes::{amdvi_mode, plugin_mode, tdx_mode, viommu_mode, vtd_mode};
use crate::report::{expect_count, expect_dmesg, expect_event, function_bdf, poll, ENDPOINT, R, SKIP};
use crate::rig::{descriptor, find_function, submit, wait_status, Rig, DOMAIN, RING_ENTRIES, RING_IOVA};
use crate::sys::{online_cpus, pin_to_cpu};
use crate::tdx;
use abi::doe;
use abi::endpoint::{reg, Ctrl, DescFlags, DmaStatus, Op, Status};
use abi::event::{Access, Via};
use abi::expect;
use abi::mailbox::{self as mb, CmdResp, Command as Mb, GuestMessage, SnpCtl};
use abi::virtio_iommu::ReqStatus;
use iommu_model::amdvi::command::Command;
use iommu_model::amdvi::event::{self, flags};
use iommu_model::amdvi::mmio;
use iommu_model::walk::Perm;
use rmp_model::tdisp::{self, Response, TdiState};
use std::time::Instant;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

const BIG_IOVA: u64 = 0x4000_0000;
const VTOM: u64 = 1 << 40;
/// The pages the multi-vCPU scenario fills.
const SMP_IOVA: u64 = 0x5000_0000;

type Scenario = (&'static str, fn(&mut Rig) -> R);

mod inject;
mod inject_vtd;

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Figures for docs/performance.md (not tests): the BAR read round trip. (What a COPY costs the
/// daemon against a plain copy is measured without a guest: `cargo bench -p qemu-device --bench
/// dma_copy`.)
pub fn measure() {
    // Measured where the program drives the endpoint itself, no kernel IOMMU driver in the way.
    if viommu_mode() || amdvi_mode() || vtd_mode() || tdx_mode() {
        return;
    }
    let Ok(mut r) = Rig::new() else { return };
    let t = Instant::now();
    let mut x = 0u32;
    for _ in 0..1000 {
        x ^= r.ep.r32(reg::ID as usize);
    }
    println!("# perf: BAR read round trip {:.1} us (1000 reads, {x:#x})", t.elapsed().as_secs_f64() * 1e3);
    // Left mapped for whoever looks at guest RAM afterwards: scripts/test walks 0x60000000
    // through the dump `--dump` takes after the program ends (a 4 KiB page, so every level).
    if let Ok(pa) = r.mem.page() {
        let _ = r.map(LEFT_MAPPED_IOVA, pa, 12, Perm::RW);
    }
}

/// The IOVA `measure` leaves mapped for the endpoint (docs/amd-vi.md, "Walking a dump").
pub const LEFT_MAPPED_IOVA: u64 = 0x6000_0000;

pub fn run() -> Vec<(&'static str, R)> {
    let base: [Scenario; 31] = [
        ("doe_discovery_lists_tdisp", doe_discovery),
        ("dma_through_4k_and_2m_mappings", dma_copies),
        ("unmapped_and_read_only_iova_fault", io_page_faults),
        ("changed_pte_stale_until_invalidation", stale_until_invalidated),
        ("rmp_blocks_t0_write_to_assigned_page", rmp_blocks_t0),
        ("tdisp_t1_needs_run_and_the_tdis_asid", tdisp_t1),
        ("vtom_t1_shared_above_vtom", vtom_shared),
        ("tdisp_stop_via_doe_refuses_t1", tdisp_stop),
        ("hazard_private_conversion_of_live_mapping", hazard),
        ("cpu_write_to_assigned_page_reported", cpu_write),
        ("virtio_iommu_groups_the_endpoint", virtio_iommu_group),
        ("virtio_iommu_domain_decides_endpoint_dma", virtio_iommu_domain_decides_dma),
        ("vfio_type1_map_and_unmap_decide_endpoint_dma", kernel_paths::vfio_type1_map_decides_dma),
        ("kernel_doe_discovery_shows_doe_features", kernel_doe_features),
        ("iommufd_ioas_map_and_unmap_decide_endpoint_dma", kernel_paths::iommufd_map_decides_dma),
        ("iommufd_ioas_map_file_of_a_memfd", kernel_paths::iommufd_map_file_memfd),
        ("guest_memfd_gfn_converted_while_its_shared_page_is_mapped", kernel_paths::guest_memfd_conversion),
        ("guest_memfd_mmap_pinned_for_dma_through_vfio", kernel_paths::guest_memfd_mmap_pinned_for_dma),
        ("amd_iommu_drives_the_secure_iommu", amd_iommu_owns_the_function),
        ("intel_iommu_drives_the_vtd_unit", intel_iommu_owns_the_unit),
        ("tdx_module_binds_and_runs_a_tdi", tdx::binds_and_runs_a_tdi),
        ("tdx_trusted_dma_lands_in_the_tds_page", tdx::trusted_dma_lands),
        ("tdx_host_tables_do_not_reach_t1", tdx::host_tables_do_not_reach_t1),
        ("tdx_t0_to_a_private_page_refused", tdx::t0_to_a_private_page_refused),
        ("tdx_page_with_live_trusted_mapping_stays", tdx::page_with_live_trusted_mapping_stays),
        ("tdx_stop_and_unbind", tdx::stop_and_unbind),
        ("ioatdma_binds_and_its_self_test_passes", ioat::ioatdma_bound),
        ("dmatest_memcpy_on_the_ioat_channels", ioat::dmatest_memcpy),
        ("ioat_vfio_type1_copy_fault_reset_msix_private_page", ioat::vfio_type1),
        ("ioat_vfio_iommufd_copy_fault_reset_msix", ioat::vfio_iommufd),
        ("vcpus_drive_the_endpoint_and_the_command_buffer_at_once", vcpus_at_once),
    ];
    // Faults injected through the daemon's control channel (run-vm --inject), last: they leave
    // the IOMMU's logs with artificial records.
    let scenarios: Vec<Scenario> = base.into_iter().chain(inject::SCENARIOS).chain(inject_vtd::SCENARIOS).collect();
    // Scenarios that drive the endpoint through this program's AMD-Vi tables; with the endpoint
    // in the kernel's virtio-iommu domain its DMA no longer takes them.
    let amdvi_dma = [
        "dma_through_4k_and_2m_mappings",
        "unmapped_and_read_only_iova_fault",
        "changed_pte_stale_until_invalidation",
        "rmp_blocks_t0_write_to_assigned_page",
        "tdisp_t1_needs_run_and_the_tdis_asid",
        "vtom_t1_shared_above_vtom",
        "tdisp_stop_via_doe_refuses_t1",
        "hazard_private_conversion_of_live_mapping",
        "vcpus_drive_the_endpoint_and_the_command_buffer_at_once",
    ];
    println!("KTAP version 1");
    println!("1..{}", scenarios.len());
    let mut rig = match Rig::new() {
        Ok(r) => r,
        Err(e) => {
            for (i, (name, _)) in scenarios.iter().enumerate() {
                println!("not ok {} {name} # rig: {e}", i + 1);
            }
            return scenarios.iter().map(|(n, _)| (*n, Err(format!("rig: {e}")))).collect();
        }
    };
    let id = rig.ep.r32(reg::ID as usize);
    match &rig.iommu {
        Some(regs) => {
            println!(
                "# endpoint {:#x} requester {:#06x}, IOMMU EFR {:#x}",
                id,
                rig.ep.r32(reg::REQUESTER_ID as usize),
                regs.r64(mmio::EXT_FEATURES as usize)
            )
        }
        None if tdx_mode() => println!(
            "# endpoint {:#x} requester {:#06x}, TDX Connect: VT-d unit driven by this program as the host",
            id,
            rig.ep.r32(reg::REQUESTER_ID as usize)
        ),
        None if vtd_mode() => {
            println!(
                "# endpoint {:#x} requester {:#06x}, VT-d registers owned by the kernel's intel_iommu",
                id,
                rig.ep.r32(reg::REQUESTER_ID as usize)
            )
        }
        None => println!(
            "# endpoint {:#x} requester {:#06x}, AMD-Vi registers owned by the kernel's amd_iommu",
            id,
            rig.ep.r32(reg::REQUESTER_ID as usize)
        ),
    }
    let mut out = Vec::new();
    for (i, (name, f)) in scenarios.iter().enumerate() {
        let r = if viommu_mode() && amdvi_dma.contains(name) {
            Err(format!("{SKIP}00:04.0 is in the kernel's virtio-iommu domain, not behind these AMD-Vi tables"))
        } else if amdvi_mode() && amdvi_dma.contains(name) {
            Err(format!("{SKIP}the kernel's amd_iommu owns the AMD-Vi registers; this scenario programs them itself"))
        } else if tdx_mode() && amdvi_dma.contains(name) {
            Err(format!("{SKIP}TDX Connect runs on a VT-d unit; this scenario programs AMD-Vi registers and SEV-TIO firmware"))
        } else if vtd_mode() && amdvi_dma.contains(name) {
            Err(format!(
                "{SKIP}the secure IOMMU is a VT-d unit the kernel's intel_iommu owns; this scenario programs AMD-Vi registers itself"
            ))
        } else {
            f(&mut rig)
        };
        match &r {
            Ok(()) => println!("ok {} {name}", i + 1),
            Err(e) if e.starts_with(SKIP) => println!("ok {} {name} # SKIP {}", i + 1, &e[SKIP.len()..]),
            Err(e) => println!("not ok {} {name} # {e}", i + 1),
        }
        out.push((*name, r));
    }
    out
}

fn dma_copies(r: &mut Rig) -> R {
    let ((src, src_pa), (dst, dst_pa)) = (r.small(0), r.small(1));
    r.map(src, src_pa, 12, Perm::RW)?;
    r.map(dst, dst_pa, 12, Perm::RW)?;
    let data = pattern(1, 4096);
    r.mem.wr(src_pa, &data);
    let (st, _) = r.dma(Op::Copy, DescFlags::empty(), src, dst, 4096, 0)?;
    check!(st == DmaStatus::Ok, "4 KiB copy status {st}");
    check!(r.page_bytes(dst_pa, 4096) == data, "4 KiB copy: wrong bytes at the destination");
    // 1 MiB across 2 MiB mappings, at offsets that cross no page boundary of the IOVA space.
    let (a, b) = (r.mem.page()?, r.mem.page()?);
    r.map(BIG_IOVA, a, 21, Perm::RW)?;
    r.map(BIG_IOVA + (2 << 20), b, 21, Perm::RW)?;
    let data = pattern(2, 1 << 20);
    r.mem.wr(a + 0x1000, &data);
    let t = Instant::now();
    let (st, _) = r.dma(Op::Copy, DescFlags::empty(), BIG_IOVA + 0x1000, BIG_IOVA + (2 << 20) + 0x3000, 1 << 20, 0)?;
    let secs = t.elapsed().as_secs_f64();
    check!(st == DmaStatus::Ok, "1 MiB copy status {st}");
    check!(r.page_bytes(b + 0x3000, 1 << 20) == data, "1 MiB copy: wrong bytes");
    let t = Instant::now();
    let mut v = vec![0u8; 1 << 20];
    r.mem.rd(a + 0x1000, &mut v);
    r.mem.wr(b + 0x3000, &v);
    let local = t.elapsed().as_secs_f64();
    println!(
        "# 1 MiB through 2 MiB mappings: device {:.1} MB/s (doorbell to status), guest volatile copy {:.1} MB/s",
        1.0 / secs,
        1.0 / local
    );
    Ok(())
}

fn io_page_faults(r: &mut Rig) -> R {
    r.events();
    let unmapped = 0x3000_0000;
    let st = r.fill(DescFlags::empty(), unmapped, 64, 0x1111)?;
    check!(st == DmaStatus::IoPageFault, "unmapped IOVA: status {st}");
    let ev = r.events();
    check!(
        ev.iter().any(|e| e.code == event::IO_PAGE_FAULT
            && e.address == unmapped
            && e.devid == r.rid
            && e.flags & flags::RW != 0
            && e.flags & flags::PR == 0),
        "no IO_PAGE_FAULT for {unmapped:#x} in the event log: {ev:?}"
    );
    expect_event(expect!(TranslationFault { event: "IO_PAGE_FAULT".into(), iova: unmapped }));
    let (ro, ro_pa) = r.small(2);
    r.map(ro, ro_pa, 12, Perm::new(true, false))?;
    let st = r.fill(DescFlags::empty(), ro, 64, 0x2222)?;
    check!(st == DmaStatus::IoPageFault, "write through an IR-only mapping: status {st}");
    check!(r.page_bytes(ro_pa, 64).iter().all(|&b| b == 0), "the read-only page was written");
    let ev = r.events();
    check!(
        ev.iter().any(|e| e.address == ro && e.flags & (flags::PR | flags::PE | flags::RW) == flags::PR | flags::PE | flags::RW),
        "no permission IO_PAGE_FAULT for {ro:#x}: {ev:?}"
    );
    expect_event(expect!(TranslationFault { iova: ro, access: Access::Write }));
    Ok(())
}

fn stale_until_invalidated(r: &mut Rig) -> R {
    let (iova, old) = r.small(3);
    let (_, new) = r.small(4);
    r.map(iova, old, 12, Perm::RW)?;
    check!(r.fill(DescFlags::empty(), iova, 8, 0xaaaa)? == DmaStatus::Ok, "first fill");
    check!(r.mem.r64(old) == 0xaaaa, "first fill did not land");
    r.map(iova, new, 12, Perm::RW)?; // PTE now points at the new page; no invalidation yet
    check!(r.fill(DescFlags::empty(), iova, 8, 0xbbbb)? == DmaStatus::Ok, "second fill");
    check!(r.mem.r64(old) == 0xbbbb && r.mem.r64(new) == 0, "before invalidation the IOTLB must still send DMA to the old page");
    r.submit(&[Command::InvalidateIommuPages { domain_id: DOMAIN, start: iova, len: 0x1000, pde: true }]);
    r.completion_wait()?;
    check!(r.fill(DescFlags::empty(), iova, 8, 0xcccc)? == DmaStatus::Ok, "third fill");
    check!(r.mem.r64(new) == 0xcccc && r.mem.r64(old) == 0xbbbb, "after INVALIDATE_IOMMU_PAGES the new PTE must be used");
    Ok(())
}

fn rmp_blocks_t0(r: &mut Rig) -> R {
    r.ctl.w64(mb::reg::SNP_CTL as usize, SnpCtl::SNP_EN.bits());
    let (iova, pa) = r.small(5);
    r.map(iova, pa, 12, Perm::RW)?;
    let st = r.rmpupdate(pa, iova, true, 1)?;
    check!(st == 0, "RMPUPDATE to private: status {st}");
    r.events();
    let st = r.fill(DescFlags::empty(), iova, 4096, 0x5555)?;
    check!(st == DmaStatus::RmpPageFault, "T=0 write to an assigned page: status {st}");
    check!(r.page_bytes(pa, 4096).iter().all(|&b| b == 0), "bytes of the assigned page changed");
    let ev = r.events();
    check!(
        ev.iter().any(|e| e.code == event::RMP_PAGE_FAULT && e.address == iova && e.devid == r.rid),
        "no RMP_PAGE_FAULT in the event log: {ev:?}"
    );
    expect_event(expect!(RmpViolation { iova, t: false, access: Access::Write }));
    check!(r.rmpupdate(pa, 0, false, 0)? == 0, "RMPUPDATE to shared");
    check!(r.fill(DescFlags::empty(), iova, 4096, 0x5555)? == DmaStatus::Ok, "write after the page is shared again");
    check!(r.mem.r64(pa + 4088) == 0x5555, "the write did not land");
    Ok(())
}

fn tdisp_t1(r: &mut Rig) -> R {
    let rid = r.rid;
    check!(r.mailbox(Mb::TioInit, &[])? == 0, "TIO_INIT");
    let dev = mb::TioDev { device_id: U16::new(rid), arg: 0 };
    check!(r.mailbox(Mb::TioDevCreate, dev.as_bytes())? == 0, "TIO_DEV_CREATE");
    let connect = mb::TioDevConnect { device_id: U16::new(rid), ..Default::default() };
    check!(r.mailbox(Mb::TioDevConnect, connect.as_bytes())? == 0, "TIO_DEV_CONNECT");
    let create = mb::TioTdiCreate { device_id: U16::new(rid), function_id: U32::new(rid.into()), ..Default::default() };
    check!(r.mailbox(Mb::TioTdiCreate, create.as_bytes())? == 0, "TIO_TDI_CREATE");
    let tdi = u32::from_le_bytes(r.mailbox_out(mb::out::TIO_TDI_CREATE, 4).try_into().unwrap_or([0; 4]));
    // ASID 2, guest BDF 01:00.0, no lock flags, no RUN yet.
    let bind = mb::TioTdiBind { tdi: U32::new(tdi), asid: U16::new(2), guest_device_id: U16::new(0x0100), ..Default::default() };
    check!(r.mailbox(Mb::TioTdiBind, bind.as_bytes())? == 0, "TIO_TDI_BIND");
    let status = mb::TioTdi { tdi: U32::new(tdi), ..Default::default() };
    check!(
        r.mailbox(Mb::TioTdiStatus, status.as_bytes())? == 0
            && r.mailbox_out(mb::out::TIO_TDI_STATUS, 1)[0] == TdiState::ConfigLocked as u8,
        "TDI not CONFIG_LOCKED after bind"
    );
    check!(r.tdi_state()? == TdiState::ConfigLocked, "the device's DOE says the TDI is not CONFIG_LOCKED");
    // A private page of ASID 2 at GPA = IOVA, validated.
    let (iova, pa) = r.small(6);
    r.map(iova, pa, 12, Perm::RW)?;
    check!(r.rmpupdate(pa, iova, true, 2)? == 0, "RMPUPDATE for ASID 2");
    check!(r.pvalidate(pa, iova, 2)? == 0, "PVALIDATE");
    let st = r.fill(DescFlags::T, iova, 64, 0x7777)?;
    check!(st == DmaStatus::T1Refused, "T=1 before RUN: status {st}");
    check!(r.mem.r64(pa) == 0, "T=1 before RUN wrote");
    expect_event(expect!(RmpViolation { iova, t: true }));
    let run = mb::TioGuestRequest { tdi: U32::new(tdi), message: U32::new(GuestMessage::Run.code()), ..Default::default() };
    check!(r.mailbox(Mb::TioGuestRequest, run.as_bytes())? == 0, "RUN request");
    let sdte = mb::TioGuestRequest { message: U32::new(GuestMessage::SdteWrite.code()), vtom: U64::new(VTOM), ..run };
    check!(r.mailbox(Mb::TioGuestRequest, sdte.as_bytes())? == 0, "SDTE_WRITE");
    check!(
        r.mailbox(Mb::TioTdiStatus, status.as_bytes())? == 0 && r.mailbox_out(mb::out::TIO_TDI_STATUS, 1)[0] == TdiState::Run as u8,
        "TDI not in RUN"
    );
    check!(r.tdi_state()? == TdiState::Run, "the device's DOE says the TDI is not in RUN");
    expect_event(expect!(Tdisp { to: "RUN".into() }));
    let st = r.fill(DescFlags::T, iova, 64, 0x8888)?;
    check!(st == DmaStatus::Ok, "T=1 in RUN to the TDI's private page: status {st}");
    check!(r.mem.r64(pa) == 0x8888, "T=1 write did not land");
    // A page of another guest (ASID 3).
    let (iova3, pa3) = r.small(7);
    r.map(iova3, pa3, 12, Perm::RW)?;
    check!(r.rmpupdate(pa3, iova3, true, 3)? == 0, "RMPUPDATE for ASID 3");
    check!(r.pvalidate(pa3, iova3, 3)? == 0, "PVALIDATE ASID 3");
    let st = r.fill(DescFlags::T, iova3, 64, 0x9999)?;
    check!(st == DmaStatus::RmpPageFault, "T=1 to another ASID's page: status {st}");
    check!(r.mem.r64(pa3) == 0, "another ASID's page was written");
    // That host-caused fault on a TDI in RUN fenced ASID 2: no T=1 DMA until the fence is cleared.
    expect_event(expect!(AsidFence { asid: 2 }));
    let fence = mb::TioAsidFence { asid: U16::new(2), ..Default::default() };
    check!(
        r.mailbox(Mb::TioAsidFenceStatus, fence.as_bytes())? == 0 && r.mailbox_out(mb::out::TIO_ASID_FENCE_STATUS, 1)[0] & 3 != 0,
        "ASID 2 not fenced"
    );
    let st = r.fill(DescFlags::T, iova, 64, 0x8889)?;
    check!(st != DmaStatus::Ok && r.mem.r64(pa) == 0x8888, "T=1 DMA of a fenced ASID went through (status {st})");
    check!(r.mailbox(Mb::TioAsidFenceClear, fence.as_bytes())? == 0, "TIO_ASID_FENCE_CLEAR");
    check!(r.fill(DescFlags::T, iova, 64, 0x8888)? == DmaStatus::Ok, "T=1 after the fence was cleared");
    private_ring(r, iova, pa)
}

/// STATUS.HALTED: a descriptor fetch or write-back was refused.
fn halted(r: &Rig) -> bool {
    Status::from_bits_truncate(r.ep.r32(reg::STATUS as usize)).contains(Status::HALTED)
}

/// The driver of a TDI in RUN keeps its ring in its guest's private memory: with CTRL.RING_T the
/// descriptor fetch and the status write-back carry the T bit as well, and a T=1 FILL from that
/// ring reaches the private page at `iova`. Then back to the rig's own ring.
fn private_ring(r: &mut Rig, iova: u64, pa: u64) -> R {
    let (ring_iova, ring_pa) = r.small(11);
    r.map(ring_iova, ring_pa, 12, Perm::RW)?;
    // Written while the page is still shared: a host store to a private page would be an RMP #PF.
    r.mem.wr(ring_pa, &descriptor(Op::Fill, DescFlags::T, 64, 0, iova, 0x5151));
    check!(r.rmpupdate(ring_pa, ring_iova, true, 2)? == 0, "RMPUPDATE of the ring page for ASID 2");
    check!(r.pvalidate(ring_pa, ring_iova, 2)? == 0, "PVALIDATE of the ring page");
    r.start_ring(ring_iova, 2, Ctrl::RING_T);
    r.ep.w32(reg::TAIL as usize, 1);
    let st = wait_status(|b| r.mem.rd(ring_pa + abi::endpoint::DESC_STATUS, b));
    let halted = halted(r);
    r.start_ring(RING_IOVA, RING_ENTRIES, Ctrl::empty());
    r.tail = 0;
    let Some(st) = st.filter(|_| !halted) else {
        return Err(format!("the descriptor in the private ring never completed (halted: {halted})"));
    };
    let st = st?;
    check!(st == DmaStatus::Ok, "T=1 FILL from a private ring: status {st}");
    check!(r.mem.r64(pa) == 0x5151, "the FILL from the private ring did not land");
    Ok(())
}

fn vtom_shared(r: &mut Rig) -> R {
    // Runs after tdisp_t1: the TDI is in RUN with vTOM = 1 TiB.
    let (_, shared_pa) = r.small(8);
    let (_, private_pa) = r.small(6); // ASID 2's page
    let (up, up_priv) = (VTOM + 0x8000, VTOM + 0x9000);
    r.map(up, shared_pa, 12, Perm::RW)?;
    r.map(up_priv, private_pa, 12, Perm::RW)?;
    let st = r.fill(DescFlags::T, up, 64, 0xabab)?;
    check!(st == DmaStatus::Ok, "T=1 above vTOM to a shared page: status {st}");
    check!(r.mem.r64(shared_pa) == 0xabab, "shared write did not land");
    let before = r.mem.r64(private_pa);
    let st = r.fill(DescFlags::T, up_priv, 64, 0xcdcd)?;
    check!(st == DmaStatus::RmpPageFault, "T=1 above vTOM to a private page: status {st}");
    check!(r.mem.r64(private_pa) == before, "private page written through the shared alias");
    expect_event(expect!(RmpViolation { iova: up_priv, t: true }));
    check!(r.mailbox(Mb::TioAsidFenceClear, &2u16.to_le_bytes())? == 0, "TIO_ASID_FENCE_CLEAR");
    Ok(())
}

fn hazard(r: &mut Rig) -> R {
    let (iova, pa) = r.small(9);
    r.map(iova, pa, 12, Perm::RW)?;
    check!(r.fill(DescFlags::empty(), iova, 64, 0x1234)? == DmaStatus::Ok, "DMA through the live mapping");
    // The hardware allows the conversion; the model reports the hazard on the event stream.
    check!(r.rmpupdate(pa, iova, true, 1)? == 0, "RMPUPDATE of a page with a live T=0 mapping");
    expect_event(expect!(Hazard { iova, spa: pa }));
    check!(r.fill(DescFlags::empty(), iova, 64, 0x4321)? == DmaStatus::RmpPageFault, "the next T=0 write must fault");
    check!(r.rmpupdate(pa, 0, false, 0)? == 0, "back to shared");
    Ok(())
}

fn doe_discovery(r: &mut Rig) -> R {
    let cap = r.doe.ok_or("no DOE extended capability (0x2e) on the endpoint")?;
    let mut found = Vec::new();
    let mut index = 0u8;
    for _ in 0..8 {
        let d = r.ep_cfg.doe(cap, doe::VENDOR_PCI_SIG, doe::TYPE_DISCOVERY, &[index, 0, 0, 0])?;
        check!(d.len() == 4, "discovery response of {} bytes", d.len());
        found.push((u16::from_le_bytes([d[0], d[1]]), d[2]));
        index = d[3];
        if index == 0 {
            break;
        }
    }
    println!("# DOE protocols: {found:04x?}");
    check!(found == [(doe::VENDOR_PCI_SIG, doe::TYPE_DISCOVERY), (doe::TDISP_VENDOR, doe::TDISP_TYPE)], "DOE discovery listed {found:x?}");
    check!(r.tdi_state()? == TdiState::ConfigUnlocked, "TDI not CONFIG_UNLOCKED at start");
    // A TDISP request the device refuses: START without LOCK gets TDISP_ERROR INVALID_INTERFACE_STATE.
    let e = r.tdisp(tdisp::req::START_INTERFACE, &[0; 32])?;
    check!(matches!(e, Response::Error { code: tdisp::err::INVALID_INTERFACE_STATE, .. }), "START before LOCK: {e:?}");
    Ok(())
}

fn tdisp_stop(r: &mut Rig) -> R {
    // After tdisp_t1 and vtom_shared the TDI is in RUN; STOP_INTERFACE through DOE ends it.
    let (iova, pa) = r.small(6);
    let r1 = r.tdisp(tdisp::req::STOP_INTERFACE, &[])?;
    check!(r1 == Response::Stopped, "STOP_INTERFACE answered {r1:?}");
    check!(r.tdi_state()? == TdiState::ConfigUnlocked, "TDI not CONFIG_UNLOCKED after STOP");
    expect_event(expect!(Tdisp { via: "doe".into(), to: "CONFIG_UNLOCKED".into() }));
    let before = r.mem.r64(pa);
    let st = r.fill(DescFlags::T, iova, 64, 0x5a5a)?;
    check!(st == DmaStatus::T1Refused, "T=1 after STOP: status {st}");
    check!(r.mem.r64(pa) == before, "T=1 after STOP wrote");
    Ok(())
}

fn cpu_write(r: &mut Rig) -> R {
    if !plugin_mode() {
        return Err(format!("{SKIP}the RMP TCG plugin is not loaded (scripts/run-vm --plugin)"));
    }
    // SNP on (earlier scenarios turn it on; in --amd-iommu runs they skip).
    r.ctl.w64(mb::reg::SNP_CTL as usize, SnpCtl::SNP_EN.bits());
    let (iova, pa) = r.small(10);
    check!(r.rmpupdate(pa, iova, true, 1)? == 0, "RMPUPDATE to private");
    // One CPU store to the guest-assigned page: on SEV-SNP hardware an RMP #PF.
    r.mem.store64(pa + 0x18, 0xfeed);
    expect_event(expect!(RmpCpuViolation { spa: pa + 0x18 }));
    check!(r.rmpupdate(pa, 0, false, 0)? == 0, "back to shared");
    r.mem.store64(pa + 0x18, 0xbeef); // no report: the page is the host's again
    Ok(())
}

/// Linux's amd_iommu found the secure IOMMU from the IVRS and drives it: its ivhd0 sits on
/// 00:03.0 with the capability header and feature registers the model gives (EFRSup; no device
/// IOTLB, no not-present cache; EFR with IA and SNP, EFR2 with SEV-TIO, nothing the model does not
/// do), the endpoint is in one of its IOMMU groups, and the driver logged its features.
fn amd_iommu_owns_the_function(_r: &mut Rig) -> R {
    if !amdvi_mode() {
        return Err(format!("{SKIP}the kernel's amd_iommu does not drive the function (scripts/run-vm --amd-iommu)"));
    }
    let ivhd = "/sys/class/iommu/ivhd0";
    let read =
        |f: &str| std::fs::read_to_string(format!("{ivhd}/{f}")).map(|s| s.trim().to_string()).map_err(|e| format!("{ivhd}/{f}: {e}"));
    let parent = std::fs::read_link(format!("{ivhd}/device")).map_err(|e| format!("{ivhd}/device: {e}"))?;
    let iommu = function_bdf(abi::pci::SECURE_IOMMU);
    check!(parent.ends_with(format!("0000:{iommu}")), "ivhd0 belongs to {parent:?}, not {iommu}");
    let cap = u32::from_str_radix(&read("amd-iommu/cap")?, 16).map_err(|e| e.to_string())?;
    println!("# ivhd0 cap {cap:#x}, features {}", read("amd-iommu/features")?);
    check!(cap & 0xff == 0x0f && (cap >> 16) & 7 == 3, "capability header {cap:#x} is not a secure device capability of type 3");
    check!(cap & (1 << 27) != 0, "EFRSup clear in {cap:#x}");
    check!(cap & (1 << 24 | 1 << 26) == 0, "IotlbSup or NpCache set in {cap:#x}");
    let features = read("amd-iommu/features")?;
    let (efr, efr2) = features.split_once(':').ok_or_else(|| format!("features {features:?}"))?;
    let (efr, efr2) = (u64::from_str_radix(efr, 16).map_err(|e| e.to_string())?, u64::from_str_radix(efr2, 16).map_err(|e| e.to_string())?);
    check!(efr & (1 << 6) != 0 && efr & (1 << 63) != 0, "EFR {efr:#x} lacks IA or SNP");
    // PPR, XT, NX, GT, GA, HE, PC: nothing the model does not build.
    check!(efr & (1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 7 | 1 << 8 | 1 << 9) == 0, "EFR {efr:#x} advertises what the model lacks");
    check!(efr2 & 2 != 0, "EFR2 {efr2:#x} lacks SEV-TIO");
    let ep = *ENDPOINT;
    let group = std::fs::read_link(format!("/sys/bus/pci/devices/0000:{ep}/iommu")).map_err(|e| format!("{ep} has no IOMMU: {e}"))?;
    check!(group.ends_with("ivhd0"), "{ep} is behind {group:?}");
    // Nothing the driver sent was refused, and every COMPLETION_WAIT completed.
    let log = std::process::Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            [
                "Completion-Wait loop timed out",
                "ILLEGAL_COMMAND_ERROR",
                "COMMAND_HARDWARE_ERROR",
                "ILLEGAL_DEV_TABLE_ENTRY",
                "DEV_TAB_HARDWARE_ERROR",
            ]
            .iter()
            .any(|b| l.contains(b))
        })
        .collect();
    check!(bad.is_empty(), "amd_iommu logged: {bad:?}");
    expect_dmesg(&format!(r"AMD-Vi: Extended features \({efr:#x}, {efr2:#x}\): IA SNP SEV-TIO"));
    expect_dmesg(r"AMD-Vi: Using IVHD type 0x11");
    Ok(())
}

/// Linux's intel_iommu found the VT-d unit from the DMAR and drives it: dmar0 at the BAR0
/// address with the unit's own CAP and ECAP (what Linux checked: SAGAW, MGAW, FRO/NFR and IRO
/// inside the DRHD's page), queued invalidation in use, translation on, and the endpoint behind
/// it.
fn intel_iommu_owns_the_unit(_r: &mut Rig) -> R {
    if !vtd_mode() {
        return Err(format!("{SKIP}the kernel's intel_iommu does not drive the function (scripts/run-vm --intel-iommu)"));
    }
    use iommu_model::vtd::{regs, unit::VtdUnit};
    let dmar = "/sys/class/iommu/dmar0";
    let read =
        |f: &str| std::fs::read_to_string(format!("{dmar}/{f}")).map(|s| s.trim().to_string()).map_err(|e| format!("{dmar}/{f}: {e}"));
    let hex = |f: &str| read(f).and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).map_err(|e| format!("{f} {v:?}: {e}")));
    let model = VtdUnit::default();
    let (cap, ecap) = (hex("intel-iommu/cap")?, hex("intel-iommu/ecap")?);
    println!("# dmar0 at {}, version {}, cap {cap:#x}, ecap {ecap:#x}", read("intel-iommu/address")?, read("intel-iommu/version")?);
    check!(cap == model.mmio_read(regs::CAP, 8) && ecap == model.mmio_read(regs::ECAP, 8), "CAP/ECAP are not the unit's");
    let (unit, ep) = (function_bdf(abi::pci::SECURE_IOMMU), *ENDPOINT);
    let bar0 = std::fs::read_to_string(format!("/sys/bus/pci/devices/0000:{unit}/resource")).map_err(|e| e.to_string())?;
    let bar0 = u64::from_str_radix(bar0.split_whitespace().next().unwrap_or("").trim_start_matches("0x"), 16).map_err(|e| e.to_string())?;
    check!(hex("intel-iommu/address")? == bar0, "dmar0 is not at {unit}'s BAR0 {bar0:#x}");
    check!(read("intel-iommu/domains_supported")? == "65536", "domains_supported is not CAP.ND's 65536");
    let iommu = std::fs::read_link(format!("/sys/bus/pci/devices/0000:{ep}/iommu")).map_err(|e| format!("{ep} has no IOMMU: {e}"))?;
    check!(iommu.ends_with("dmar0"), "{ep} is behind {iommu:?}");
    expect_dmesg(&format!(r"DMAR: dmar0: reg_base_addr {bar0:x} ver 1:0 cap {cap:x} ecap {ecap:x}"));
    expect_dmesg(r"DMAR: dmar0: Using Queued invalidation");
    expect_dmesg(r"DMAR: Intel\(R\) Virtualization Technology for Directed I/O");
    Ok(())
}

/// The distribution kernel's own virtio_iommu driver (loaded by /init with tiommu.viommu=1)
/// binds the daemon's virtio-iommu at 00:05.0 and, from the VIOT, puts the DMA endpoint in an
/// IOMMU group; the daemon sees the kernel's PROBE and ATTACH of the endpoint (RID 0x20).
fn virtio_iommu_group(_r: &mut Rig) -> R {
    if !viommu_mode() {
        return Err(format!("{SKIP}no virtio-iommu attached (scripts/run-vm --virtio-iommu)"));
    }
    let link = |p: &str| std::fs::read_link(p).ok().and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
    let (vbdf, ep) = (function_bdf(abi::pci::VIRTIO_IOMMU), *ENDPOINT);
    let viommu = format!("/sys/bus/pci/devices/0000:{vbdf}");
    check!(link(&format!("{viommu}/driver")).as_deref() == Some("virtio-pci"), "{vbdf} is not bound to virtio-pci");
    let vdev = std::fs::read_dir(&viommu)
        .map_err(|e| format!("{viommu}: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("virtio"))
        .ok_or(format!("no virtio device under {vbdf}"))?;
    let driver = link(&format!("{viommu}/{vdev}/driver"));
    check!(driver.as_deref() == Some("virtio_iommu"), "{vdev} is bound to {driver:?}, not virtio_iommu");
    let group = link(&format!("/sys/bus/pci/devices/0000:{ep}/iommu_group")).ok_or(format!("{ep} has no iommu_group"))?;
    let members: Vec<String> = std::fs::read_dir(format!("/sys/kernel/iommu_groups/{group}/devices"))
        .map_err(|e| format!("group {group}: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    check!(members == [format!("0000:{ep}")], "group {group} holds {members:?}");
    let ty = std::fs::read_to_string(format!("/sys/kernel/iommu_groups/{group}/type")).unwrap_or_default();
    println!("# {ep} in IOMMU group {group} (default domain {}) of {vdev} (virtio_iommu)", ty.trim());
    expect_event(expect!(Viommu { req: "probe".into(), devid: Some(*ENDPOINT), status: ReqStatus::Ok.into() }));
    expect_event(expect!(Viommu { req: "attach".into(), devid: Some(*ENDPOINT), status: ReqStatus::Ok.into() }));
    Ok(())
}

/// With the endpoint in the kernel's virtio-iommu domain its DMA takes that domain's tables, not
/// the AMD-Vi tables this program builds: no driver has mapped anything for it, so the ring's
/// first descriptor fetch is refused and the engine halts.
fn virtio_iommu_domain_decides_dma(r: &mut Rig) -> R {
    if !viommu_mode() {
        return Err(format!("{SKIP}no virtio-iommu attached (scripts/run-vm --virtio-iommu)"));
    }
    let (iova, _) = r.small(0);
    let slot = r.post(&abi::endpoint::Descriptor::new(Op::Fill, DescFlags::empty(), 8, 0, iova, 0));
    check!(poll(|| halted(r)), "the engine did not halt: its ring fetch was not refused");
    let mut st = [0u8; 2];
    r.mem.rd(slot + abi::endpoint::DESC_STATUS, &mut st);
    check!(u16::from_le_bytes(st) == DmaStatus::Pending.code(), "a status was written back through an unmapped IOVA");
    // The device reports the fault on its event queue; the kernel's viommu_fault_handler logs it
    // with the endpoint id the VIOT gave it, the requester id (32 for 00:04.0).
    let want = format!("page fault from EP {} at", u16::from(*ENDPOINT));
    let logged = poll(|| {
        let out = std::process::Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        out.lines().any(|l| l.contains(&want) && l.contains("[R]"))
    });
    check!(logged, "the kernel logged no '{want}' from the event queue");
    expect_event(expect!(ViommuFault { devid: Some(*ENDPOINT), posted: true }));
    expect_event(expect!(TranslationFault { devid: *ENDPOINT, via: Via::VirtioIommu }));
    expect_event(expect!(DmaHalted { devid: *ENDPOINT, what: "fetch".into() }));
    Ok(())
}

/// The kernel's own DOE driver (PCI_DOE, built into 7.3) ran discovery on the endpoint's mailbox
/// at enumeration: the protocols the endpoint answers appear in sysfs `doe_features` (files named
/// vendor:type, DOE discovery itself as `doe_discovery`: drivers/pci/doe.c), and the kernel logged
/// nothing about the device's DOE.
fn kernel_doe_features(_r: &mut Rig) -> R {
    let ep = find_function(abi::pci::ENDPOINT)?;
    let dir = format!("{}/doe_features", ep.path);
    let mut found: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(d) => d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) => return Err(format!("{dir}: {e}")),
    };
    found.sort();
    println!("# kernel doe_features: {found:?}");
    check!(found == ["1234:01", "doe_discovery"], "doe_features lists {found:?}, not DOE discovery and the TDISP object");
    let log = std::process::Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let doe: Vec<&str> = log.lines().filter(|l| l.contains(&ep.bdf) && l.contains("DOE")).collect();
    check!(doe.is_empty(), "the kernel logged about the endpoint's DOE: {doe:?}");
    Ok(())
}

/// After the hostile driver: a fresh driver (new tables, reset engine, pages made shared again)
/// copies 4 KiB correctly; so does each channel of the IOAT engine, when it is attached.
pub fn after_hostile() -> R {
    let mut r = Rig::new()?;
    let ((src, src_pa), (dst, dst_pa)) = (r.small(0), r.small(1));
    // TDX Connect: Rig::new brought the VT-d unit up afresh with the small pages mapped; there
    // is no RMP.
    if !tdx_mode() {
        r.ctl.w64(mb::reg::SNP_CTL as usize, SnpCtl::SNP_EN.bits());
        for pa in [r.hp1, src_pa, dst_pa] {
            check!(r.rmpupdate(pa, 0, false, 0)? == 0, "RMPUPDATE {pa:#x} to shared");
        }
        r.map(src, src_pa, 12, Perm::RW)?;
        r.map(dst, dst_pa, 12, Perm::RW)?;
        r.submit(&[Command::InvalidateIommuAll]);
        r.completion_wait()?;
    }
    let data = pattern(3, 4096);
    r.mem.wr(src_pa, &data);
    let (st, _) = r.dma(Op::Copy, DescFlags::empty(), src, dst, 4096, 0)?;
    check!(st == DmaStatus::Ok, "copy after the hostile driver: status {st}");
    check!(r.page_bytes(dst_pa, 4096) == data, "copy after the hostile driver: wrong bytes");
    ioat::copy_after_hostile(&mut r)
}

/// FILLs of the multi-vCPU scenario: this length marks their records in the event stream.
const SMP_FILL_LEN: u32 = 4000;
const SMP_ROUNDS: u64 = 200;

/// Several vCPUs at the daemon's functions at once (run-vm --smp N): vCPU 1 rings the endpoint
/// (FILLs through 16 mapped pages, each checked), vCPU 0 meanwhile runs the AMD-Vi command buffer
/// (invalidations of other domains and devices, each COMPLETION_WAIT store checked in order); with
/// a third vCPU the firmware mailbox (TIO_STATUS) runs too, with a fourth the registers of both
/// functions are read and checked. No deadlock, no lost completion, no wrong result; the event
/// stream must hold every FILL.
fn vcpus_at_once(r: &mut Rig) -> R {
    let ncpu = online_cpus();
    if ncpu < 2 {
        return Err(format!("{SKIP}one vCPU (scripts/run-vm --smp 2)"));
    }
    if r.iommu.is_none() {
        return Err(format!("{SKIP}the kernel's amd_iommu owns the IOMMU function"));
    }
    let pa = r.mem.page()?;
    for k in 0..16 {
        r.map(SMP_IOVA + k * 0x1000, pa + k * 0x1000, 12, Perm::RW)?;
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ep, iommu, ctl, mem, ring, cmdbuf, sem, mbox) =
        (&r.ep, r.iommu.as_ref().ok_or("no IOMMU registers")?, &r.ctl, &r.mem, r.hp1, r.cmdbuf, r.sem, r.mbox);
    let (mut tail, mut cmd_tail, mut seq) = (r.tail, r.cmd_tail, r.sem_seq);
    let ep_id = ep.r32(reg::ID as usize);
    let efr = iommu.r64(mmio::EXT_FEATURES as usize);
    let (mut mailboxes, mut reads) = (0u64, 0u64);
    let result = std::thread::scope(|s| -> R {
        let stop = &stop;
        let endpoint = s.spawn(move || -> Result<u32, String> {
            pin_to_cpu(Some(1))?;
            for i in 0..SMP_ROUNDS {
                let slot = ring + u64::from(tail % RING_ENTRIES) * abi::endpoint::DESC_SIZE;
                let (iova, page) = (SMP_IOVA + (i % 16) * 0x1000, pa + (i % 16) * 0x1000);
                let value = 0x5a5a_0000_0000_0000 | i;
                mem.wr(slot, &descriptor(Op::Fill, DescFlags::empty(), SMP_FILL_LEN, 0, iova, value));
                tail = (tail + 1) % RING_ENTRIES;
                ep.w32(reg::TAIL as usize, tail);
                let st = wait_status(|b| mem.rd(slot + abi::endpoint::DESC_STATUS, b)).ok_or(format!("FILL {i} never completed"))??;
                check!(st == DmaStatus::Ok, "FILL {i}: status {st}");
                check!(mem.r64(page) == value && mem.r64(page + u64::from(SMP_FILL_LEN) - 8) == value, "FILL {i} did not land");
            }
            Ok(tail)
        });
        let mailbox = (ncpu >= 3).then(|| {
            s.spawn(move || -> Result<u64, String> {
                pin_to_cpu(Some(2))?;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    ctl.w64(mb::reg::CMDBUF_LO as usize, mbox);
                    ctl.w32(mb::reg::CMDRESP as usize, CmdResp::request(Mb::TioStatus.code()).0);
                    let v = CmdResp(ctl.r32(mb::reg::CMDRESP as usize));
                    check!(v == CmdResp::done(Mb::TioStatus.code(), 0), "TIO_STATUS answered {:#x}", v.0);
                    n += 1;
                }
                Ok(n)
            })
        });
        let registers = (ncpu >= 4).then(|| {
            s.spawn(move || -> Result<u64, String> {
                pin_to_cpu(Some(3))?;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    check!(ep.r32(reg::ID as usize) == ep_id && iommu.r64(mmio::EXT_FEATURES as usize) == efr, "a register read wrong");
                    n += 1;
                }
                Ok(n)
            })
        });
        let pinned = pin_to_cpu(Some(0));
        let commands = pinned.and_then(|()| {
            for j in 0..SMP_ROUNDS {
                seq += 1;
                let data = seq;
                let cmds = [
                    Command::InvalidateIommuPages { domain_id: DOMAIN + 1 + (j % 7) as u16, start: 0x7000_0000, len: 0x1000, pde: false },
                    Command::InvalidateDevtabEntry { devid: 0x99 },
                    Command::CompletionWait { store: true, interrupt: false, store_addr: sem, data },
                ];
                submit(Some(iommu), mem, cmdbuf, &mut cmd_tail, &cmds);
                check!(poll(|| mem.r64(sem) == data), "COMPLETION_WAIT {j} never stored (got {})", mem.r64(sem));
            }
            Ok(())
        });
        // Every thread is told to stop before any error is returned (the scope joins them).
        let ep_result = endpoint.join().map_err(|_| "the endpoint thread panicked".to_string()).and_then(|r| r);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = mailbox {
            mailboxes = t.join().map_err(|_| "the mailbox thread panicked".to_string())??;
        }
        if let Some(t) = registers {
            reads = t.join().map_err(|_| "the register thread panicked".to_string())??;
        }
        pin_to_cpu(None)?;
        tail = ep_result?;
        commands?;
        Ok(())
    });
    r.tail = tail;
    r.cmd_tail = cmd_tail;
    r.sem_seq = seq;
    result?;
    println!("# {ncpu} vCPUs: {SMP_ROUNDS} FILLs and {SMP_ROUNDS} command batches at once, {mailboxes} mailbox commands, {reads} register read pairs");
    expect_count(SMP_ROUNDS, expect!(Dma { op: Some(Op::Fill.into()), len: SMP_FILL_LEN, status: DmaStatus::Ok.into() }));
    Ok(())
}
