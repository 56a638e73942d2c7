//! The translation caches: an IOTLB tagged by domain and a device-table-entry cache tagged by
//! requester. A cached answer stays until an invalidation covers it, whatever happens to the
//! tables in memory: that is the behaviour drivers must get right (AMD spec 48882 §2.4, VT-d §6.5).
//!
//! Both caches are bounded; when full they are emptied, which hardware may do at any time.

use crate::walk::{Perm, Translation};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Entries each cache holds before it is emptied.
pub const CAPACITY: usize = 4096;

/// A multiplicative hash: keys are small integers, and the IOTLB hit path is hot.
#[derive(Default)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// One cached translation, kept per 4 KiB IOVA page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    spa_page: u64,
    size_log2: u8,
    level: u8,
    perm: Perm,
}

#[derive(Default)]
pub struct Iotlb {
    map: Map<(u16, u64), Entry>,
}

impl Iotlb {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn lookup(&self, domain: u16, iova: u64) -> Option<Translation> {
        let e = self.map.get(&(domain, iova >> 12))?;
        Some(Translation { spa: e.spa_page | (iova & 0xfff), size_log2: e.size_log2, perm: e.perm, level: e.level })
    }

    pub fn insert(&mut self, domain: u16, iova: u64, t: &Translation) {
        if self.map.len() >= CAPACITY {
            self.map.clear();
        }
        let e = Entry { spa_page: t.spa & !0xfff, size_log2: t.size_log2, level: t.level, perm: t.perm };
        self.map.insert((domain, iova >> 12), e);
    }

    /// Drop what the domain caches for IOVAs in `[start, start + len)` (len 0 is nothing;
    /// `u64::MAX` reaches the end of the address space). A cached large page goes if the range
    /// touches any part of it, not only the 4 KiB it was cached under: hardware caches the page,
    /// so an invalidation of any address inside it drops it.
    pub fn invalidate_range(&mut self, domain: u16, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = start >> 12;
        let last = start.saturating_add(len.saturating_sub(1)) >> 12;
        self.map.retain(|&(d, page), e| {
            let span = 1u64 << u32::from(e.size_log2).clamp(12, 63).saturating_sub(12);
            let page_first = page & !span.wrapping_sub(1);
            let page_last = page_first.saturating_add(span.wrapping_sub(1));
            d != domain || page_last < first || page_first > last
        });
    }

    pub fn invalidate_domain(&mut self, domain: u16) {
        self.map.retain(|&(d, _), _| d != domain);
    }

    pub fn invalidate_all(&mut self) {
        self.map.clear();
    }
}

/// A cache of fetched context: device-table entries (AMD-Vi) or context entries (VT-d), by
/// requester ID.
pub struct DevCache<T> {
    map: Map<u16, T>,
}

impl<T> Default for DevCache<T> {
    fn default() -> Self {
        DevCache { map: Map::default() }
    }
}

impl<T: Clone> DevCache<T> {
    pub fn get(&self, devid: u16) -> Option<T> {
        self.map.get(&devid).cloned()
    }
    pub fn insert(&mut self, devid: u16, v: T) {
        if self.map.len() >= CAPACITY {
            self.map.clear();
        }
        self.map.insert(devid, v);
    }
    pub fn invalidate(&mut self, devid: u16) {
        self.map.remove(&devid);
    }
    pub fn invalidate_all(&mut self) {
        self.map.clear();
    }
    /// Keep only the entries `keep` accepts (selective invalidations by domain or device).
    pub fn retain(&mut self, mut keep: impl FnMut(u16, &T) -> bool) {
        self.map.retain(|&k, v| keep(k, v));
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(spa: u64) -> Translation {
        Translation { spa, size_log2: 12, perm: Perm::RW, level: 1 }
    }

    #[test]
    fn range_invalidation_is_per_domain_and_inclusive() {
        let mut tlb = Iotlb::new();
        for page in 0..8u64 {
            tlb.insert(1, page << 12, &t(0x10_0000 + (page << 12)));
            tlb.insert(2, page << 12, &t(0x20_0000 + (page << 12)));
        }
        assert_eq!(tlb.lookup(1, 0x3abc).map(|t| t.spa), Some(0x10_3abc));
        tlb.invalidate_range(1, 0x2000, 0x2000);
        assert!(tlb.lookup(1, 0x2000).is_none() && tlb.lookup(1, 0x3fff).is_none());
        assert!(tlb.lookup(1, 0x1000).is_some() && tlb.lookup(1, 0x4000).is_some());
        assert!(tlb.lookup(2, 0x2000).is_some(), "other domain untouched");
        tlb.invalidate_range(2, 0, u64::MAX);
        assert!(tlb.lookup(2, 0x7000).is_none());
    }

    #[test]
    fn invalidating_part_of_a_large_page_drops_it() {
        let mut tlb = Iotlb::new();
        let big = Translation { spa: 0x4000_0000, size_log2: 21, perm: Perm::RW, level: 2 };
        // Cached through an access at IOVA 0x2f_1000, inside the 2 MiB page at 0x20_0000.
        tlb.insert(1, 0x2f_1234, &Translation { spa: big.spa + 0xf_1234, ..big });
        tlb.invalidate_range(1, 0x40_0000, 0x1000);
        assert!(tlb.lookup(1, 0x2f_1234).is_some(), "a range past the page leaves it");
        tlb.invalidate_range(1, 0x1f_f000, 0x1000);
        assert!(tlb.lookup(1, 0x2f_1234).is_some(), "a range before the page leaves it");
        tlb.invalidate_range(1, 0x20_0000, 0x1000);
        assert!(tlb.lookup(1, 0x2f_1234).is_none(), "the page's first 4 KiB covers the page");
    }

    #[test]
    fn stays_bounded() {
        let mut tlb = Iotlb::new();
        for page in 0..(3 * CAPACITY as u64) {
            tlb.insert(0, page << 12, &t(page << 12));
        }
        assert!(tlb.len() <= CAPACITY);
    }
}
