//! A PCIe Data Object Exchange mailbox (PCIe 6.x §6.30, registers §7.9.24; offsets and bits as
//! Linux include/uapi/linux/pci_regs.h PCI_DOE_* names them and drivers/pci/doe.c drives them).
//! Objects are exchanged a dword at a time: the requester writes one into the Write Data Mailbox
//! and sets GO; the response is read from the Read Data Mailbox, each write to it acknowledging
//! one dword. Requests are answered within the GO write, so Busy never shows unless a fault is
//! injected (docs/fault-injection.md), and the mailbox has no interrupt (Linux polls).

pub use abi::doe::reg::{CAP, CTRL, READ, STATUS, WRITE};
use abi::doe::{Ctrl, Status};
pub use abi::doe::{CAP_ID, CAP_VERSION, MAX_DWORDS, TYPE_DISCOVERY, VENDOR_PCI_SIG};

// The registers are dwords: the bits as the numbers the mailbox reads and writes.
pub const CTRL_ABORT: u32 = Ctrl::ABORT.bits();
pub const CTRL_INT_EN: u32 = Ctrl::INT_EN.bits();
pub const CTRL_GO: u32 = Ctrl::GO.bits();
/// Set only by an injected fault (see above).
pub const STATUS_BUSY: u32 = Status::BUSY.bits();
pub const STATUS_INT: u32 = Status::INT.bits();
pub const STATUS_ERROR: u32 = Status::ERROR.bits();
pub const STATUS_DATA_OBJECT_READY: u32 = Status::DATA_OBJECT_READY.bits();

/// Answers the objects of one protocol.
pub trait DoeProtocol: Send {
    fn vendor(&self) -> u16;
    fn object_type(&self) -> u8;
    /// The payload of a request (after the two header dwords) to the payload of the response.
    fn respond(&mut self, payload: &[u8]) -> Vec<u8>;
}

pub struct Doe {
    protocols: Vec<Box<dyn DoeProtocol>>,
    ctrl: u32,
    error: bool,
    request: Vec<u32>,
    response: Vec<u32>,
    read_at: usize,
    /// Injected: Status reads that still show Busy; meanwhile the mailbox takes no object.
    busy_reads: u32,
    /// Injected: objects are taken but never answered until an Abort.
    hung: bool,
}

/// A fault injected into the mailbox (docs/fault-injection.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoeFault {
    /// DOE Busy (§6.30.2: "temporarily unable to receive a new data object") for the next
    /// `reads` reads of Status; writes to the Write Data Mailbox and GO are dropped meanwhile.
    Busy { reads: u32 },
    /// DOE Error (an internal error): what was written or not yet read is dropped, and nothing
    /// more is exchanged until an Abort clears it.
    Error,
    /// The mailbox stops answering: the next objects never get Data Object Ready, until an
    /// Abort, which the requester must issue after its timeout (Linux: 1 s, then pci_doe_abort).
    NeedsAbort,
}

impl Doe {
    pub fn new(protocols: Vec<Box<dyn DoeProtocol>>) -> Doe {
        Doe { protocols, ctrl: 0, error: false, request: Vec::new(), response: Vec::new(), read_at: 0, busy_reads: 0, hung: false }
    }

    pub fn inject(&mut self, f: DoeFault) {
        match f {
            DoeFault::Busy { reads } => self.busy_reads = reads,
            DoeFault::Error => {
                self.abort();
                self.error = true;
            }
            DoeFault::NeedsAbort => self.hung = true,
        }
    }

    /// End an injected Busy or hang (the tool's clear); Error stays until an Abort, as a real one.
    pub fn clear_injected(&mut self) {
        self.busy_reads = 0;
        self.hung = false;
    }

    /// DOE Abort (§6.30.2): drop what was written and what was not read, clear Error.
    fn abort(&mut self) {
        self.error = false;
        self.hung = false;
        self.request.clear();
        self.response.clear();
        self.read_at = 0;
    }

    fn ready(&self) -> bool {
        self.read_at < self.response.len()
    }

    pub fn read(&mut self, reg: u16) -> u32 {
        let busy = if reg == STATUS && self.busy_reads > 0 {
            self.busy_reads = self.busy_reads.saturating_sub(1);
            STATUS_BUSY
        } else {
            0
        };
        match reg {
            // Interrupt Support 0.
            CAP => 0,
            // Abort and GO read as zero.
            CTRL => self.ctrl & CTRL_INT_EN,
            STATUS => busy | (if self.error { STATUS_ERROR } else { 0 }) | (if self.ready() { STATUS_DATA_OBJECT_READY } else { 0 }),
            // With no object ready the Read Data Mailbox reads zero.
            READ if !self.error => self.response.get(self.read_at).copied().unwrap_or(0),
            _ => 0,
        }
    }

