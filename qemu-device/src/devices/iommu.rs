//! The secure IOMMU function: BAR0 is the AMD-Vi register window (with `--iommu vtd`, the VT-d
//! remapping unit's registers instead), BAR2 the RMP registers and a
//! PSP-style firmware mailbox (command id in CMDRESP bits 26:16, status in bits 15:0 with bit 31
//! on completion, as Linux drivers/crypto/ccp/psp-dev.c drives the PSP). Layouts:
//! docs/device-abi.md.

use crate::secure::{bdf, SecureIommu, RMP_ADDR_MASK};
use crate::vfio::function::{Bar, PciFunction, PciIds};
use crate::vfio::guest_mem::{GuestMem, GuestRam};
use iommu_model::amdvi::mmio::MMIO_SIZE;
use iommu_model::mem::PhysMem;
use rmp_model::ops::{AdjustAttrs, GuestCtx, GuestResult, RmpState};
use rmp_model::tio::{self, TioStatus};
use rmp_model::PageSize;
use serde_json::json;
use std::sync::{Arc, Mutex};

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x7101;

/// Where the IOMMU capability block sits in config space; the ACPI IVRS names it (cap_ptr) and
/// Linux's iommu_init_pci reads the header there.
pub const CAP_PTR: u8 = crate::pci::config::STD_CAPS_START;

