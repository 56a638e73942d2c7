//! The conversion hazard: a page made guest-private while a T=0 requester still has a live I/O
//! mapping of it. The hardware allows the RMPUPDATE (the next DMA write faults instead), but the
//! state is the bug that exclusive pinning of DMA pages exists to prevent, so the model reports it.

use std::collections::BTreeMap;

/// Live mappings the registry holds at most; a guest that maps more gets an error, not unbounded
/// growth.
pub const MAX_MAPPINGS: usize = 1 << 16;

/// A live I/O mapping of a T=0 requester, as the DMA side registers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveMapping {
    pub requester: u16,
    pub iova: u64,
    pub spa: u64,
    pub size: u64,
    pub write: bool,
}

/// One page made private under a live mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hazard {
    /// The SPA of the 4 KiB page converted.
    pub spa: u64,
    /// The ASID it now belongs to.
    pub asid: u16,
    pub mapping: LiveMapping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryFull;

#[derive(Clone, Debug, Default)]
pub struct HazardRegistry {
    /// Keyed by (spa, requester, iova) so ranges are found by SPA.
    maps: BTreeMap<(u64, u16, u64), LiveMapping>,
    /// (requester, iova) -> spa, so a mapping is removed by its I/O address in O(log n).
    by_iova: BTreeMap<(u16, u64), u64>,
    /// The largest mapping size, so a lookup knows how far back a covering mapping may start.
    max_size: u64,
}

impl HazardRegistry {
    /// Register a live mapping; a mapping of the same requester at the same I/O address
    /// replaces the old one (the I/O page table entry was rewritten).
    pub fn register(&mut self, m: LiveMapping) -> Result<(), RegistryFull> {
        if !self.by_iova.contains_key(&(m.requester, m.iova)) && self.maps.len() >= MAX_MAPPINGS {
            return Err(RegistryFull);
        }
        self.unregister(m.requester, m.iova);
        self.max_size = self.max_size.max(m.size);
        self.maps.insert((m.spa, m.requester, m.iova), m);
        self.by_iova.insert((m.requester, m.iova), m.spa);
        Ok(())
    }

    /// Whether exactly this mapping is registered.
    pub fn holds(&self, m: &LiveMapping) -> bool {
        self.maps.get(&(m.spa, m.requester, m.iova)) == Some(m)
    }

    /// Remove the mapping of `requester` at `iova`; true if there was one.
    pub fn unregister(&mut self, requester: u16, iova: u64) -> bool {
        match self.by_iova.remove(&(requester, iova)) {
            Some(spa) => self.maps.remove(&(spa, requester, iova)).is_some(),
            None => false,
        }
    }

    /// Remove every mapping of a requester (device reset, detach).
    pub fn unregister_requester(&mut self, requester: u16) {
        let gone: Vec<(u64, u64)> = self.by_iova.range((requester, 0)..=(requester, u64::MAX)).map(|(&(_, i), &s)| (i, s)).collect();
        for (iova, spa) in gone {
            self.by_iova.remove(&(requester, iova));
            self.maps.remove(&(spa, requester, iova));
        }
    }

    pub fn len(&self) -> usize {
        self.maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Mappings that cover any byte of `[spa, spa + len)`.
    pub fn overlapping(&self, spa: u64, len: u64) -> Vec<LiveMapping> {
        let from = spa.saturating_sub(self.max_size.saturating_sub(1));
        let end = spa.saturating_add(len);
        self.maps.range((from, 0, 0)..(end, 0, 0)).map(|(_, m)| *m).filter(|m| m.spa < end && m.spa.saturating_add(m.size) > spa).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let mut r = HazardRegistry::default();
        for i in 0..MAX_MAPPINGS as u64 {
            r.register(LiveMapping { requester: 1, iova: i << 12, spa: i << 12, size: 0x1000, write: true }).unwrap();
        }
        let extra = LiveMapping { requester: 1, iova: 1 << 40, spa: 0, size: 0x1000, write: true };
        assert_eq!(r.register(extra), Err(RegistryFull));
        assert!(r.register(LiveMapping { spa: 0x1234_5000, iova: 0, ..extra }).is_ok(), "replacing is not growing");
        assert_eq!(r.len(), MAX_MAPPINGS);
    }

    #[test]
    fn finds_mappings_that_cover_a_range() {
        let mut r = HazardRegistry::default();
        let m = |spa, size| LiveMapping { requester: 0x20, iova: spa, spa, size, write: true };
        r.register(m(0x20_0000, 0x20_0000)).unwrap();
        r.register(m(0x50_0000, 0x1000)).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.overlapping(0x3f_f000, 0x1000).len(), 1, "inside the 2 MiB mapping");
        assert_eq!(r.overlapping(0x40_0000, 0x1000).len(), 0, "just past it");
        assert_eq!(r.overlapping(0x4f_f000, 0x2000).len(), 1);
        assert!(r.holds(&m(0x50_0000, 0x1000)) && !r.holds(&LiveMapping { write: false, ..m(0x50_0000, 0x1000) }));
        assert!(r.unregister(0x20, 0x50_0000));
        assert!(!r.unregister(0x20, 0x50_0000), "already gone");
        assert!(r.overlapping(0x50_0000, 0x1000).is_empty());
        // Re-registering an I/O address moves the mapping.
        r.register(LiveMapping { spa: 0x90_0000, ..m(0x20_0000, 0x1000) }).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r.overlapping(0x20_0000, 0x1000).is_empty());
        assert_eq!(r.overlapping(0x90_0000, 0x1000).len(), 1);
        r.register(LiveMapping { requester: 0x21, ..m(0x60_0000, 0x1000) }).unwrap();
        r.unregister_requester(0x20);
        assert_eq!((r.len(), r.overlapping(0x60_0000, 1).len()), (1, 1));
    }
}
