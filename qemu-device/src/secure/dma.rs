//! The path every endpoint access takes: translate, check, then move bytes.
//!
//! A transfer is split at 4 KiB boundaries (a TLP never crosses one, PCIe 6.x §2.2.7) and every
//! page goes through the secure IOMMU (`TranslateCheck`): the device's front translates, then the
//! RMP (or the TDX module's PAMT) checks (the stages: secure/mod.rs).
//! Nothing moves unless every page of the transfer is allowed and backed by guest RAM; each
//! refused page is logged by the IOMMU, one event per page, as the hardware logs one per request.
//! The choices (maximum length, what a copy whose two sides overlap does) are in
//! docs/device-abi.md, "DMA endpoint".

use crate::secure::{Refusal, SecureIommu};
use iommu_model::mem::{MemError, PhysMem};
use iommu_model::walk::Access;

pub const PAGE: u64 = 0x1000;
/// Largest transfer one request may ask for: 16 MiB, so at most 4096 page translations (and at
/// most 4096 logged events) per request.
pub const MAX_LEN: u64 = 16 << 20;

/// The secure IOMMU as a requester sees it: one page-bounded access in, the system physical
/// address out, or a refusal the implementation has already logged (event log record, event
/// stream) as the IOMMU does at translation time.
pub trait TranslateCheck<M: ?Sized> {
    fn translate_page(&mut self, mem: &mut M, rid: u16, t: bool, iova: u64, access: Access) -> Result<u64, Refusal>;
}

impl<M: PhysMem + ?Sized> TranslateCheck<M> for SecureIommu {
    fn translate_page(&mut self, mem: &mut M, rid: u16, t: bool, iova: u64, access: Access) -> Result<u64, Refusal> {
        let r = self.page(mem, rid, t, iova, access);
        // A logged event may raise the IOMMU's interrupt (EventLogInt).
        self.irq_if_pending();
        r
    }
}

/// The secure IOMMU behind its lock, taken for one page's translation and check at a time, so a
/// device's long transfer never keeps the IOMMU's registers and command buffer waiting longer
/// than one page (a 16 MiB descriptor is 4096 of them). The bytes move after the check without
/// the lock: an RMPUPDATE may land between the check of a page and the move, as a conversion may
/// land while a DMA is in flight on hardware; the mapping was registered live when it was
/// translated, so that RMPUPDATE reports the hazard. This is the caller the secure IOMMU returns
/// the virtio-iommu's faults to: each is posted on the device's event queue once the lock is
/// released.
pub struct PerPage<'a>(pub &'a std::sync::Mutex<SecureIommu>);

impl<M: PhysMem + ?Sized> TranslateCheck<M> for PerPage<'_> {
    fn translate_page(&mut self, mem: &mut M, rid: u16, t: bool, iova: u64, access: Access) -> Result<u64, Refusal> {
        let (r, queue) = {
            let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let r = s.translate_page(mem, rid, t, iova, access);
            let queue = matches!(r, Err(Refusal::Viommu { .. })).then(|| s.fault_queue()).flatten();
            (r, queue)
        };
        if let (Err(Refusal::Viommu { fault, .. }), Some(q)) = (&r, queue) {
            q.post(*fault);
        }
        // A register access is waiting: let it have the lock before the next page (for at most
        // 2 ms, should it never come).
        use std::sync::atomic::Ordering;
        if crate::secure::REGISTER_WAITERS.load(Ordering::SeqCst) > 0 {
            let since = std::time::Instant::now();
            while crate::secure::REGISTER_WAITERS.load(Ordering::SeqCst) > 0 && since.elapsed() < std::time::Duration::from_millis(2) {
                std::thread::yield_now();
            }
        }
        r
    }
}

/// Memory the engine moves bytes in: guest RAM, or a `ByteMem` in tests.
pub trait DmaMem: PhysMem {
    /// Whether every byte of `[spa, spa + len)` is memory. The default probes the first and the
    /// last byte, which is enough for one contiguous array.
    fn backed(&self, spa: u64, len: u64) -> bool {
        let mut probe = [0u8; 1];
        len > 0
            && spa
                .checked_add(len.wrapping_sub(1))
                .is_some_and(|last| self.read(spa, &mut probe).is_ok() && self.read(last, &mut probe).is_ok())
    }

    /// Copy `len` bytes from `src` to `dst`, both system physical; all or nothing. The default
    /// goes through a buffer; guest RAM copies region to region.
    fn copy(&mut self, src: u64, dst: u64, len: usize) -> Result<(), MemError> {
        let mut b = vec![0u8; len];
        self.read(src, &mut b)?;
        self.write(dst, &b)
    }
}

