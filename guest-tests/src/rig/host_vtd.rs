//! The host's side of the TDX Connect personality: the VT-d unit in BAR0 driven as a host
//! driver does, with its own (untrusted) tables for the endpoint's T=0 DMA.

use super::{Rig, RING_ENTRIES, RING_IOVA};
use crate::report::{poll, R};
use crate::sys::Bar;
use abi::endpoint::Ctrl;
use iommu_model::fmt::vtd_ss;
use iommu_model::vtd::context::ContextEntry;
use iommu_model::vtd::regs::{self, gcmd};
use iommu_model::vtd::root::RootEntry;
use iommu_model::vtd::unit::IOTLB_REG;
use iommu_model::walk::Perm;

/// The host's VT-d tables for the endpoint (legacy mode: root, context, 4-level second stage) in
/// a huge page of this program, and the unit's registers.
pub(crate) struct HostVtd {
    regs: Bar,
    l4: u64,
    next: u64,
    end: u64,
}

impl HostVtd {
    /// Bring the unit up as a driver does: tables, SRTP, global invalidations, TE; then map the
    /// rig's ring and small buffers and start the endpoint's ring.
    pub(crate) fn up(rig: &mut Rig, regs: Bar) -> Result<HostVtd, String> {
        let base = rig.mem.page()?;
        let (root, ctx, l4) = (base, base + 0x1000, base + 0x2000);
        rig.mem.wr(root, &RootEntry::new(ctx).to_bytes());
        // AW 2: 48-bit, 4-level tables; domain 1; TT 0 (translated).
        rig.mem.wr(ctx + u64::from(rig.rid & 0xff) * 16, &ContextEntry::new(l4, 2, 1, 0).to_bytes());
        let mut v = HostVtd { regs, l4, next: base + 0x3000, end: base + (2 << 20) };
        v.regs.w64(regs::RTADDR as usize, root);
        v.regs.w32(regs::GCMD as usize, gcmd::SRTP);
        check!(poll(|| v.regs.r32(regs::GSTS as usize) & gcmd::SRTP != 0), "RTPS never set");
        v.flush();
        v.regs.w32(regs::GCMD as usize, gcmd::TE);
        check!(poll(|| v.regs.r32(regs::GSTS as usize) & gcmd::TE != 0), "TES never set");
        v.map(rig, RING_IOVA, rig.hp1)?;
        for k in 0..8 {
            let (iova, pa) = rig.small(k);
            v.map(rig, iova, pa)?;
        }
        rig.start_ring(RING_IOVA, RING_ENTRIES, Ctrl::empty());
        Ok(v)
    }

    /// Map `iova` to `pa` (4 KiB, read-write), replacing what was there, and invalidate.
    pub(crate) fn map(&mut self, rig: &mut Rig, iova: u64, pa: u64) -> R {
        let mut table = self.l4;
        for level in (2..=4u32).rev() {
            let slot = table + ((iova >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let e = rig.mem.r64(slot);
            table = if e & 3 != 0 {
                e & vtd_ss::ADDR_MASK
            } else {
                check!(self.next < self.end, "out of table pages");
                let t = self.next;
                self.next += 0x1000;
                rig.mem.w64(slot, vtd_ss::table(t, Perm::RW));
                t
            };
        }
        rig.mem.w64(table + ((iova >> 12) & 0x1ff) * 8, vtd_ss::leaf(pa, Perm::RW, false));
        self.flush();
        Ok(())
    }

    /// Register-based global context-cache and IOTLB invalidation, waiting for ICC and IVT to
    /// clear as Linux's __iommu_flush_context / __iommu_flush_iotlb do.
    fn flush(&self) {
        self.regs.w64(regs::CCMD as usize, 1 << 63 | 1 << 61);
        poll(|| self.regs.r64(regs::CCMD as usize) >> 63 == 0);
        self.regs.w64(IOTLB_REG as usize, 1 << 63 | 1 << 60);
        poll(|| self.regs.r64(IOTLB_REG as usize) >> 63 == 0);
    }
}
