//! The secure IOMMU driven through register sequences a driver or firmware would write, decoded
//! from the input as a list of actions: the RMP window in BAR2 and SNP_CTL, firmware mailbox
//! commands with their 64-byte buffer, the AMD-Vi command buffer filled with commands and run by
//! a tail write, device table entries, the event log, and the endpoint's ring and doorbell, with
//! raw BAR accesses and guest RAM writes in between. Every address field is drawn from in guest
//! RAM, anywhere in the 64-bit space, or just below 2^64, so both deep states and overflow-prone
//! sums are reached. After each input: no panic (debug assertions on), and an RMP mirror, if SNP
//! came on with one, lies inside guest RAM and holds the whole table.

use crate::{guest_ram, Null};
use abi::endpoint::reg;
use abi::mailbox::{reg as bar2, CmdResp, Command as Mb};
use iommu_model::amdvi::command::{encode, Command};
use iommu_model::amdvi::mmio::{self, control};
use qemu_device::devices::endpoint::Endpoint;
use qemu_device::devices::iommu::IommuFunction;
use qemu_device::secure::{check_rmp_window, SecureIommu};
use qemu_device::vfio::guest_mem::GuestRam;
use qemu_device::vfio::server::{FunctionBackend, MsixIrq};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use vfio_user::ServerBackend;

/// 1 MiB of guest RAM at GPA 0 (256 pages: the RMP window needs 0x5000 bytes).
pub const RAM: u64 = 1 << 20;
/// Mailbox commands: the page operations, then the TIO commands (the kept inputs pick them by
/// index: the order stays).
const MAILBOX: &[Mb] = &[
    Mb::Rmpupdate,
    Mb::Psmash,
    Mb::Pvalidate,
    Mb::Rmpadjust,
    Mb::Rmpread,
    Mb::TioStatus,
    Mb::TioInit,
    Mb::TioDevCreate,
    Mb::TioDevReclaim,
    Mb::TioDevConnect,
    Mb::TioDevDisconnect,
    Mb::TioDevStatus,
    Mb::TioTdiCreate,
    Mb::TioTdiReclaim,
    Mb::TioTdiBind,
    Mb::TioTdiUnbind,
    Mb::TioTdiReport,
    Mb::TioTdiStatus,
    Mb::TioGuestRequest,
    Mb::TioAsidFenceClear,
    Mb::TioAsidFenceStatus,
];

/// The input, read front to back; past its end every read is 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    /// An address: in guest RAM (8-byte aligned, or 8 KiB aligned as RMP_BASE wants), any
    /// 64-bit value, or one just below 2^64.
    fn addr(&mut self) -> u64 {
        match self.u8() % 5 {
            0 => (u64::from(self.u32()) % RAM) & !7,
            1 => (u64::from(self.u32()) % RAM) & !0x1fff,
            2 => self.u64(),
            3 => 0u64.wrapping_sub(u64::from(self.u16())),
            _ => ((u64::from(self.u32()) % RAM) & !0x1fff) | 0x1fff,
        }
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

struct Rig<'a> {
    iommu: FunctionBackend<IommuFunction>,
    ep: FunctionBackend<Endpoint>,
    jobs: crossbeam_channel::Receiver<qemu_device::devices::endpoint::Job>,
    file: &'a File,
}

impl Rig<'_> {
    fn bar(&mut self, endpoint: bool, region: u32, off: u64, v: u64, len: usize) {
        let f: &mut dyn ServerBackend = if endpoint { &mut self.ep } else { &mut self.iommu };
        let _ = f.region_write(region, off, &v.to_le_bytes()[..len.min(8)]);
        while let Ok(job) = self.jobs.try_recv() {
            job();
        }
    }
    fn read(&mut self, endpoint: bool, region: u32, off: u64, len: usize) {
        let f: &mut dyn ServerBackend = if endpoint { &mut self.ep } else { &mut self.iommu };
        let mut b = [0u8; 8];
        let _ = f.region_read(region, off, &mut b[..len.min(8)]);
    }
    /// Guest RAM written as the guest's CPU would (outside RAM: nothing).
    fn ram(&self, at: u64, data: &[u8]) {
        if at.checked_add(data.len() as u64).is_some_and(|end| end <= RAM) {
            let _ = self.file.write_all_at(data, at);
        }
    }
    fn w64(&mut self, region: u32, off: u64, v: u64) {
        self.bar(false, region, off, v, 8);
    }
}