impl DmaMem for iommu_model::mem::ByteMem {}

impl DmaMem for crate::vfio::guest_mem::GuestMem {
    fn backed(&self, spa: u64, len: u64) -> bool {
        // Regions may be adjacent or have holes between them: vm-memory walks them.
        crate::vfio::guest_mem::GuestMem::backed(self, spa, len)
    }

    fn copy(&mut self, src: u64, dst: u64, len: usize) -> Result<(), MemError> {
        // A run may span two guest RAM regions: then through a buffer.
        crate::vfio::guest_mem::GuestMem::copy(self, src, dst, len).or_else(|_| {
            let mut b = vec![0u8; len];
            self.read(src, &mut b)?;
            self.write(dst, &b)
        })
    }
}

/// One request: who asks, with which T bit, for what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub rid: u16,
    pub t: bool,
    pub iova: u64,
    pub len: u64,
    pub access: Access,
}

/// Why a transfer moved nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// Zero, longer than `MAX_LEN`, or wrapping past the top of the address space; nothing was
    /// translated.
    Length,
    /// `pages` pages were refused; the first at `iova`, for `refusal`. Each was logged.
    Refused { iova: u64, refusal: Refusal, pages: u32 },
    /// Every page was allowed, but the one at `iova` translates to `spa` where there is no guest
    /// RAM (a completion with Unsupported Request status in hardware).
    NoMemory { iova: u64, spa: u64 },
}

/// System physical runs of a transfer, in order: (SPA, length), adjacent pages merged.
pub type Runs = Vec<(u64, u64)>;

/// Translate and check every page of `req`; the runs to move, or why nothing may move. Every
/// page is tried even after a refusal, so each refused page is logged once. Memory behind the
/// allowed pages is checked once per run, after the translations.
pub fn plan<M: DmaMem + ?Sized, S: TranslateCheck<M> + ?Sized>(iommu: &mut S, mem: &mut M, req: Request) -> Result<Runs, DmaError> {
    let end = req.iova.checked_add(req.len).ok_or(DmaError::Length)?;
    if req.len == 0 || req.len > MAX_LEN {
        return Err(DmaError::Length);
    }
    // (IOVA, SPA, length) of each run of adjacent pages.
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    let mut refused: Option<DmaError> = None;
    let mut at = req.iova;
    while at < end {
        let page_end = (at | (PAGE - 1)).saturating_add(1).min(end);
        // at < page_end <= end: no difference or sum here wraps.
        let n = page_end.wrapping_sub(at);
        match iommu.translate_page(mem, req.rid, req.t, at, req.access) {
            Err(refusal) => match &mut refused {
                Some(DmaError::Refused { pages, .. }) => *pages = pages.saturating_add(1),
                _ => refused = Some(DmaError::Refused { iova: at, refusal, pages: 1 }),
            },
            Ok(spa) => match runs.last_mut() {
                Some((_, s, l)) if s.checked_add(*l) == Some(spa) => *l = l.wrapping_add(n),
                _ => runs.push((at, spa, n)),
            },
        }
        at = page_end;
    }
    if let Some(e) = refused {
        return Err(e);
    }
    for &(iova, spa, len) in &runs {
        if !mem.backed(spa, len) {
            // Name the first page without memory.
            // Runs come from translations of a transfer that does not wrap: spa + len and
            // iova + len fit.
            let mut off = 0u64;
            while off < len {
                let at = spa.wrapping_add(off);
                let n = PAGE.wrapping_sub(at & (PAGE - 1)).min(len.wrapping_sub(off));
                if !mem.backed(at, n) {
                    return Err(DmaError::NoMemory { iova: iova.wrapping_add(off), spa: at });
                }
                off = off.wrapping_add(n);
            }
            return Err(DmaError::NoMemory { iova, spa });
        }
    }
    Ok(runs.into_iter().map(|(_, spa, len)| (spa, len)).collect())
}

/// DMA read of `buf.len()` bytes at `iova`.
pub fn read<M: DmaMem + ?Sized, S: TranslateCheck<M> + ?Sized>(
    iommu: &mut S,
    mem: &mut M,
    rid: u16,
    t: bool,
    iova: u64,
    buf: &mut [u8],
) -> Result<(), DmaError> {
    let runs = plan(iommu, mem, Request { rid, t, iova, len: buf.len() as u64, access: Access::Read })?;
    // The runs' lengths add up to buf.len() (plan).
    let total = buf.len();
    let mut rest = &mut buf[..];
    for (spa, n) in runs {
        let done = total.wrapping_sub(rest.len()) as u64;
        let (chunk, tail) = rest.split_at_mut((n as usize).min(rest.len()));
        mem.read(spa, chunk).map_err(|_| DmaError::NoMemory { iova: iova.wrapping_add(done), spa })?;
        rest = tail;
    }
    Ok(())
}