/// The IOMMU capability block (spec 48882 §3.2.1: capability header, base address low/high,
/// range, miscellaneous information 0), 20 bytes. The header: ID 0Fh (secure device), CapType 3,
/// CapRev 1, EFRSup (bit 27: the EFR register is valid). IotlbSup (24) is clear because the
/// model has no device IOTLBs (ATS), and NpCache (26) clear because it never caches a
/// not-present translation, so Linux need not flush after map (amd_iommu_np_cache stays false).
/// The base address registers read 0: the registers are in BAR0, which the IVRS names.
/// Miscellaneous information 0: MSI number 0, GVAsize 48 bits (010b), PAsize and VAsize as the
/// IVRS's IVinfo.
fn capability() -> Vec<u8> {
    const EFR_SUP: u32 = 1 << 27;
    let header = 0x0f | 3 << 16 | 1 << 19 | EFR_SUP;
    let misc0 = 2 << 5 | crate::tools::ivrs::PA_SIZE << 8 | crate::tools::ivrs::VA_SIZE << 15;
    [header, 0, 0, 0, misc0].iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub mod bar2 {
    pub const RMP_BASE: u64 = 0x000;
    pub const RMP_END: u64 = 0x008;
    pub const SNP_CTL: u64 = 0x010;
    /// With `--iommu vtd`, read-only: the VT-d unit's fault event message (FEUADDR:FEADDR, and
    /// FEDATA), for whoever wires the unit's interrupt to the function's MSI
    /// (docs/device-abi.md).
    pub const FE_MSG_ADDR: u64 = 0x020;
    pub const FE_MSG_DATA: u64 = 0x028;
    pub const CMDRESP: u64 = 0x100;
    pub const CMDBUF_LO: u64 = 0x108;
    pub const CMDBUF_HI: u64 = 0x10c;
}

/// Mailbox command ids (the TIO ones are the firmware's, rmp_model::tio::cmd; the page operations
/// are the CPU instructions a host would run, given ids here).
pub mod cmd {
    pub const RMPUPDATE: u32 = 0x01;
    pub const PSMASH: u32 = 0x02;
    pub const PVALIDATE: u32 = 0x03;
    pub const RMPADJUST: u32 = 0x04;
    pub const RMPREAD: u32 = 0x05;
}

/// SEV status codes the mailbox adds (Linux psp-sev.h SEV_RET_INVALID_ADDRESS / INVALID_COMMAND).
const INVALID_ADDRESS: u32 = 0x09;
const INVALID_COMMAND: u32 = 0x11;
/// Mailbox-only status: the guest's page operation took a nested page fault (no return code).
const NESTED_PAGE_FAULT: u32 = 0xfe;
/// Mailbox-only status: PVALIDATE at a VMPL other than 0 took #GP.
const GENERAL_PROTECTION: u32 = 0xfd;
/// TIO_GUEST_REQUEST message types: SDTE_WRITE (phase-2 TIO_MSG_SDTE_WRITE_REQ) and RUN (the
/// guest's SVM_VMGEXIT_SEV_TIO_OP RUN, given a type here).
const MSG_SDTE_WRITE: u32 = 25;
const MSG_RUN: u32 = 0x100;

pub struct IommuFunction {
    secure: Arc<Mutex<SecureIommu>>,
    ram: GuestRam,
    snp_ctl: u64,
    cmdresp: u32,
    cmdbuf: u64,
}

impl IommuFunction {
    pub fn new(secure: Arc<Mutex<SecureIommu>>, ram: GuestRam) -> Self {
        IommuFunction { secure, ram, snp_ctl: 0, cmdresp: 0, cmdbuf: 0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SecureIommu> {
        crate::secure::lock_for_registers(&self.secure)
    }

    fn run_command(&mut self, id: u32) -> u32 {
        let mut mem = self.ram.snapshot();
        let buf = self.cmdbuf;
        let mut b = [0u8; 64];
        // Outputs go at buf + 8 or + 16, inside the 64 bytes just read: those sums cannot wrap.
        if mem.read(buf, &mut b).is_err() {
            return INVALID_ADDRESS;
        }
        let u64_at = |o: usize| u64::from_le_bytes(field(&b, o));
        let u32_at = |o: usize| u32::from_le_bytes(field(&b, o));
        let u16_at = |o: usize| u16::from_le_bytes(field(&b, o));
        let size = |v: u8| if v == 1 { PageSize::Size2M } else { PageSize::Size4K };
        let guest = |r: GuestResult| match r {
            GuestResult::Status(s) => u32::from(s.code()),
            GuestResult::NestedPageFault { .. } => NESTED_PAGE_FAULT,
            GuestResult::GeneralProtection => GENERAL_PROTECTION,
        };
        let mut s = self.lock();
        // TDX Connect: the mailbox is the TDX module's, and only its calls exist.
        if s.tdx.is_some() {
            return crate::secure::tdx_module::command(&mut s, id, &b);
        }
        let status = match id {
            cmd::RMPUPDATE => {
                let st = RmpState {
                    gpa: u64_at(8),
                    assigned: b[16] != 0,
                    page_size: size(b[17]),
                    immutable: b[18] != 0,
                    asid: u32_at(20) as u16,
                };
                if u32_at(20) > 0xffff {
                    1
                } else {
                    u32::from(s.rmpupdate(&mut mem, u64_at(0), &st).code())
                }
            }
            cmd::PSMASH | cmd::PVALIDATE | cmd::RMPADJUST | cmd::RMPREAD if s.rmp.is_none() => 1,
            cmd::PSMASH => {
                let spa = u64_at(0);
                let st = s.rmp.as_mut().map(|r| r.psmash(spa)).map_or(1, |c| u32::from(c.code()));
                s.mirror(&mut mem, spa >> 12, 512);
                st
            }
            cmd::PVALIDATE => {
                let (spa, gpa) = (u64_at(0), u64_at(8));
                let g = GuestCtx { asid: u16_at(16), vmpl: 0 };
                let r = s.rmp.as_mut().map(|r| r.pvalidate(g, spa, gpa, size(b[18]), b[19] != 0));
                s.mirror(&mut mem, spa >> 12, 512);
                r.map_or(1, guest)
            }
            cmd::RMPADJUST => {
                let (spa, gpa) = (u64_at(0), u64_at(8));
                let g = GuestCtx { asid: u16_at(16), vmpl: b[18] };
                let a = AdjustAttrs { target_vmpl: b[20], perms: b[21], vmsa: b[22] != 0 };
                let r = s.rmp.as_mut().map(|r| r.rmpadjust(g, spa, gpa, size(b[19]), a));
                s.mirror(&mut mem, spa >> 12, 512);
                r.map_or(1, guest)
            }
            cmd::RMPREAD => match s.rmp.as_ref().and_then(|r| r.rmpread(u64_at(0))) {
                Some(e) => {
                    if mem.write(buf.wrapping_add(16), &e.to_bytes()).is_err() {
                        INVALID_ADDRESS
                    } else {
                        0
                    }
                }
                None => 1,
            },
            _ => tio_command(&mut s, &mut mem, id, buf, &b),
        };
        s.irq_if_pending();
        status
    }
}

/// The TIO commands; TDISP messages reach the endpoint's responder directly (the host's DOE
/// relay collapsed: the model carries the bytes unchanged).
fn tio_command(s: &mut SecureIommu, mem: &mut GuestMem, id: u32, buf: u64, b: &[u8; 64]) -> u32 {
    let u32_at = |o: usize| u32::from_le_bytes(field(b, o));
    let u16_at = |o: usize| u16::from_le_bytes(field(b, o));
    let responders = s.tdisp.clone();
    let events = s.events.clone();
    let mut transport = |devid: u16, m: &[u8]| -> Option<Vec<u8>> {
        let r = responders.get(&devid)?;
        let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
        let before = r.state();
        let resp = r.handle_request(m);
        let after = r.state();
        if before != after {
            events.emit(json!({"type": "tdisp", "devid": bdf(devid), "from": before.name(), "to": after.name(), "via": "firmware"}));
        }
        Some(resp)
    };
    let code = |st: TioStatus| st.code();
    match id {
        tio::cmd::TIO_STATUS => {
            let (init, devs, tdis) = s.tio.status();
            let out = [u32::from(init), devs as u32, tdis as u32];
            let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
            if mem.write(buf.wrapping_add(16), &bytes).is_err() {
                return INVALID_ADDRESS;
            }
            0
        }
        tio::cmd::TIO_INIT => code(s.tio.init()),
        tio::cmd::TIO_DEV_CREATE => code(s.tio.dev_create(u16_at(0), b[2])),
        tio::cmd::TIO_DEV_RECLAIM => code(s.tio.dev_reclaim(u16_at(0))),
        tio::cmd::TIO_DEV_CONNECT => {
            let ide: [u8; 8] = b[8..16].try_into().unwrap_or([0; 8]);
            code(s.tio.dev_connect(u16_at(0), ide, &mut transport))
        }
        tio::cmd::TIO_DEV_DISCONNECT => code(s.tio.dev_disconnect(u16_at(0), b[2] != 0)),
        tio::cmd::TIO_TDI_CREATE => match s.tio.tdi_create(u16_at(0), u32_at(4)) {
            Ok(tdi) => {
                if mem.write(buf.wrapping_add(8), &tdi.to_le_bytes()).is_err() {
                    return INVALID_ADDRESS;
                }
                0
            }
            Err(st) => code(st),
        },
        tio::cmd::TIO_TDI_RECLAIM => code(s.tio.tdi_reclaim(u32_at(0))),
        tio::cmd::TIO_TDI_BIND => code(s.tio.tdi_bind(u32_at(0), u16_at(4), u16_at(6), u16_at(8), b[10] != 0, &mut transport)),
        tio::cmd::TIO_TDI_UNBIND => code(s.tio.tdi_unbind(u32_at(0), b[4] != 0, &mut transport)),
        tio::cmd::TIO_TDI_STATUS => match s.tio.tdi_status(u32_at(0), &mut transport) {
            Ok(st) => {
                if mem.write(buf.wrapping_add(8), &[st as u8]).is_err() {
                    return INVALID_ADDRESS;
                }
                0
            }
            Err(st) => code(st),
        },
        tio::cmd::TIO_GUEST_REQUEST => {
            let tdi = u32_at(0);
            let r = match u32_at(4) {
                MSG_SDTE_WRITE => s.tio.sdte_write(tdi, u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]))) as u32,
                MSG_RUN => code(s.tio.tdi_run(tdi, &mut transport)),
                _ => return INVALID_COMMAND,
            };
            if mem.write(buf.wrapping_add(16), &r.to_le_bytes()).is_err() {
                return INVALID_ADDRESS;
            }
            0
        }
        tio::cmd::TIO_ASID_FENCE_CLEAR => code(s.tio.asid_fence_clear(u16_at(0))),
        tio::cmd::TIO_ASID_FENCE_STATUS => {
            let st = s.tio.asid_fence_status(u16_at(0));
            if mem.write(buf.wrapping_add(8), &st.to_le_bytes()).is_err() {
                return INVALID_ADDRESS;
            }
            0
        }
        _ => INVALID_COMMAND,
    }
}

