//! The rig every scenario builds on: the secure IOMMU and the DMA endpoint found and mapped, a
//! device table, command buffer, event log and v1 page tables written in huge pages, the
//! endpoint's ring mapped; the operations a driver of those functions needs (a descriptor
//! through the ring, a mailbox command, a TDISP request through DOE). With the TDX Connect
//! personality the rig is the host of a VT-d unit instead ([`host_vtd`]).

pub(crate) mod host_vtd;

use crate::modes::{amdvi_mode, tdx_mode, vtd_mode};
use crate::report::{poll, R};
use crate::sys::{find, Bar, Config, DmaMem, PciDev};
use abi::endpoint::{self as ep, reg, Ctrl, DescFlags, Descriptor, DmaStatus, Op};
use abi::mailbox::{self as mb, CmdResp};
use abi::{doe, Bdf};
use host_vtd::HostVtd;
use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::command::{encode, Command};
use iommu_model::amdvi::dte::Dte;
use iommu_model::amdvi::event::Event;
use iommu_model::amdvi::mmio::{self, control};
use iommu_model::walk::Perm;
use rmp_model::tdisp::{self, Response, TdiState};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

pub(crate) const DOMAIN: u16 = 1;
pub(crate) const RING_IOVA: u64 = 0x1000_0000;
pub(crate) const RING_ENTRIES: u32 = 64;
const SMALL_IOVA: u64 = 0x2000_0000;

pub(crate) struct Rig {
    pub(crate) ep_cfg: Config,
    pub(crate) doe: Option<u64>,
    /// The AMD-Vi registers, unless the kernel's amd_iommu owns them (`amdvi_mode`) or BAR0 is a
    /// VT-d unit the kernel's intel_iommu owns (`vtd_mode`).
    pub(crate) iommu: Option<Bar>,
    /// The secure IOMMU's BAR2 (abi::mailbox).
    pub(crate) ctl: Bar,
    /// The endpoint's BAR0 (abi::endpoint).
    pub(crate) ep: Bar,
    pub(crate) mem: DmaMem,
    pub(crate) rid: u16,
    pub(crate) hp1: u64,
    devtab: u64,
    pub(crate) cmdbuf: u64,
    evtlog: u64,
    pub(crate) sem: u64,
    pub(crate) mbox: u64,
    pt: V1Builder,
    pub(crate) cmd_tail: u64,
    evt_head: u64,
    pub(crate) sem_seq: u64,
    pub(crate) tail: u32,
    /// TDX Connect: the host's VT-d tables (BAR0 is a VT-d unit this program drives as the host).
    pub(crate) host_vtd: Option<HostVtd>,
    /// TDX Connect: the page the host gives the TD (0 until then).
    pub(crate) td_page: u64,
}

/// The requester id of a function from its sysfs name ("0000:00:04.0": domain, then bus:dev.fn).
fn requester_id(d: &PciDev) -> Option<u16> {
    let (_, bdf) = d.bdf.split_once(':')?;
    bdf.parse::<Bdf>().ok().map(u16::from)
}

/// One of the tiommu functions, found by its ids.
pub(crate) fn find_function(id: abi::pci::PciId) -> Result<PciDev, String> {
    find(id.vendor, id.device).ok_or_else(|| format!("no {:04x}:{:04x} function", id.vendor, id.device))
}