/// DMA write of `data` at `iova`.
pub fn write<M: DmaMem + ?Sized, S: TranslateCheck<M> + ?Sized>(
    iommu: &mut S,
    mem: &mut M,
    rid: u16,
    t: bool,
    iova: u64,
    data: &[u8],
) -> Result<(), DmaError> {
    let runs = plan(iommu, mem, Request { rid, t, iova, len: data.len() as u64, access: Access::Write })?;
    let mut rest = data;
    for (spa, n) in runs {
        let done = data.len().wrapping_sub(rest.len()) as u64;
        let (chunk, tail) = rest.split_at((n as usize).min(rest.len()));
        mem.write(spa, chunk).map_err(|_| DmaError::NoMemory { iova: iova.wrapping_add(done), spa })?;
        rest = tail;
    }
    Ok(())
}

/// Both sides of a copy, planned: what `move_copy` moves.
pub struct CopyPlan {
    pub from: Runs,
    pub to: Runs,
    pub len: u64,
}

impl CopyPlan {
    /// Whether any source byte is also a destination byte (in system physical memory).
    pub fn overlaps(&self) -> bool {
        self.from.iter().any(|&(a, n)| self.to.iter().any(|&(b, m)| a < b.saturating_add(m) && b < a.saturating_add(n)))
    }
}

/// Plan a copy: the source is read first, so a refused source ends it before any destination
/// page is asked for (a device does not issue writes for data it could not read).
pub fn plan_copy<M: DmaMem + ?Sized, S: TranslateCheck<M> + ?Sized>(
    iommu: &mut S,
    mem: &mut M,
    rid: u16,
    t: bool,
    src: u64,
    dst: u64,
    len: u64,
) -> Result<CopyPlan, DmaError> {
    let from = plan(iommu, mem, Request { rid, t, iova: src, len, access: Access::Read })?;
    let to = plan(iommu, mem, Request { rid, t, iova: dst, len, access: Access::Write })?;
    Ok(CopyPlan { from, to, len })
}

/// Move a planned copy. Overlapping sides copy as memmove does (the source as it was before the
/// copy), through a buffer; otherwise run to run without one.
pub fn move_copy<M: DmaMem + ?Sized>(mem: &mut M, p: &CopyPlan) -> Result<(), MemError> {
    if p.overlaps() {
        let mut b = vec![0u8; p.len as usize];
        let mut rest = &mut b[..];
        for &(spa, n) in &p.from {
            let (chunk, tail) = rest.split_at_mut((n as usize).min(rest.len()));
            mem.read(spa, chunk)?;
            rest = tail;
        }
        let mut rest = &b[..];
        for &(spa, n) in &p.to {
            let (chunk, tail) = rest.split_at((n as usize).min(rest.len()));
            mem.write(spa, chunk)?;
            rest = tail;
        }
        return Ok(());
    }
    // Both sides' runs add up to p.len, and each run's SPA + length fits (plan): the offsets
    // stay inside their runs.
    let (mut from, mut to) = (p.from.iter().copied(), p.to.iter().copied());
    let (mut a, mut b) = (from.next(), to.next());
    while let (Some((sa, na)), Some((sb, nb))) = (a, b) {
        let n = na.min(nb);
        mem.copy(sa, sb, n as usize)?;
        a = if n == na { from.next() } else { Some((sa.wrapping_add(n), na.wrapping_sub(n))) };
        b = if n == nb { to.next() } else { Some((sb.wrapping_add(n), nb.wrapping_sub(n))) };
    }
    Ok(())
}

#[cfg(test)]
pub mod test_iommu {
    //! A secure IOMMU for tests: a page table in a map, refusals chosen per page, and a record of
    //! every page asked for (the events an IOMMU would log).
    use super::*;
    use iommu_model::amdvi::event::Event;
    use rmp_model::dma_check::DmaRefusal;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct MapIommu {
        /// IOVA page → (SPA page, writable).
        pub pages: BTreeMap<u64, (u64, bool)>,
        /// Pages the RMP refuses, with the reason.
        pub rmp: BTreeMap<u64, DmaRefusal>,
        /// T=1 requests are refused unless set (no TDI in RUN).
        pub tdi_run: bool,
        /// Every refused page: (requester, IOVA, write).
        pub logged: Vec<(u16, u64, bool)>,
        pub asked: usize,
    }

