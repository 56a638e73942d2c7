//! The secure IOMMU function: BAR0 is the AMD-Vi register window (with `--iommu vtd`, the VT-d
//! remapping unit's registers instead), BAR2 the RMP registers and a
//! PSP-style firmware mailbox (command id in CMDRESP bits 26:16, status in bits 15:0 with bit 31
//! on completion, as Linux drivers/crypto/ccp/psp-dev.c drives the PSP). Layouts:
//! docs/device-abi.md.

use crate::secure::SecureIommu;
use crate::vfio::function::{Bar, PciFunction, PciIds};
use crate::vfio::guest_mem::{GuestMem, GuestRam};
use iommu_model::amdvi::mmio::MMIO_SIZE;
use iommu_model::mem::PhysMem;
use rmp_model::ops::{AdjustAttrs, GuestCtx, GuestResult, RmpState};
use rmp_model::tio::{Tio, TioStatus, Transport};
use rmp_model::PageSize;
use std::sync::{Arc, Mutex};
use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

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

/// The BAR2 register offsets (abi::mailbox::reg).
pub use abi::mailbox::reg as bar2;
use abi::mailbox::{self as mb, CmdResp, Command, GuestMessage, MailboxStatus, SnpCtl, RMP_FAIL_INPUT};

const INVALID_ADDRESS: u32 = MailboxStatus::InvalidAddress.code();
const INVALID_COMMAND: u32 = MailboxStatus::InvalidCommand.code();

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
        let mut b = [0u8; mb::CMDBUF_SIZE];
        // Outputs go inside the 64 bytes just read: those sums cannot wrap.
        if mem.read(buf, &mut b).is_err() {
            return INVALID_ADDRESS;
        }
        let size = |v: u8| if v == mb::PAGE_2M { PageSize::Size2M } else { PageSize::Size4K };
        let guest = |r: GuestResult| match r {
            GuestResult::Status(s) => u32::from(s.code()),
            GuestResult::NestedPageFault { .. } => MailboxStatus::NestedPageFault.code(),
            GuestResult::GeneralProtection => MailboxStatus::GeneralProtection.code(),
        };
        let mut s = self.lock();
        // TDX Connect: the mailbox is the TDX module's, and only its calls exist.
        if s.is_tdx() {
            return crate::secure::tdx_module::command(&mut s, id, &b);
        }
        let status = match Command::from_code(id) {
            Some(Command::Rmpupdate) => {
                let c: mb::RmpUpdate = mb::parse(&b);
                let asid = c.asid.get();
                let st = RmpState {
                    gpa: c.gpa.get(),
                    assigned: c.assigned != 0,
                    page_size: size(c.page_size),
                    immutable: c.immutable != 0,
                    asid: asid as u16,
                };
                if asid > 0xffff {
                    RMP_FAIL_INPUT
                } else {
                    u32::from(s.rmpupdate(&mut mem, c.spa.get(), &st).code())
                }
            }
            Some(Command::Psmash | Command::Pvalidate | Command::Rmpadjust | Command::Rmpread) if !s.snp_enabled() => RMP_FAIL_INPUT,
            Some(Command::Psmash) => {
                let spa = mb::parse::<mb::Psmash>(&b).spa.get();
                s.rmp_op(&mut mem, spa, |r| r.psmash(spa)).map_or(RMP_FAIL_INPUT, |c| u32::from(c.code()))
            }
            Some(Command::Pvalidate) => {
                let c: mb::Pvalidate = mb::parse(&b);
                let spa = c.spa.get();
                let g = GuestCtx { asid: c.asid.get(), vmpl: 0 };
                s.rmp_op(&mut mem, spa, |r| r.pvalidate(g, spa, c.gpa.get(), size(c.page_size), c.validate != 0))
                    .map_or(RMP_FAIL_INPUT, guest)
            }
            Some(Command::Rmpadjust) => {
                let c: mb::RmpAdjust = mb::parse(&b);
                let spa = c.spa.get();
                let g = GuestCtx { asid: c.asid.get(), vmpl: c.vmpl };
                let a = AdjustAttrs { target_vmpl: c.target_vmpl, perms: c.perms, vmsa: c.vmsa != 0 };
                s.rmp_op(&mut mem, spa, |r| r.rmpadjust(g, spa, c.gpa.get(), size(c.page_size), a)).map_or(RMP_FAIL_INPUT, guest)
            }
            Some(Command::Rmpread) => match s.rmp().and_then(|r| r.rmpread(mb::parse::<mb::RmpRead>(&b).spa.get())) {
                Some(e) => {
                    if mem.write(buf.wrapping_add(mb::out::RMPREAD), &e.to_bytes()).is_err() {
                        INVALID_ADDRESS
                    } else {
                        0
                    }
                }
                None => RMP_FAIL_INPUT,
            },
            Some(tio) => tio_command(&mut s, &mut mem, tio, buf, &b),
            None => INVALID_COMMAND,
        };
        s.irq_if_pending();
        status
    }
}