pub fn run(data: &[u8]) {
    static RAM_FILE: OnceLock<(GuestRam, File)> = OnceLock::new();
    let (ram, file) = RAM_FILE.get_or_init(|| guest_ram("secure", RAM));
    file.write_all_at(&vec![0u8; RAM as usize], 0).expect("RAM cleared");
    let secure = Arc::new(Mutex::new(SecureIommu::new(Arc::new(Null), Arc::new(MsixIrq::default()))));
    let (tx, jobs) = crossbeam_channel::bounded(64);
    let iommu = FunctionBackend::new("iommu", IommuFunction::new(secure.clone(), ram.clone()), ram.clone(), Arc::new(MsixIrq::default()));
    let ep_irq = Arc::new(MsixIrq::default());
    let ep = FunctionBackend::new("endpoint", Endpoint::new(0x20, secure.clone(), ram.clone(), ep_irq.clone(), tx), ram.clone(), ep_irq);
    let mut rig = Rig { iommu, ep, jobs, file };
    let mut input = Input(data);
    let mut steps = 0;
    while !input.done() && steps < 256 {
        steps += 1;
        match input.u8() % 12 {
            // The RMP window and SNP_EN, as firmware sets them up.
            0 => {
                let (base, end) = (input.addr(), input.addr());
                rig.w64(2, bar2::RMP_BASE, base);
                rig.w64(2, bar2::RMP_END, end);
            }
            1 => rig.w64(2, bar2::SNP_CTL, u64::from(input.u8() & 1)),
            // A mailbox command: the buffer (its 64-bit fields drawn as addresses), then the id.
            2 => {
                let id = match input.u8() {
                    n if usize::from(n) < MAILBOX.len() * 8 => MAILBOX[usize::from(n) % MAILBOX.len()].code(),
                    _ => u32::from(input.u16()) & CmdResp::ID_MASK,
                };
                let buf = input.addr();
                let mut b = [0u8; 64];
                for q in 0..3 {
                    b[q * 8..q * 8 + 8].copy_from_slice(&input.addr().to_le_bytes());
                }
                b[24..].copy_from_slice(&input.bytes::<40>());
                rig.ram(buf, &b);
                rig.bar(false, 2, bar2::CMDBUF_LO, buf & 0xffff_ffff, 4);
                rig.bar(false, 2, bar2::CMDBUF_HI, buf >> 32, 4);
                rig.bar(false, 2, bar2::CMDRESP, u64::from(CmdResp::request(id).0), 4);
                rig.read(false, 2, bar2::CMDRESP, 4);
            }
            // The AMD-Vi command buffer: commands written at its base, run by the tail.
            3 => {
                let base = input.addr() & !0xfff;
                let len = u64::from(input.u8() % 8 + 8) << 56;
                let n = u64::from(input.u8() % 16);
                for i in 0..n {
                    let raw = match input.u8() % 4 {
                        0 => encode(&Command::CompletionWait {
                            store: true,
                            interrupt: input.u8() & 1 != 0,
                            store_addr: input.addr(),
                            data: input.u64(),
                        }),
                        1 => encode(&Command::InvalidateIommuPages {
                            domain_id: input.u16(),
                            start: input.addr(),
                            len: input.u64(),
                            pde: false,
                        }),
                        2 => encode(&Command::InvalidateDevtabEntry { devid: input.u16() }),
                        _ => [input.u64(), input.u64()],
                    };
                    let mut b = [0u8; 16];
                    b[..8].copy_from_slice(&raw[0].to_le_bytes());
                    b[8..].copy_from_slice(&raw[1].to_le_bytes());
                    rig.ram(base.wrapping_add(i * 16), &b);
                }
                rig.w64(0, mmio::CMD_BUF_BASE, base | len);
                rig.w64(0, mmio::CONTROL, control::IOMMU_EN | control::CMD_BUF_EN | (u64::from(input.u8() & 1) * control::EVENT_LOG_EN));
                rig.w64(0, mmio::CMD_BUF_TAIL, n * 16);
            }
            // A device table entry (its page-table root drawn as an address) and the table base.
            4 => {
                let base = input.addr() & !0xfff;
                let devid = if input.u8() & 1 == 0 { 0x20 } else { input.u16() };
                let mut dte = [0u64; 4];
                dte[0] = (input.addr() & 0x000f_ffff_ffff_f000) | (input.u64() & 0xfff0_0000_0000_0fff);
                dte[1] = input.u64();
                let b: Vec<u8> = dte.iter().flat_map(|q| q.to_le_bytes()).collect();
                rig.ram(base.wrapping_add(u64::from(devid) * 32), &b);
                rig.w64(0, mmio::DEV_TABLE_BASE, base | u64::from(input.u8() & 0x1f));
                rig.w64(0, mmio::CONTROL, control::IOMMU_EN);
            }
            // The event log.
            5 => {
                let base = input.addr() & !0xfff;
                rig.w64(0, mmio::EVENT_LOG_BASE, base | (u64::from(input.u8() % 8 + 8) << 56));
                rig.w64(0, mmio::CONTROL, control::IOMMU_EN | control::EVENT_LOG_EN);
            }
            // The endpoint: a descriptor (its IOVAs drawn as addresses) in a ring, and the doorbell.
            6 => {
                let ring = input.addr() & !0x1f;
                let mut d = [0u8; 32];
                d[0] = input.u8() % 4;
                d[1] = input.u8() & 3;
                d[4..8].copy_from_slice(&(input.u32() % (17 << 20)).to_le_bytes());
                d[8..16].copy_from_slice(&input.addr().to_le_bytes());
                d[16..24].copy_from_slice(&input.addr().to_le_bytes());
                rig.ram(ring, &d);
                rig.bar(true, 0, reg::RING_BASE, ring, 8);
                rig.bar(true, 0, reg::RING_SIZE, u64::from(input.u8() % 14), 4);
                rig.bar(true, 0, reg::CTRL, u64::from(input.u8() & 7), 4);
                rig.bar(true, 0, reg::TAIL, u64::from(input.u16() % 4097), 4);
            }
            // Raw register accesses, any value: BAR0/BAR2 of the IOMMU, BAR0 of the endpoint.
            7 => {
                let (ep, region) = match input.u8() % 3 {
                    0 => (false, 0),
                    1 => (false, 2),
                    _ => (true, 0),
                };
                let off = u64::from(input.u16()) % if region == 0 && !ep { mmio::MMIO_SIZE } else { 0x1000 };
                let len = [4usize, 8][usize::from(input.u8() & 1)];
                rig.bar(ep, region, off & !(len as u64 - 1), input.u64(), len);
            }
            8 => {
                let off = (u64::from(input.u16()) % mmio::MMIO_SIZE) & !7;
                rig.read(false, 0, off, 8);
            }
            // Guest RAM written by the guest's CPU.
            9 => {
                let at = u64::from(input.u32()) % RAM;
                let b = input.bytes::<32>();
                rig.ram(at, &b);
            }
            // An RMPUPDATE of a page of RAM to private and back, the usual conversion.
            10 => {
                let spa = (u64::from(input.u32()) % RAM) & !0xfff;
                let mut b = [0u8; 64];
                b[..8].copy_from_slice(&spa.to_le_bytes());
                b[8..16].copy_from_slice(&spa.to_le_bytes());
                b[16] = input.u8() & 1;
                b[20..24].copy_from_slice(&u32::from(input.u8() % 4).to_le_bytes());
                let buf = RAM - 64;
                rig.ram(buf, &b);
                rig.bar(false, 2, bar2::CMDBUF_LO, buf, 4);
                rig.bar(false, 2, bar2::CMDBUF_HI, 0, 4);
                rig.bar(false, 2, bar2::CMDRESP, 1 << 16, 4);
            }
            // Function-level reset of one function.
            _ => {
                let f: &mut dyn ServerBackend = if input.u8() & 1 == 0 { &mut rig.iommu } else { &mut rig.ep };
                let _ = f.reset();
            }
        }
    }
    check_invariants(&secure, ram);
}

/// What must hold whatever the guest did: SNP on with a mirror means the mirror window holds the
/// whole RMP inside guest RAM.
pub fn check_invariants(secure: &Mutex<SecureIommu>, ram: &GuestRam) {
    let s = secure.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rmp) = s.rmp() {
        let mem = ram.snapshot();
        let (base, end) = s.rmp_window();
        let ok = check_rmp_window(base, end, rmp.pages(), |a, n| mem.backed(a, n));
        assert!(ok.is_ok(), "SNP on with RMP window {base:#x}..={end:#x}: {ok:?}");
    }
}