/// `N` bytes of the command buffer at `o` (zeroes past its end).
fn field<const N: usize>(b: &[u8], o: usize) -> [u8; N] {
    b.get(o..).and_then(|s| s.get(..N)).and_then(|s| s.try_into().ok()).unwrap_or([0; N])
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn put(v: u64, data: &mut [u8]) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
}

impl PciFunction for IommuFunction {
    fn ids(&self) -> PciIds {
        PciIds { vendor: VENDOR, device: DEVICE, subsystem_vendor: VENDOR, subsystem: DEVICE, class: 0x08_06_00, revision: 1 }
    }

    fn bars(&self) -> Vec<Bar> {
        let bar0 = if self.lock().vtd.is_some() { iommu_model::vtd::regs::MMIO_SIZE } else { MMIO_SIZE };
        vec![Bar { index: 0, size: bar0 }, Bar { index: 2, size: 0x1000 }]
    }

    /// MSI, as AMD IOMMUs have it (Linux iommu_init_irq: pci_enable_msi unless XT is in use):
    /// vector 0 carries the event log and COMPLETION_WAIT interrupts.
    fn msi_vectors(&self) -> u8 {
        1
    }

    /// The AMD IOMMU capability block; a VT-d unit has none (the ACPI DMAR alone describes it).
    fn std_caps(&self) -> Vec<Vec<u8>> {
        if self.lock().vtd.is_some() {
            return Vec::new();
        }
        vec![capability()]
    }

