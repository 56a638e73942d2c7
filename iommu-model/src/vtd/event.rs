//! The unit's interrupt messages: the fault event (FECTL/FEDATA/FEADDR/FEUADDR) and the
//! invalidation completion event (IECTL/IEDATA/IEADDR/IEUADDR) are MSIs the unit sends itself
//! with the address and data software programmed (VT-d spec §5.1.6, §7.4; Linux dmar.c
//! dmar_msi_write). Masked (IM), the event stays pending (IP) until software unmasks it or
//! services the condition; unmasking with IP set sends it (QEMU vtd_handle_fectl_write).

use super::regs::ectl;

/// An interrupt message: a 4-byte write of `data` at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    pub addr: u64,
    pub data: u32,
}

/// One event's control, data, address and upper address registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRegs {
    pub ctl: u32,
    pub data: u32,
    pub addr: u32,
    pub uaddr: u32,
}

impl Default for EventRegs {
    /// IM is set at reset: nothing is sent before software has programmed the message.
    fn default() -> Self {
        EventRegs { ctl: ectl::IM, data: 0, addr: 0, uaddr: 0 }
    }
}

impl EventRegs {
    pub fn msi(&self) -> Msi {
        Msi { addr: u64::from(self.uaddr) << 32 | u64::from(self.addr & !3), data: self.data }
    }

    /// An event condition arose: the message now, or IP if masked.
    pub fn signal(&mut self) -> Option<Msi> {
        if self.ctl & ectl::IM != 0 {
            self.ctl |= ectl::IP;
            None
        } else {
            Some(self.msi())
        }
    }

    /// Software writes the control register: only IM is writable; clearing it with IP set
    /// sends the pending message.
    pub fn write_ctl(&mut self, val: u32) -> Option<Msi> {
        self.ctl = (self.ctl & ectl::IP) | (val & ectl::IM);
        if self.ctl & (ectl::IM | ectl::IP) == ectl::IP {
            self.ctl &= !ectl::IP;
            return Some(self.msi());
        }
        None
    }

    /// Software serviced every condition of the event: nothing stays pending.
    pub fn serviced(&mut self) {
        self.ctl &= !ectl::IP;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_events_wait_for_the_unmask() {
        let mut e = EventRegs { addr: 0xfee0_0000, data: 0x41, ..Default::default() };
        assert_eq!(e.signal(), None, "masked at reset");
        assert_eq!(e.ctl, ectl::IM | ectl::IP);
        assert_eq!(e.write_ctl(ectl::IP), Some(Msi { addr: 0xfee0_0000, data: 0x41 }), "unmasked: sent; IP is not writable");
        assert_eq!(e.ctl, 0);
        assert_eq!(e.signal(), Some(e.msi()), "unmasked: sent at once, nothing pending");
        assert_eq!(e.ctl, 0);
        e.write_ctl(ectl::IM);
        e.signal();
        e.serviced();
        assert_eq!(e.write_ctl(0), None, "serviced while masked: nothing to send");
    }
}