/// The TIO commands; TDISP messages reach the endpoint's responder directly (the host's DOE
/// relay collapsed: the model carries the bytes unchanged).
fn tio_command(s: &mut SecureIommu, mem: &mut GuestMem, command: Command, buf: u64, b: &[u8; mb::CMDBUF_SIZE]) -> u32 {
    s.with_tio(|tio, transport| tio_call(tio, transport, mem, command, buf, b))
}

fn tio_call(tio: &mut Tio, transport: Transport, mem: &mut GuestMem, command: Command, buf: u64, b: &[u8; mb::CMDBUF_SIZE]) -> u32 {
    let code = |st: TioStatus| st.code();
    // An output written back into the command buffer: 0, or INVALID_ADDRESS if it cannot be.
    let mut output = |at: u64, bytes: &[u8]| if mem.write(buf.wrapping_add(at), bytes).is_err() { INVALID_ADDRESS } else { 0 };
    match command {
        Command::TioStatus => {
            let (init, devs, tdis) = tio.status();
            let out = mb::TioStatus {
                initialized: U32::new(u32::from(init)),
                devices: U32::new(devs as u32),
                tdis: U32::new(tdis as u32),
                ..Default::default()
            };
            output(mb::out::TIO_STATUS, &out.as_bytes()[mb::out::TIO_STATUS as usize..])
        }
        Command::TioInit => code(tio.init()),
        Command::TioDevCreate => {
            let c: mb::TioDev = mb::parse(b);
            code(tio.dev_create(c.device_id.get(), c.arg))
        }
        Command::TioDevReclaim => code(tio.dev_reclaim(mb::parse::<mb::TioDev>(b).device_id.get())),
        Command::TioDevConnect => {
            let c: mb::TioDevConnect = mb::parse(b);
            code(tio.dev_connect(c.device_id.get(), c.ide_stream_id, transport))
        }
        Command::TioDevDisconnect => {
            let c: mb::TioDev = mb::parse(b);
            code(tio.dev_disconnect(c.device_id.get(), c.arg != 0))
        }
        Command::TioTdiCreate => {
            let c: mb::TioTdiCreate = mb::parse(b);
            match tio.tdi_create(c.device_id.get(), c.function_id.get()) {
                Ok(tdi) => output(mb::out::TIO_TDI_CREATE, &tdi.to_le_bytes()),
                Err(st) => code(st),
            }
        }
        Command::TioTdiReclaim => code(tio.tdi_reclaim(mb::parse::<mb::TioTdi>(b).tdi.get())),
        Command::TioTdiBind => {
            let c: mb::TioTdiBind = mb::parse(b);
            code(tio.tdi_bind(c.tdi.get(), c.asid.get(), c.guest_device_id.get(), c.lock_flags.get(), c.run != 0, transport))
        }
        Command::TioTdiUnbind => {
            let c: mb::TioTdi = mb::parse(b);
            code(tio.tdi_unbind(c.tdi.get(), c.force != 0, transport))
        }
        Command::TioTdiStatus => match tio.tdi_status(mb::parse::<mb::TioTdi>(b).tdi.get(), transport) {
            Ok(st) => output(mb::out::TIO_TDI_STATUS, &[st as u8]),
            Err(st) => code(st),
        },
        Command::TioGuestRequest => {
            let c: mb::TioGuestRequest = mb::parse(b);
            let tdi = c.tdi.get();
            let r = match GuestMessage::from_code(c.message.get()) {
                Some(GuestMessage::SdteWrite) => tio.sdte_write(tdi, c.vtom.get()) as u32,
                Some(GuestMessage::Run) => code(tio.tdi_run(tdi, transport)),
                None => return INVALID_COMMAND,
            };
            output(mb::out::TIO_GUEST_REQUEST, &r.to_le_bytes())
        }
        Command::TioAsidFenceClear => code(tio.asid_fence_clear(mb::parse::<mb::TioAsidFence>(b).asid.get())),
        Command::TioAsidFenceStatus => {
            let st = tio.asid_fence_status(mb::parse::<mb::TioAsidFence>(b).asid.get());
            output(mb::out::TIO_ASID_FENCE_STATUS, &st.to_le_bytes())
        }
        _ => INVALID_COMMAND,
    }
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
        let id = abi::pci::SECURE_IOMMU;
        PciIds { vendor: id.vendor, device: id.device, subsystem_vendor: id.vendor, subsystem: id.device, class: id.class, revision: 1 }
    }

    fn bars(&self) -> Vec<Bar> {
        let bar0 = if self.lock().is_vtd() { iommu_model::vtd::regs::MMIO_SIZE } else { MMIO_SIZE };
        vec![Bar { index: 0, size: bar0 }, Bar { index: 2, size: mb::BAR2_SIZE }]
    }

    /// MSI, as AMD IOMMUs have it (Linux iommu_init_irq: pci_enable_msi unless XT is in use):
    /// vector 0 carries the event log and COMPLETION_WAIT interrupts.
    fn msi_vectors(&self) -> u8 {
        1
    }

    /// The AMD IOMMU capability block; a VT-d unit has none (the ACPI DMAR alone describes it).
    fn std_caps(&self) -> Vec<Vec<u8>> {
        if self.lock().is_vtd() {
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
            0 => self.lock().bar0_read(offset, data.len()),
            2 => {
                let s = self.lock();
                let r = match offset & !7 {
                    bar2::RMP_BASE => s.rmp_window().0,
                    bar2::RMP_END => s.rmp_window().1,
                    bar2::SNP_CTL => self.snp_ctl,
                    bar2::CMDRESP => u64::from(self.cmdresp),
                    bar2::CMDBUF_LO => self.cmdbuf,
                    bar2::FE_MSG_ADDR => s.vtd_fault_message().0,
                    bar2::FE_MSG_DATA => s.vtd_fault_message().1,
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
                self.lock().bar0_write(&mut mem, offset, data.len(), v);
            }
            // TDX Connect: the RMP registers do not exist; only the module's mailbox does.
            2 if self.lock().is_tdx() && offset < bar2::CMDRESP => {}
            2 => match offset {
                // The window is checked when SNP is enabled and locked from then on, as the
                // MSRs are once SYSCFG.SNPEn is set (docs/device-abi.md, "RMP_BASE and RMP_END").
                bar2::RMP_BASE => self.lock().set_rmp_base(v),
                bar2::RMP_END => self.lock().set_rmp_end(v),
                bar2::SNP_CTL => {
                    // SNP_EN stays set once SNP is on; a refused enable reads back 0.
                    let on = if SnpCtl::from_bits_truncate(v).contains(SnpCtl::SNP_EN) {
                        let pages = self.ram.top().div_ceil(0x1000);
                        let mut mem = self.ram.snapshot();
                        self.lock().enable_snp(&mut mem, pages).is_ok()
                    } else {
                        self.lock().snp_enabled()
                    };
                    self.snp_ctl = u64::from(on);
                }
                bar2::CMDBUF_LO => self.cmdbuf = (self.cmdbuf & !0xffff_ffff) | (v & 0xffff_ffff),
                bar2::CMDBUF_HI => self.cmdbuf = (self.cmdbuf & 0xffff_ffff) | (v << 32),
                bar2::CMDRESP => {
                    let id = CmdResp(v as u32).id();
                    let status = self.run_command(id);
                    self.cmdresp = CmdResp::done(id, status).0;
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.lock().reset_units();
        self.cmdresp = 0;
    }
}
