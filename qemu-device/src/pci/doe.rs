//! A PCIe Data Object Exchange mailbox (PCIe 6.x §6.30 and §7.9.24; register offsets and bits as
//! Linux include/uapi/linux/pci_regs.h PCI_DOE_* and drivers/pci/doe.c drive them). Objects are
//! exchanged a dword at a time: the requester writes them into the Write Data Mailbox and sets GO;
//! the response is read from the Read Data Mailbox, each write to it advancing one dword.

/// Extended capability id of DOE.
pub const CAP_ID: u32 = 0x002e;
pub const CAP: u16 = 0x04;
pub const CTRL: u16 = 0x08;
pub const STATUS: u16 = 0x0c;
pub const WRITE: u16 = 0x10;
pub const READ: u16 = 0x14;

pub const CTRL_ABORT: u32 = 1 << 0;
pub const CTRL_INT_EN: u32 = 1 << 1;
pub const CTRL_GO: u32 = 1 << 31;
// Busy (bit 0) and Interrupt Status (bit 1) never show: requests complete within the GO write.
pub const STATUS_ERROR: u32 = 1 << 2;
pub const STATUS_DATA_OBJECT_READY: u32 = 1 << 31;

/// The PCI-SIG vendor id of the DOE discovery protocol (type 0).
pub const VENDOR_PCI_SIG: u16 = 0x0001;
pub const TYPE_DISCOVERY: u8 = 0;

/// Largest object accepted, in dwords (requests longer than this set the error bit).
pub const MAX_DWORDS: usize = 1024;

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
}

impl Doe {
    pub fn new(protocols: Vec<Box<dyn DoeProtocol>>) -> Doe {
        Doe { protocols, ctrl: 0, error: false, request: Vec::new(), response: Vec::new(), read_at: 0 }
    }

    fn abort(&mut self) {
        self.error = false;
        self.request.clear();
        self.response.clear();
        self.read_at = 0;
    }

    pub fn read(&self, reg: u16) -> u32 {
        match reg {
            CAP => 0, // no interrupt support: Linux polls
            CTRL => self.ctrl & CTRL_INT_EN,
            STATUS => {
                let mut s = 0;
                if self.error {
                    s |= STATUS_ERROR;
                }
                if self.read_at < self.response.len() {
                    s |= STATUS_DATA_OBJECT_READY;
                }
                s
            }
            READ => self.response.get(self.read_at).copied().unwrap_or(0),
            _ => 0,
        }
    }

    pub fn write(&mut self, reg: u16, v: u32) {
        match reg {
            CTRL => {
                if v & CTRL_ABORT != 0 {
                    self.abort();
                }
                self.ctrl = v & CTRL_INT_EN;
                if v & CTRL_GO != 0 && !self.error {
                    self.go();
                }
            }
            WRITE => {
                if self.request.len() >= MAX_DWORDS {
                    self.error = true;
                } else if !self.error {
                    self.request.push(v);
                }
            }
            READ => {
                if self.read_at < self.response.len() {
                    self.read_at += 1;
                }
            }
            _ => {}
        }
    }

    /// Run the request written so far. A malformed object (length not matching what was written,
    /// unknown protocol) sets the error bit, which only an abort clears.
    fn go(&mut self) {
        let req = std::mem::take(&mut self.request);
        self.response.clear();
        self.read_at = 0;
        let (Some(&h0), Some(&h1)) = (req.first(), req.get(1)) else {
            self.error = true;
            return;
        };
        let len = match h1 & 0x3_ffff {
            0 => 1 << 18,
            n => n as usize,
        };
        if len != req.len() || len < 2 {
            self.error = true;
            return;
        }
        let (vendor, ty) = (h0 as u16, (h0 >> 16) as u8);
        let payload: Vec<u8> = req[2..].iter().flat_map(|d| d.to_le_bytes()).collect();
        let body = if vendor == VENDOR_PCI_SIG && ty == TYPE_DISCOVERY {
            self.discovery(&payload)
        } else if let Some(p) = self.protocols.iter_mut().find(|p| p.vendor() == vendor && p.object_type() == ty) {
            p.respond(&payload)
        } else {
            self.error = true;
            return;
        };
        let mut dwords: Vec<u32> = body.chunks(4).map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        }).collect();
        let total = dwords.len() + 2;
        if total > MAX_DWORDS {
            self.error = true;
            return;
        }
        let mut resp = vec![h0 & 0x00ff_ffff, total as u32];
        resp.append(&mut dwords);
        self.response = resp;
    }

    /// DOE discovery: entry `index` names one protocol and the index of the next (0 after the last).
    fn discovery(&self, payload: &[u8]) -> Vec<u8> {
        let index = payload.first().copied().unwrap_or(0) as usize;
        let all: Vec<(u16, u8)> = std::iter::once((VENDOR_PCI_SIG, TYPE_DISCOVERY))
            .chain(self.protocols.iter().map(|p| (p.vendor(), p.object_type())))
            .collect();
        let (vendor, ty) = all.get(index).copied().unwrap_or((VENDOR_PCI_SIG, TYPE_DISCOVERY));
        let next = if index + 1 < all.len() { index + 1 } else { 0 };
        (u32::from(vendor) | u32::from(ty) << 16 | (next as u32) << 24).to_le_bytes().to_vec()
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

    fn exchange(d: &mut Doe, obj: &[u32]) -> Vec<u32> {
        for &w in obj {
            d.write(WRITE, w);
        }
        d.write(CTRL, CTRL_GO);
        let mut out = Vec::new();
        while d.read(STATUS) & STATUS_DATA_OBJECT_READY != 0 {
            out.push(d.read(READ));
            d.write(READ, 0);
        }
        out
    }

    #[test]
    fn discovery_lists_every_protocol_byte_exact() {
        let mut d = Doe::new(vec![Box::new(Echo)]);
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 0]), [0x0000_0001, 3, 0x0100_0001], "index 0: discovery, next 1");
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 1]), [0x0000_0001, 3, 0x0001_1234], "index 1: 1234:01, last");
        assert_eq!(d.read(STATUS), 0);
    }

    #[test]
    fn protocol_errors_and_abort() {
        let mut d = Doe::new(vec![Box::new(Echo)]);
        assert_eq!(exchange(&mut d, &[0x0001_1234, 3, 0x0403_0201]), [0x0001_1234, 3, 0x0102_0304]);
        assert!(exchange(&mut d, &[0x0001_1234, 4, 0]).is_empty(), "length says 4, 3 written");
        assert_eq!(d.read(STATUS) & STATUS_ERROR, STATUS_ERROR);
        assert!(exchange(&mut d, &[0x0000_0001, 3, 0]).is_empty(), "error persists until abort");
        d.write(CTRL, CTRL_ABORT);
        assert_eq!(d.read(STATUS), 0);
        assert!(exchange(&mut d, &[0x0005_9999, 2]).is_empty(), "unknown protocol");
        d.write(CTRL, CTRL_ABORT);
        for _ in 0..MAX_DWORDS + 1 {
            d.write(WRITE, 0);
        }
        assert_eq!(d.read(STATUS) & STATUS_ERROR, STATUS_ERROR, "oversize object");
        d.write(CTRL, CTRL_ABORT);
        assert_eq!(exchange(&mut d, &[0x0000_0001, 3, 0])[0], 1);
    }
}