impl Rig {
    pub(crate) fn new() -> Result<Rig, String> {
        let iommu_dev = find_function(abi::pci::SECURE_IOMMU).map_err(|e| format!("{e} (secure IOMMU)"))?;
        let ep_dev = find_function(abi::pci::ENDPOINT).map_err(|e| format!("{e} (DMA endpoint)"))?;
        let rid = requester_id(&ep_dev).ok_or("endpoint address")?;
        let iommu = if amdvi_mode() || vtd_mode() || tdx_mode() { None } else { Some(Bar::map(&iommu_dev, 0)?) };
        let (ctl, ep) = (Bar::map(&iommu_dev, 2)?, Bar::map(&ep_dev, 0)?);
        if vtd_mode() {
            wire_vtd_fault_event(&iommu_dev, &ctl)?;
        }
        let ep_cfg = Config::open(&ep_dev)?;
        let doe = ep_cfg.ext_cap(doe::CAP_ID);
        let mut mem = DmaMem::default();
        let hp0 = mem.page()?;
        let hp1 = mem.page()?;
        let pt = V1Builder::new(&mut mem, hp0 + 0x10_0000, hp0 + 0x20_0000, 4).map_err(|e| format!("{e:?}"))?;
        let mut rig = Rig {
            ep_cfg,
            doe,
            iommu,
            ctl,
            ep,
            mem,
            rid,
            hp1,
            devtab: hp0 + 0x8000,
            cmdbuf: hp0 + 0x1000,
            evtlog: hp0 + 0x2000,
            sem: hp0 + 0x3000,
            mbox: hp0 + 0x4000,
            pt,
            cmd_tail: 0,
            evt_head: 0,
            sem_seq: 0,
            tail: 0,
            host_vtd: None,
            td_page: 0,
        };
        if tdx_mode() {
            let regs = Bar::map(&iommu_dev, 0)?;
            rig.host_vtd = Some(HostVtd::up(&mut rig, regs)?);
            return Ok(rig);
        }
        let Some(regs) = &rig.iommu else { return Ok(rig) };
        let dte = Dte::translated(rig.pt.root, 4, DOMAIN, Perm::RW);
        rig.mem.wr(rig.devtab + u64::from(rid) * 32, &dte.to_bytes());
        // As Linux does: everything off before the bases are (re)written, then on again, so a
        // command processor an earlier driver left stopped restarts.
        regs.w64(mmio::CONTROL as usize, 0);
        // Two pages, Size = 1 (spec 48882 §3.4.1, Device Table Base Address Register): every
        // devid of bus 0, wherever the endpoint's slot is.
        regs.w64(mmio::DEV_TABLE_BASE as usize, rig.devtab | 1);
        regs.w64(mmio::CMD_BUF_BASE as usize, rig.cmdbuf | 8 << 56);
        regs.w64(mmio::EVENT_LOG_BASE as usize, rig.evtlog | 8 << 56);
        regs.w64(mmio::CONTROL as usize, control::IOMMU_EN | control::EVENT_LOG_EN | control::CMD_BUF_EN);
        rig.map(RING_IOVA, hp1, 12, Perm::RW)?;
        // A driver taking over drops whatever an earlier one left cached, and resets the engine.
        rig.submit(&[Command::InvalidateIommuAll]);
        rig.completion_wait()?;
        rig.start_ring(RING_IOVA, RING_ENTRIES, Ctrl::empty());
        Ok(rig)
    }

    /// Reset the endpoint's engine and give it a ring of `entries` descriptors at `iova`.
    pub(crate) fn start_ring(&self, iova: u64, entries: u32, ctrl: Ctrl) {
        self.ep.w32(reg::CTRL as usize, (Ctrl::RESET | ctrl).bits());
        self.ep.w64(reg::RING_BASE as usize, iova);
        self.ep.w32(reg::RING_SIZE as usize, entries.trailing_zeros());
    }

    pub(crate) fn map(&mut self, iova: u64, pa: u64, size_log2: u8, perm: Perm) -> R {
        self.pt.map(&mut self.mem, iova, pa, size_log2, perm).map_err(|e| format!("map {iova:#x}: {e:?}"))
    }

    /// A small buffer page: IOVA SMALL_IOVA + k pages, backed by huge page 1 at (k + 1) pages.
    pub(crate) fn small(&self, k: u64) -> (u64, u64) {
        (SMALL_IOVA + k * 0x1000, self.hp1 + (k + 1) * 0x1000)
    }

    pub(crate) fn submit(&mut self, cmds: &[Command]) {
        submit(self.iommu.as_ref(), &self.mem, self.cmdbuf, &mut self.cmd_tail, cmds);
    }

    /// COMPLETION_WAIT and poll its store, as Linux's wait_on_sem does.
    pub(crate) fn completion_wait(&mut self) -> R {
        self.sem_seq += 1;
        let data = self.sem_seq;
        self.submit(&[Command::CompletionWait { store: true, interrupt: false, store_addr: self.sem, data }]);
        poll(|| self.mem.r64(self.sem) == data).then_some(()).ok_or_else(|| "COMPLETION_WAIT never stored".into())
    }