    pub fn write(&mut self, reg: u16, v: u32) {
        match reg {
            CTRL => {
                if v & CTRL_ABORT != 0 {
                    // Abort wins over a GO in the same write.
                    self.abort();
                    self.ctrl = v & CTRL_INT_EN;
                    return;
                }
                self.ctrl = v & CTRL_INT_EN;
                if v & CTRL_GO != 0 && !self.error && self.busy_reads == 0 {
                    if self.hung {
                        self.request.clear();
                    } else {
                        self.go();
                    }
                }
            }
            WRITE if !self.error && self.busy_reads == 0 => {
                if self.request.len() >= MAX_DWORDS {
                    self.error = true;
                    self.request.clear();
                } else {
                    self.request.push(v);
                }
            }
            READ if self.ready() => self.read_at = self.read_at.saturating_add(1),
            _ => {}
        }
    }

    /// Run the object written so far. One whose length field does not match the dwords written
    /// is silently discarded (§6.30.1), as is a discovery request without its index dword; one
    /// for a protocol the mailbox does not answer sets DOE Error.
    fn go(&mut self) {
        let req = std::mem::take(&mut self.request);
        self.response.clear();
        self.read_at = 0;
        let (Some(&h0), Some(&h1)) = (req.first(), req.get(1)) else { return };
        // Length 0 means 2^18 dwords (§6.30.1, Table 6-29).
        let len = match h1 & 0x3_ffff {
            0 => 1 << 18,
            n => n as usize,
        };
        if len != req.len() {
            return;
        }
        let (vendor, ty) = (h0 as u16, (h0 >> 16) as u8);
        let body = if vendor == VENDOR_PCI_SIG && ty == TYPE_DISCOVERY {
            let Some(&index) = req.get(2) else { return };
            self.discovery(index).to_le_bytes().to_vec()
        } else if let Some(p) = self.protocols.iter_mut().find(|p| p.vendor() == vendor && p.object_type() == ty) {
            let payload: Vec<u8> = req[2..].iter().flat_map(|d| d.to_le_bytes()).collect();
            p.respond(&payload)
        } else {
            self.error = true;
            return;
        };
        let total = body.len().div_ceil(4).saturating_add(2);
        if total > MAX_DWORDS {
            self.error = true;
            return;
        }
        let mut resp = Vec::with_capacity(total);
        // Header: the request's vendor and type (reserved bits 31:24 zero), then the length.
        resp.push(h0 & 0x00ff_ffff);
        resp.push(total as u32);
        resp.extend(body.chunks(4).map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        }));
        self.response = resp;
    }

    /// DOE Discovery (§6.30.1.1). Request dword: 7:0 index, 15:8 Discovery Version (0 or 2; the
    /// answer is the same). Response dword: 15:0 vendor, 23:16 type, 31:24 next index (0 after
    /// the last). Index 0 is discovery itself. An index past the last answers like the last entry
    /// but with next index 0: the spec leaves it open; this ends any requester's walk.
    fn discovery(&self, request: u32) -> u32 {
        let index = (request & 0xff) as usize;
        let all: Vec<(u16, u8)> =
            std::iter::once((VENDOR_PCI_SIG, TYPE_DISCOVERY)).chain(self.protocols.iter().map(|p| (p.vendor(), p.object_type()))).collect();
        let (vendor, ty) = all.get(index).or(all.last()).copied().unwrap_or((VENDOR_PCI_SIG, TYPE_DISCOVERY));
        let next = index.checked_add(1).filter(|&n| n < all.len()).unwrap_or(0);
        u32::from(vendor) | u32::from(ty) << 16 | (next as u32) << 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl DoeProtocol for Echo {
        fn vendor(&self) -> u16 {
            0x1234
        }
        fn object_type(&self) -> u8 {
            1
        }
        fn respond(&mut self, p: &[u8]) -> Vec<u8> {
            p.iter().rev().copied().collect()
        }
    }

    fn mailbox() -> Doe {
        Doe::new(vec![Box::new(Echo)])
    }

    fn send(d: &mut Doe, obj: &[u32]) {
        for &w in obj {
            d.write(WRITE, w);
        }
        d.write(CTRL, CTRL_GO);
    }

    fn exchange(d: &mut Doe, obj: &[u32]) -> Vec<u32> {
        send(d, obj);
        let mut out = Vec::new();
        while d.read(STATUS) & STATUS_DATA_OBJECT_READY != 0 {
            out.push(d.read(READ));
            d.write(READ, 0);
        }
        out
    }

    /// Linux drivers/pci/doe.c, step by step: abort at mailbox creation and wait for neither
    /// Error nor Busy; per object check Busy and Error, write, GO, poll Data Object Ready, check
    /// the response's vendor and type, read and acknowledge each dword with Data Object Ready
    /// still set before the last acknowledgement, and a final Error check.
    fn linux_exchange(d: &mut Doe, vendor: u16, ty: u8, payload: &[u32]) -> Result<Vec<u32>, &'static str> {
        let s = d.read(STATUS);
        if s & STATUS_BUSY != 0 {
            return Err("busy");
        }
        if s & STATUS_ERROR != 0 {
            return Err("error before send");
        }
        d.write(WRITE, u32::from(vendor) | u32::from(ty) << 16);
        d.write(WRITE, 2 + payload.len() as u32);
        for &p in payload {
            d.write(WRITE, p);
        }
        d.write(CTRL, CTRL_GO);
        let s = d.read(STATUS);
        if s & STATUS_ERROR != 0 {
            return Err("error after GO");
        }
        if s & STATUS_DATA_OBJECT_READY == 0 {
            return Err("timeout");
        }
        let h = d.read(READ);
        if h & 0xffff != u32::from(vendor) || (h >> 16) & 0xff != u32::from(ty) {
            return Err("wrong protocol in response");
        }
        d.write(READ, 0);
        let len = match d.read(READ) & 0x3_ffff {
            0 => 1 << 18,
            n => n as usize,
        };
        d.write(READ, 0);
        if len < 2 {
            return Err("short");
        }
        let mut out = Vec::new();
        for i in 0..len - 2 {
            out.push(d.read(READ));
            if i == len - 3 && d.read(STATUS) & STATUS_DATA_OBJECT_READY == 0 {
                return Err("not ready before the last acknowledgement");
            }
            d.write(READ, 0);
        }
        if d.read(STATUS) & STATUS_ERROR != 0 {
            return Err("final error");
        }
        Ok(out)
    }

    #[test]
    fn discovery_as_linux_runs_it_byte_exact() {
        let mut d = mailbox();
        d.write(CTRL, CTRL_ABORT);
        assert_eq!(d.read(STATUS) & (STATUS_ERROR | STATUS_BUSY), 0, "abort succeeded");
        // pci_doe_cache_features with a version 2 capability: Discovery Version 2 in 15:8.
        let mut index = 0u32;
        let mut found = Vec::new();
        loop {
            let r = linux_exchange(&mut d, VENDOR_PCI_SIG, TYPE_DISCOVERY, &[index | 2 << 8]).unwrap();
            assert_eq!(r.len(), 1, "one response dword");
            found.push((r[0] & 0xffff, (r[0] >> 16) & 0xff));
            index = r[0] >> 24;
            if index == 0 {
                break;
            }
        }
        assert_eq!(found, [(0x0001, 0), (0x1234, 1)]);
        // Byte-exact objects, version 0 request (a capability version 1 requester).
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 0]), [0x0000_0001, 3, 0x0100_0001], "index 0: discovery, next 1");
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 0x0201]), [0x0000_0001, 3, 0x0001_1234], "index 1: 1234:01, last");
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 7]), [0x0000_0001, 3, 0x0001_1234], "past the last: next 0");
        assert_eq!(d.read(STATUS), 0);
        assert_eq!(d.read(READ), 0, "nothing ready reads zero");
    }

    #[test]
    fn a_protocol_object_round_trips_with_padding() {
        let mut d = mailbox();
        assert_eq!(linux_exchange(&mut d, 0x1234, 1, &[0x0403_0201, 0x0000_0005]).unwrap(), [0x0500_0000, 0x0102_0304]);
        assert_eq!(exchange(&mut d, &[0xff01_1234, 3, 0x0403_0201]), [0x0001_1234, 3, 0x0102_0304], "reserved header bits not echoed");
    }

    #[test]
    fn malformed_objects_are_discarded_and_unknown_protocols_set_error() {
        let mut d = mailbox();
        assert!(exchange(&mut d, &[0x0001_1234, 4, 0]).is_empty(), "length says 4, 3 written: discarded");
        assert_eq!(d.read(STATUS), 0, "silently");
        assert!(exchange(&mut d, &[0x0000_0001, 2]).is_empty(), "discovery without its index");
        assert_eq!(d.read(STATUS), 0);
        assert!(exchange(&mut d, &[0x0001_1234]).is_empty(), "half a header");
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 0]).len(), 3, "the mailbox still works");
        assert!(exchange(&mut d, &[0x0005_9999, 2]).is_empty(), "unknown protocol");
        assert_eq!(d.read(STATUS), STATUS_ERROR);
        assert!(exchange(&mut d, &[0x0000_0001, 3, 0]).is_empty(), "Error holds until abort");
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]), Err("error before send"));
        d.write(CTRL, CTRL_ABORT | CTRL_GO);
        assert_eq!(d.read(STATUS), 0, "abort clears Error; GO in the same write is ignored");
        assert_eq!(d.read(CTRL), 0, "Abort and GO read as zero");
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 0])[0], 1);
    }

    #[test]
    fn an_oversize_object_sets_error_and_abort_recovers() {
        let mut d = mailbox();
        d.write(WRITE, 0x0001_1234);
        d.write(WRITE, 0); // 2^18 dwords
        for _ in 0..MAX_DWORDS {
            d.write(WRITE, 0);
        }
        assert_eq!(d.read(STATUS), STATUS_ERROR, "oversize object");
        d.write(CTRL, CTRL_GO);
        assert_eq!(d.read(STATUS), STATUS_ERROR, "GO does nothing while Error is set");
        d.write(CTRL, CTRL_ABORT);
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]).unwrap(), [0x0100_0001]);
    }

    #[test]
    fn abort_drops_a_half_read_response() {
        let mut d = mailbox();
        send(&mut d, &[0x0001_1234, 4, 1, 2]);
        assert_eq!(d.read(READ), 0x0001_1234);
        d.write(READ, 0);
        d.write(CTRL, CTRL_ABORT);
        assert_eq!((d.read(STATUS), d.read(READ)), (0, 0));
        // Acknowledging with nothing ready changes nothing.
        d.write(READ, 0);
        assert_eq!(linux_exchange(&mut d, 0x1234, 1, &[0x0403_0201]).unwrap(), [0x0102_0304]);
    }

    #[test]
    fn injected_busy_error_and_hang_as_linux_meets_them() {
        let mut d = mailbox();
        // Busy: pci_doe_send_req polls Status while Busy, then sends.
        d.inject(DoeFault::Busy { reads: 2 });
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]), Err("busy"));
        d.write(WRITE, 0x0000_0001);
        d.write(CTRL, CTRL_GO);
        assert_eq!((d.read(STATUS), d.read(STATUS)), (STATUS_BUSY, 0), "Busy for two reads; the object written meanwhile was not taken");
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]).unwrap(), [0x0100_0001]);
        // Error: refused before sending until an Abort.
        send(&mut d, &[0x0001_1234, 3, 7]);
        d.inject(DoeFault::Error);
        assert_eq!((d.read(STATUS), d.read(READ)), (STATUS_ERROR, 0), "the unread response is gone");
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]), Err("error before send"));
        d.write(CTRL, CTRL_ABORT);
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]).unwrap(), [0x0100_0001]);
        // Needs abort: no answer (Linux times out after 1 s and aborts), then normal again.
        d.inject(DoeFault::NeedsAbort);
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]), Err("timeout"));
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]), Err("timeout"), "still, until the abort");
        d.write(CTRL, CTRL_ABORT);
        assert_eq!(d.read(STATUS) & (STATUS_ERROR | STATUS_BUSY), 0, "pci_doe_abort succeeds");
        assert_eq!(linux_exchange(&mut d, 0x1234, 1, &[0x0403_0201]).unwrap(), [0x0102_0304]);
        // The tool's clear ends Busy and a hang, not Error.
        d.inject(DoeFault::Busy { reads: 100 });
        d.inject(DoeFault::NeedsAbort);
        d.clear_injected();
        assert_eq!(linux_exchange(&mut d, 1, 0, &[0]).unwrap(), [0x0100_0001]);
    }

    #[test]
    fn interrupt_enable_is_kept_and_nothing_else() {
        let mut d = mailbox();
        assert_eq!(d.read(CAP), 0, "no interrupt support");
        d.write(CTRL, 0x7fff_fffe);
        assert_eq!(d.read(CTRL), CTRL_INT_EN);
        assert_eq!(d.read(STATUS) & STATUS_INT, 0);
    }
}