    /// The IOMMU's event-log writes, completion-wait stores and MSI are its own, not a
    /// device's DMA: Linux's amd_iommu enables the function (pci_enable_device) but never sets
    /// Bus Master Enable, and real AMD IOMMUs interrupt all the same.
    fn bus_master_always(&self) -> bool {
        true
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let v = match bar {
            0 => {
                let s = self.lock();
                match &s.vtd {
                    Some(v) => v.mmio_read(offset, data.len()),
                    None => s.amdvi.mmio_read(offset, data.len()),
                }
            }
            2 => {
                let s = self.lock();
                let r = match offset & !7 {
                    bar2::RMP_BASE => s.rmp_base,
                    bar2::RMP_END => s.rmp_end,
                    bar2::SNP_CTL => self.snp_ctl,
                    bar2::CMDRESP => u64::from(self.cmdresp),
                    bar2::CMDBUF_LO => self.cmdbuf,
                    bar2::FE_MSG_ADDR => s.vtd.as_ref().map_or(0, |v| v.mmio_read(iommu_model::vtd::regs::FEADDR, 8)),
                    bar2::FE_MSG_DATA => s.vtd.as_ref().map_or(0, |v| v.mmio_read(iommu_model::vtd::regs::FEDATA, 4)),
                    _ => 0,
                };
                r >> ((offset & 7) << 3)
            }
            _ => u64::MAX,
        };
        put(v, data);
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let v = le(data);
        match bar {
            0 => {
                tracing::trace!("AMD-Vi write {offset:#06x} <- {v:#x} ({} bytes)", data.len());
                let mut mem = self.ram.snapshot();
                let mut s = self.lock();
                match &mut s.vtd {
                    Some(vtd) => vtd.mmio_write(&mut mem, offset, data.len(), v),
                    None => s.amdvi.mmio_write(&mut mem, offset, data.len(), v),
                }
                s.after_register_write(&mut mem);
                s.irq_if_pending();
            }
            // TDX Connect: the RMP registers do not exist; only the module's mailbox does.
            2 if self.lock().tdx.is_some() && offset < bar2::CMDRESP => {}
            2 => match offset {
                // The window is checked when SNP is enabled and locked from then on, as the
                // MSRs are once SYSCFG.SNPEn is set (docs/device-abi.md, "RMP_BASE and RMP_END").
                bar2::RMP_BASE | bar2::RMP_END => {
                    let mut s = self.lock();
                    if s.rmp.is_none() {
                        match offset {
                            bar2::RMP_BASE => s.rmp_base = v & RMP_ADDR_MASK,
                            _ => s.rmp_end = (v & RMP_ADDR_MASK) | 0x1fff,
                        }
                    }
                }
                bar2::SNP_CTL => {
                    // SNP_EN stays set once SNP is on; a refused enable reads back 0.
                    let on = if v & 1 != 0 {
                        let pages = self.ram.top().div_ceil(0x1000);
                        let mut mem = self.ram.snapshot();
                        self.lock().enable_snp(&mut mem, pages).is_ok()
                    } else {
                        self.lock().rmp.is_some()
                    };
                    self.snp_ctl = u64::from(on);
                }
                bar2::CMDBUF_LO => self.cmdbuf = (self.cmdbuf & !0xffff_ffff) | (v & 0xffff_ffff),
                bar2::CMDBUF_HI => self.cmdbuf = (self.cmdbuf & 0xffff_ffff) | (v << 32),
                bar2::CMDRESP => {
                    let id = (v as u32 >> 16) & 0x7ff;
                    let status = self.run_command(id);
                    self.cmdresp = (1 << 31) | (id << 16) | (status & 0xffff);
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn reset(&mut self) {
        let mut s = self.lock();
        s.amdvi.reset();
        if let Some(v) = &mut s.vtd {
            v.reset();
        }
        if let Some(m) = &mut s.tdx {
            m.reset();
        }
        drop(s);
        self.cmdresp = 0;
    }
}