    /// New event-log records since the last call.
    pub(crate) fn events(&mut self) -> Vec<Event> {
        let Some(regs) = &self.iommu else { return Vec::new() };
        let tail = regs.r64(mmio::EVENT_LOG_TAIL as usize);
        let mut out = Vec::new();
        while self.evt_head != tail && out.len() < 256 {
            let mut b = [0u8; 16];
            self.mem.rd(self.evtlog + self.evt_head, &mut b);
            out.push(Event::from_bytes(&b));
            self.evt_head = (self.evt_head + 16) % 4096;
        }
        regs.w64(mmio::EVENT_LOG_HEAD as usize, self.evt_head);
        out
    }

    /// The ring slot the next descriptor goes in.
    pub(crate) fn next_slot(&self) -> u64 {
        self.hp1 + u64::from(self.tail % RING_ENTRIES) * ep::DESC_SIZE
    }

    /// Put `d` in the next slot and ring the doorbell; the slot's address.
    pub(crate) fn post(&mut self, d: &Descriptor) -> u64 {
        let slot = self.next_slot();
        self.mem.wr(slot, d.as_bytes());
        self.tail = (self.tail + 1) % RING_ENTRIES;
        self.ep.w32(reg::TAIL as usize, self.tail);
        slot
    }

    /// One descriptor through the ring; returns its status (and value field).
    pub(crate) fn dma(&mut self, op: Op, flags: DescFlags, src: u64, dst: u64, len: u32, value: u64) -> Result<(DmaStatus, u64), String> {
        let slot = self.post(&Descriptor::new(op, flags, len, src, dst, value));
        let st = wait_status(|b| self.mem.rd(slot + ep::DESC_STATUS, b))
            .ok_or_else(|| format!("descriptor {} never completed", (self.tail + RING_ENTRIES - 1) % RING_ENTRIES))??;
        Ok((st, self.mem.r64(slot + ep::DESC_VALUE)))
    }

    pub(crate) fn fill(&mut self, flags: DescFlags, iova: u64, len: u32, pattern: u64) -> Result<DmaStatus, String> {
        Ok(self.dma(Op::Fill, flags, 0, iova, len, pattern)?.0)
    }

    /// A firmware mailbox command with its buffer (a command struct of abi::mailbox or
    /// abi::tdx); returns the status.
    pub(crate) fn mailbox(&mut self, id: impl Into<u32>, buf: &[u8]) -> Result<u32, String> {
        let id = id.into();
        let mut b = [0u8; mb::CMDBUF_SIZE];
        b[..buf.len()].copy_from_slice(buf);
        self.mem.wr(self.mbox, &b);
        self.ctl.w64(mb::reg::CMDBUF_LO as usize, self.mbox);
        self.ctl.w32(mb::reg::CMDRESP as usize, CmdResp::request(id).0);
        let mut r = CmdResp(0);
        check!(
            poll(|| {
                r = CmdResp(self.ctl.r32(mb::reg::CMDRESP as usize));
                r.is_done()
            }),
            "mailbox command {id:#x} never completed"
        );
        Ok(r.status())
    }

    /// A command's output, `n` bytes at `at` of the mailbox buffer.
    pub(crate) fn mailbox_out(&self, at: u64, n: usize) -> Vec<u8> {
        self.page_bytes(self.mbox + at, n)
    }

    pub(crate) fn rmpupdate(&mut self, spa: u64, gpa: u64, assigned: bool, asid: u32) -> Result<u32, String> {
        let c =
            mb::RmpUpdate { spa: U64::new(spa), gpa: U64::new(gpa), assigned: assigned.into(), asid: U32::new(asid), ..Default::default() };
        self.mailbox(mb::Command::Rmpupdate, c.as_bytes())
    }

    pub(crate) fn pvalidate(&mut self, spa: u64, gpa: u64, asid: u16) -> Result<u32, String> {
        let c = mb::Pvalidate { spa: U64::new(spa), gpa: U64::new(gpa), asid: U16::new(asid), page_size: mb::PAGE_4K, validate: 1 };
        self.mailbox(mb::Command::Pvalidate, c.as_bytes())
    }

    /// A TDISP request (PCIe 6.x §11.3, as rmp_model::tdisp builds and parses it) for the
    /// endpoint's TDI, through its DOE mailbox (abi::doe: TDISP in the clear); the response.
    pub(crate) fn tdisp(&self, message_type: u8, body: &[u8]) -> Result<Response, String> {
        let cap = self.doe.ok_or("the endpoint has no DOE capability")?;
        let m = tdisp::request(message_type, u32::from(self.rid), body);
        let r = self.ep_cfg.doe(cap, doe::TDISP_VENDOR, doe::TDISP_TYPE, &m)?;
        tdisp::parse_response(&r).ok_or_else(|| format!("no TDISP response in {r:02x?}"))
    }