    impl MapIommu {
        pub fn map(&mut self, iova: u64, spa: u64, len: u64, writable: bool) {
            for off in (0..len).step_by(PAGE as usize) {
                self.pages.insert((iova + off) >> 12, ((spa + off) >> 12, writable));
            }
        }
    }

    impl<M: ?Sized> TranslateCheck<M> for MapIommu {
        fn translate_page(&mut self, _mem: &mut M, rid: u16, t: bool, iova: u64, access: Access) -> Result<u64, Refusal> {
            self.asked += 1;
            let write = access == Access::Write;
            let r = match self.pages.get(&(iova >> 12)) {
                None => Err(Refusal::Translation(Event::io_page_fault(rid, 0, 0, iova))),
                Some(&(_, false)) if write => Err(Refusal::Translation(Event::io_page_fault(rid, 0, 0, iova))),
                Some(_) if t && !self.tdi_run => Err(Refusal::Rmp(DmaRefusal::TdiNotRun)),
                Some(_) if self.rmp.contains_key(&(iova >> 12)) => Err(Refusal::Rmp(self.rmp[&(iova >> 12)])),
                Some(&(spa_page, _)) => Ok(spa_page << 12 | (iova & (PAGE - 1))),
            };
            if r.is_err() {
                self.logged.push((rid, iova, write));
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_iommu::MapIommu;
    use super::*;
    use iommu_model::mem::ByteMem;
    use rmp_model::dma_check::DmaRefusal;

    const RID: u16 = 0x20;

    fn mem() -> ByteMem {
        let mut m = ByteMem::new(0, 1 << 20);
        for (i, b) in m.bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        m
    }

    #[test]
    fn a_transfer_is_split_at_pages_and_adjacent_pages_merge() {
        let mut io = MapIommu::default();
        io.map(0x10_0000, 0x4_0000, 0x2000, true);
        io.map(0x10_2000, 0x8_0000, 0x1000, true);
        let mut m = mem();
        let runs = plan(&mut io, &mut m, Request { rid: RID, t: false, iova: 0x10_0800, len: 0x2000, access: Access::Read }).unwrap();
        assert_eq!(runs, [(0x4_0800, 0x1800), (0x8_0000, 0x800)]);
        assert_eq!(io.asked, 3, "one translation per page touched");
        let mut buf = vec![0u8; 0x2000];
        read(&mut io, &mut m, RID, false, 0x10_0800, &mut buf).unwrap();
        assert_eq!(buf[..0x1800], m.bytes[0x4_0800..0x4_2000]);
        assert_eq!(buf[0x1800..], m.bytes[0x8_0000..0x8_0800]);
    }

    #[test]
    fn every_refused_page_is_logged_once_and_nothing_moves() {
        let mut io = MapIommu::default();
        io.map(0x10_0000, 0x4_0000, 0x4000, true);
        io.pages.remove(&0x101);
        io.pages.remove(&0x103);
        let mut m = mem();
        let before = m.bytes.clone();
        let e = write(&mut io, &mut m, RID, false, 0x10_0000, &[0xaa; 0x4000]).unwrap_err();
        assert!(matches!(e, DmaError::Refused { iova: 0x10_1000, refusal: Refusal::Translation(_), pages: 2 }), "{e:?}");
        assert_eq!(io.logged, [(RID, 0x10_1000, true), (RID, 0x10_3000, true)]);
        assert!(m.bytes == before, "a refused transfer moved bytes");
    }

    #[test]
    fn lengths_are_bounded_before_anything_is_translated() {
        let mut io = MapIommu::default();
        let mut m = mem();
        for (iova, len) in [(0, 0), (0, MAX_LEN + 1), (u64::MAX - 0xfff, 0x2000), (u64::MAX, u64::MAX)] {
            let r = plan(&mut io, &mut m, Request { rid: RID, t: false, iova, len, access: Access::Read });
            assert_eq!(r, Err(DmaError::Length), "{iova:#x}+{len:#x}");
        }
        assert_eq!(io.asked, 0);
        // The largest allowed request is translated page by page: 4096 pages, all logged.
        let r = plan(&mut io, &mut m, Request { rid: RID, t: false, iova: 0, len: MAX_LEN, access: Access::Read });
        assert!(matches!(r, Err(DmaError::Refused { pages: 4096, .. })));
        assert_eq!(io.logged.len(), 4096);
    }

    #[test]
    fn an_allowed_page_outside_ram_moves_nothing() {
        let mut io = MapIommu::default();
        // One SPA run over the end of the 1 MiB of memory: the second page is not there.
        io.map(0x10_0000, 0xf_f000, 0x2000, true);
        let mut m = mem();
        let before = m.bytes.clone();
        let e = write(&mut io, &mut m, RID, false, 0x10_0000, &[1; 0x2000]).unwrap_err();
        assert_eq!(e, DmaError::NoMemory { iova: 0x10_1000, spa: 0x10_0000 });
        assert!(m.bytes == before);
        assert!(io.logged.is_empty(), "no IOMMU event: the IOMMU allowed it");
    }

    #[test]
    fn t1_and_rmp_refusals_carry_their_reason() {
        let mut io = MapIommu::default();
        io.map(0x10_0000, 0x4_0000, 0x2000, true);
        io.rmp.insert(0x101, DmaRefusal::AssignedPage);
        let mut m = mem();
        let e = write(&mut io, &mut m, RID, true, 0x10_0000, &[0; 8]).unwrap_err();
        assert!(matches!(e, DmaError::Refused { refusal: Refusal::Rmp(DmaRefusal::TdiNotRun), .. }));
        let e = write(&mut io, &mut m, RID, false, 0x10_0ff8, &[0; 16]).unwrap_err();
        assert!(matches!(e, DmaError::Refused { iova: 0x10_1000, refusal: Refusal::Rmp(DmaRefusal::AssignedPage), pages: 1 }));
        assert_eq!(m.bytes[0x4_0ff8], (0x4_0ff8 % 251) as u8, "the allowed first page did not move either");
    }

    #[test]
    fn a_refused_source_asks_nothing_of_the_destination() {
        let mut io = MapIommu::default();
        io.map(0x20_0000, 0x4_0000, 0x1000, true);
        let mut m = mem();
        assert!(plan_copy(&mut io, &mut m, RID, false, 0x10_0000, 0x20_0000, 0x1000).is_err());
        assert_eq!(io.asked, 1);
    }

    #[test]
    fn overlapping_copies_move_as_memmove() {
        let mut io = MapIommu::default();
        io.map(0x10_0000, 0x4_0000, 0x3000, true);
        let mut m = mem();
        let want: Vec<u8> = m.bytes[0x4_0000..0x4_2000].to_vec();
        let p = plan_copy(&mut io, &mut m, RID, false, 0x10_0000, 0x10_0010, 0x2000).unwrap();
        assert!(p.overlaps());
        move_copy(&mut m, &p).unwrap();
        assert_eq!(m.bytes[0x4_0010..0x4_2010], want[..]);
        let p = plan_copy(&mut io, &mut m, RID, false, 0x10_2000, 0x10_0000, 0x1000).unwrap();
        assert!(!p.overlaps());
    }

    #[test]
    fn guest_ram_runs_over_adjacent_regions_move_and_over_holes_do_not() {
        use crate::vfio::guest_mem::GuestRam;
        use std::io::Write;
        let region = |size: usize| {
            let path = std::env::temp_dir().join(format!("tiommu-dma-{}-{size}-{:?}", std::process::id(), std::thread::current().id()));
            let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            f.write_all(&vec![0x5a; size]).unwrap();
            f
        };
        // [0, 64 KiB) and [64 KiB, 128 KiB) adjacent; a hole; [192 KiB, 256 KiB).
        let ram = GuestRam::default();
        ram.map(0, 0x1_0000, region(0x1_0000), 0).unwrap();
        ram.map(0x1_0000, 0x1_0000, region(0x1_0000), 0).unwrap();
        ram.map(0x3_0000, 0x1_0000, region(0x1_0000), 0).unwrap();
        let mut m = ram.snapshot();
        let mut io = MapIommu::default();
        io.map(0x100_0000, 0, 0x4_0000, true); // identity-like over all of it, hole included
        write(&mut io, &mut m, RID, false, 0x100_f000, &[1; 0x2000]).unwrap();
        assert_eq!((m.read_u64(0xf000).unwrap(), m.read_u64(0x1_0ff8).unwrap()), (0x0101_0101_0101_0101, 0x0101_0101_0101_0101));
        let p = plan_copy(&mut io, &mut m, RID, false, 0x100_f000, 0x103_0000, 0x2000).unwrap();
        move_copy(&mut m, &p).unwrap();
        assert_eq!(m.read_u64(0x3_1ff8).unwrap(), 0x0101_0101_0101_0101, "copied across the region boundary");
        let e = write(&mut io, &mut m, RID, false, 0x101_f000, &[2; 0x2000]).unwrap_err();
        assert_eq!(e, DmaError::NoMemory { iova: 0x102_0000, spa: 0x2_0000 });
        assert_eq!(m.read_u64(0x1_f000).unwrap(), 0x5a5a_5a5a_5a5a_5a5a, "nothing written before the hole");
    }
}
