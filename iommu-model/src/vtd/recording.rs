//! Primary fault logging (VT-d spec §7.2.1): the fault recording registers at CAP.FRO, used in
//! turn from an internal index; a record holds until software clears its F bit. FSTS.PPF says
//! some record is pending and FRI where the pending ones started; when the next register to use
//! still holds a pending record the fault is dropped and PFO set, and while PFO is set nothing
//! is recorded (QEMU vtd_report_frcd_fault, which Linux's dmar_fault reads back in the same order:
//! from FRI on, until a register without F).

use super::fault::FaultRecord;
use super::regs::{fsts, FRCD_F};

/// What became of a fault handed to the recorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Written; `first` when no record was pending before (PPF went from 0 to 1: a fault event).
    Yes { index: usize, first: bool },
    /// The register to use was still pending: dropped, PFO set now. No fault event: PPF was
    /// already pending.
    Overflow,
    /// PFO was already set: dropped.
    Dropped,
}

#[derive(Clone, Debug)]
pub struct Recording {
    /// The registers' contents as last written by hardware (F kept apart).
    records: Vec<Option<FaultRecord>>,
    /// F of each register.
    pending: Vec<bool>,
    next: usize,
    pfo: bool,
    fri: usize,
}

impl Recording {
    /// `count` registers (CAP.NFR + 1), 1..=256.
    pub fn new(count: usize) -> Self {
        let count = count.clamp(1, 256);
        Recording { records: vec![None; count], pending: vec![false; count], next: 0, pfo: false, fri: 0 }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn ppf(&self) -> bool {
        self.pending.iter().any(|&p| p)
    }

    /// FSTS's PFO, PPF and FRI.
    pub fn fsts(&self) -> u32 {
        let mut v = (self.fri as u32) << fsts::FRI_SHIFT;
        if self.pfo {
            v |= fsts::PFO;
        }
        if self.ppf() {
            v |= fsts::PPF;
        }
        v
    }

    pub fn record(&mut self, rec: FaultRecord) -> Recorded {
        if self.pfo {
            return Recorded::Dropped;
        }
        let was_pending = self.ppf();
        let i = self.next;
        if self.pending[i] {
            self.pfo = true;
            return Recorded::Overflow;
        }
        self.records[i] = Some(rec);
        self.pending[i] = true;
        self.next = i.wrapping_add(1).checked_rem(self.records.len()).unwrap_or(0);
        if !was_pending {
            self.fri = i;
        }
        Recorded::Yes { index: i, first: !was_pending }
    }

    /// Register `i`'s 128 bits as (low, high) quadwords; F only while pending.
    pub fn read(&self, i: usize) -> (u64, u64) {
        let Some(Some(rec)) = self.records.get(i) else { return (0, 0) };
        let b = rec.to_bytes();
        let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let hi = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
        (lo, if self.pending[i] { hi } else { hi & !FRCD_F })
    }

    /// Software writes the upper quadword of register `i`: F is write-1-to-clear, the rest is
    /// read-only.
    pub fn write_hi(&mut self, i: usize, val: u64) {
        if val & FRCD_F != 0 {
            if let Some(p) = self.pending.get_mut(i) {
                *p = false;
            }
        }
    }

    /// FSTS write: PFO is write-1-to-clear.
    pub fn clear_pfo(&mut self) {
        self.pfo = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::FaultReason;
    use crate::walk::Access;

    fn rec(iova: u64) -> FaultRecord {
        FaultRecord::new(0x20, iova, Access::Write, FaultReason::WriteDenied)
    }

    #[test]
    fn records_go_round_and_overflow_stops_them() {
        let mut r = Recording::new(2);
        assert_eq!(r.record(rec(0x1000)), Recorded::Yes { index: 0, first: true });
        assert_eq!(r.record(rec(0x2000)), Recorded::Yes { index: 1, first: false });
        assert_eq!(r.fsts(), fsts::PPF, "FRI 0");
        // Both pending: the next one overflows, and while PFO is set even a free slot stays unused.
        assert_eq!(r.record(rec(0x3000)), Recorded::Overflow);
        r.write_hi(0, FRCD_F);
        assert_eq!(r.record(rec(0x4000)), Recorded::Dropped);
        assert_eq!(r.fsts(), fsts::PFO | fsts::PPF);
        r.clear_pfo();
        assert_eq!(r.record(rec(0x5000)), Recorded::Yes { index: 0, first: false });
        // Register 0 now holds 0x5000 with F; register 1 still 0x2000.
        assert_eq!(r.read(0).0, 0x5000);
        assert_eq!(r.read(1).0, 0x2000);
        r.write_hi(0, FRCD_F);
        r.write_hi(1, 0);
        assert!(r.ppf(), "writing 0 to F leaves it");
        r.write_hi(1, FRCD_F);
        assert_eq!(r.fsts() & (fsts::PPF | fsts::PFO), 0);
        assert_eq!(r.read(1).1 & FRCD_F, 0, "F reads 0 once cleared; the rest stays");
        assert_eq!(r.read(1).0, 0x2000);
        // The next fault starts a new pending run where the index has got to: FRI 1.
        assert_eq!(r.record(rec(0x6000)), Recorded::Yes { index: 1, first: true });
        assert_eq!(r.fsts(), fsts::PPF | 1 << fsts::FRI_SHIFT);
    }
}