    /// GET_DEVICE_INTERFACE_STATE through DOE.
    pub(crate) fn tdi_state(&self) -> Result<TdiState, String> {
        match self.tdisp(tdisp::req::GET_DEVICE_INTERFACE_STATE, &[])? {
            Response::State(s) => Ok(s),
            other => Err(format!("GET_DEVICE_INTERFACE_STATE answered {other:?}")),
        }
    }

    pub(crate) fn page_bytes(&self, pa: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.mem.rd(pa, &mut v);
        v
    }
}

/// Poll a descriptor's status field (read by `rd`) until the device writes it: the status, an
/// error for a number the device never writes, or `None` after the poll's timeout.
pub(crate) fn wait_status(mut rd: impl FnMut(&mut [u8; 2])) -> Option<Result<DmaStatus, String>> {
    let mut st = [0u8; 2];
    if !poll(|| {
        rd(&mut st);
        u16::from_le_bytes(st) != DmaStatus::Pending.code()
    }) {
        return None;
    }
    let code = u16::from_le_bytes(st);
    Some(DmaStatus::from_code(code).ok_or_else(|| format!("the device wrote status {code}, which the ABI does not define")))
}

/// A descriptor as a driver writes it, as bytes (status PENDING).
pub(crate) fn descriptor(op: Op, flags: DescFlags, len: u32, src: u64, dst: u64, value: u64) -> [u8; ep::DESC_SIZE as usize] {
    let mut b = [0u8; ep::DESC_SIZE as usize];
    b.copy_from_slice(Descriptor::new(op, flags, len, src, dst, value).as_bytes());
    b
}

/// Commands into the 4 KiB command buffer at `cmdbuf` from `tail` on, then the tail register.
/// (No registers when the kernel's amd_iommu owns the function.)
pub(crate) fn submit(iommu: Option<&Bar>, mem: &DmaMem, cmdbuf: u64, tail: &mut u64, cmds: &[Command]) {
    for c in cmds {
        let [a, b] = encode(c);
        mem.w64(cmdbuf + *tail, a);
        mem.w64(cmdbuf + *tail + 8, b);
        *tail = (*tail + 16) % 4096;
    }
    if let Some(regs) = iommu {
        regs.w64(mmio::CMD_BUF_TAIL as usize, *tail);
    }
}

/// In the VT-d run the function's MSI stands in for the unit's own interrupt write: the fault
/// event message Linux programmed into FEADDR/FEDATA (mirrored in BAR2) is copied into 00:03.0's
/// MSI capability and MSI enabled, so the daemon's MSI vector 0 delivers exactly that message
/// and Linux's dmar_fault runs. On hardware the unit writes the message itself; over vfio-user
/// the daemon can only signal the function's own vectors (docs/kernel-paths.md).
pub(crate) fn wire_vtd_fault_event(dev: &PciDev, ctl: &Bar) -> R {
    let (addr, data) = (ctl.r64(mb::reg::FE_MSG_ADDR as usize), ctl.r32(mb::reg::FE_MSG_DATA as usize));
    check!(addr >> 20 == 0xfee, "FEADDR {addr:#x} is no interrupt address: intel_iommu has not set up its fault interrupt");
    let cfg = Config::open(dev)?;
    let mut at = u64::from(cfg.r32(0x34) & 0xfc);
    let mut msi = None;
    for _ in 0..16 {
        if at == 0 {
            break;
        }
        let h = cfg.r32(at);
        if h & 0xff == 0x05 {
            msi = Some(at);
            break;
        }
        at = u64::from((h >> 8) & 0xfc);
    }
    let cap = msi.ok_or("00:03.0 has no MSI capability")?;
    // PCI 3.0 §6.8.1, 64-bit address: message address, upper address, data.
    cfg.w32(cap + 4, addr as u32);
    cfg.w32(cap + 8, (addr >> 32) as u32);
    cfg.w32(cap + 12, data);
    cfg.w32(cap, cfg.r32(cap) | 1 << 16);
    check!(cfg.r32(cap) & 1 << 16 != 0, "MSI enable of 00:03.0 did not stick");
    println!("# the VT-d fault event ({data:#x} at {addr:#x}) goes out as 00:03.0's MSI");
    Ok(())
}
