//! The virtio-pci modern transport (virtio 1.2 §4.1.4), device side: the vendor capabilities
//! that point into one memory BAR, the common configuration registers, the ISR byte and the
//! notification area. The virtqueues themselves are rust-vmm `virtio_queue::Queue`s; the device
//! (mod.rs) answers its own configuration window and processes the queues.
//! Linux's side of the same registers: drivers/virtio/virtio_pci_modern_dev.c.

use virtio_queue::{Queue, QueueT};

pub use abi::virtio_pci::{cap_type, common, layout, status, NO_VECTOR, VIRTIO_F_VERSION_1};

/// The field of the common configuration that contains `off`: (start, width).
fn field(off: u64) -> Option<(u64, u64)> {
    use common::*;
    let fields: [(u64, u64); 18] = [
        (DEVICE_FEATURE_SELECT, 4),
        (DEVICE_FEATURE, 4),
        (DRIVER_FEATURE_SELECT, 4),
        (DRIVER_FEATURE, 4),
        (CONFIG_MSIX_VECTOR, 2),
        (NUM_QUEUES, 2),
        (DEVICE_STATUS, 1),
        (CONFIG_GENERATION, 1),
        (QUEUE_SELECT, 2),
        (QUEUE_SIZE, 2),
        (QUEUE_MSIX_VECTOR, 2),
        (QUEUE_ENABLE, 2),
        (QUEUE_NOTIFY_OFF, 2),
        (QUEUE_DESC, 8),
        (QUEUE_DRIVER, 8),
        (QUEUE_DEVICE, 8),
        (QUEUE_NOTIFY_DATA, 2),
        (QUEUE_RESET, 2),
    ];
    fields.into_iter().find(|&(s, w)| off >= s && off < s.saturating_add(w))
}

/// What a BAR write asks of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The driver wrote 0 to device_status: the device forgets its state (§2.4).
    Reset,
    /// The driver notified queue `n` (only once DRIVER_OK is set).
    Notify(u16),
}

pub struct Transport {
    pub device_features: u64,
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub config_msix: u16,
    pub status: u8,
    pub generation: u8,
    queue_select: u16,
    pub queues: Vec<Queue>,
    pub queue_msix: Vec<u16>,
    vectors: u16,
    isr: u8,
}

impl Transport {
    /// `queue_max` is each queue's largest size (a power of two up to 32768).
    pub fn new(device_features: u64, queue_max: &[u16], vectors: u16) -> Self {
        let queues = queue_max.iter().map(|&m| Queue::new(m).unwrap_or_else(|_| Queue::new(256).expect("256 is a valid size"))).collect();
        Transport {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_msix: NO_VECTOR,
            status: 0,
            generation: 0,
            queue_select: 0,
            queues,
            queue_msix: vec![NO_VECTOR; queue_max.len()],
            vectors,
            isr: 0,
        }
    }

    /// The vendor capabilities (struct virtio_pci_cap, §4.1.4), each from cap_vndr: the glue
    /// fills cap_next.
    pub fn caps() -> Vec<Vec<u8>> {
        let cap = |ty: u8, offset: u64, length: u64, extra: Option<u32>| {
            let mut c = vec![0x09, 0, if extra.is_some() { 20 } else { 16 }, ty, layout::BAR, 0, 0, 0];
            c.extend_from_slice(&(offset as u32).to_le_bytes());
            c.extend_from_slice(&(length as u32).to_le_bytes());
            if let Some(m) = extra {
                c.extend_from_slice(&m.to_le_bytes());
            }
            c
        };
        vec![
            cap(cap_type::COMMON, layout::COMMON, layout::COMMON_LEN, None),
            cap(cap_type::ISR, layout::ISR, 1, None),
            cap(cap_type::NOTIFY, layout::NOTIFY, layout::NOTIFY_LEN, Some(layout::NOTIFY_MULTIPLIER)),
            cap(cap_type::DEVICE, layout::DEVICE, layout::DEVICE_LEN, None),
        ]
    }

    pub fn driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & (status::FAILED | status::NEEDS_RESET) == 0
    }

    /// Raise the queue interrupt's ISR bit (read by INTx drivers; harmless with MSI-X).
    pub fn set_isr_queue(&mut self) {
        self.isr |= 1;
    }

    /// Back to the state after power-on (§2.4), keeping the offer.
    pub fn reset(&mut self) {
        *self = Transport {
            generation: self.generation,
            ..Transport::new(self.device_features, &self.queues.iter().map(|q| q.max_size()).collect::<Vec<_>>(), self.vectors)
        };
    }

    fn selected(&self) -> Option<usize> {
        let i = usize::from(self.queue_select);
        (i < self.queues.len()).then_some(i)
    }

    fn common_value(&self, start: u64) -> u64 {
        use common::*;
        let q = self.selected();
        let half = |v: u64, sel: u32| match sel {
            0 => v & 0xffff_ffff,
            1 => v >> 32,
            _ => 0,
        };
        match start {
            DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            DEVICE_FEATURE => half(self.device_features, self.device_feature_select),
            DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            DRIVER_FEATURE => half(self.driver_features, self.driver_feature_select),
            CONFIG_MSIX_VECTOR => u64::from(self.config_msix),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => u64::from(self.status),
            CONFIG_GENERATION => u64::from(self.generation),
            QUEUE_SELECT => u64::from(self.queue_select),
            // A queue that does not exist reads size 0 (§4.1.4.3.1).
            QUEUE_SIZE => q.map_or(0, |i| u64::from(self.queues[i].size())),
            QUEUE_MSIX_VECTOR => q.map_or(u64::from(NO_VECTOR), |i| u64::from(self.queue_msix[i])),
            QUEUE_ENABLE => q.map_or(0, |i| u64::from(self.queues[i].ready())),
            QUEUE_NOTIFY_OFF => q.map_or(0, |i| i as u64),
            QUEUE_DESC => q.map_or(0, |i| self.queues[i].desc_table()),
            QUEUE_DRIVER => q.map_or(0, |i| self.queues[i].avail_ring()),
            QUEUE_DEVICE => q.map_or(0, |i| self.queues[i].used_ring()),
            _ => 0,
        }
    }

    /// A read of the common configuration, ISR or notification windows; `false` for offsets
    /// outside them (the device configuration is the device's).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        if offset < layout::COMMON + layout::COMMON_LEN {
            let Some((start, width)) = field(offset) else { return true };
            let v = self.common_value(start).to_le_bytes();
            // field() found offset in start..start + width.
            let skip = offset.saturating_sub(start) as usize;
            let n = data.len().min((width as usize).saturating_sub(skip));
            data[..n].copy_from_slice(&v[skip..skip.saturating_add(n)]);
            return true;
        }
        if offset == layout::ISR {
            // Reading the ISR status clears it (§4.1.4.5).
            if let Some(b) = data.first_mut() {
                *b = std::mem::take(&mut self.isr);
            }
            return true;
        }
        (layout::ISR..layout::ISR + 0x1000).contains(&offset) || (layout::NOTIFY..layout::NOTIFY + layout::NOTIFY_LEN).contains(&offset)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effect {
        use common::*;
        if (layout::NOTIFY..layout::NOTIFY + layout::NOTIFY_LEN).contains(&offset) {
            let rel = offset.saturating_sub(layout::NOTIFY);
            let q = rel.checked_div(u64::from(layout::NOTIFY_MULTIPLIER)).unwrap_or(u64::MAX);
            if rel.is_multiple_of(u64::from(layout::NOTIFY_MULTIPLIER)) && (q as usize) < self.queues.len() && self.driver_ok() {
                return Effect::Notify(q as u16);
            }
            return Effect::None;
        }
        if offset >= layout::COMMON_LEN {
            return Effect::None;
        }
        let Some((start, width)) = field(offset) else { return Effect::None };
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        // Whole fields, or one 32-bit half of a 64-bit one (Linux's vp_iowrite64_twopart).
        let whole = offset == start && data.len() as u64 == width;
        let half = width == 8 && data.len() == 4 && offset.saturating_sub(start).is_multiple_of(4);
        if !whole && !half {
            return Effect::None;
        }
        let q = self.selected();
        let splice = |old: u64| {
            if whole {
                v
            } else if offset == start {
                (old & !0xffff_ffff) | (v & 0xffff_ffff)
            } else {
                (old & 0xffff_ffff) | (v << 32)
            }
        };
        // Queue registers are frozen once the queue is enabled (§4.1.4.3.2).
        let configurable = q.is_some_and(|i| !self.queues[i].ready()) && self.status & status::DRIVER_OK == 0;
        match start {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            DRIVER_FEATURE if self.status & status::FEATURES_OK == 0 => {
                let v = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => self.config_msix = self.vector(v as u16),
            DEVICE_STATUS => return self.write_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_SIZE if configurable => {
                let i = q.unwrap_or_default();
                // virtio-queue keeps the old size when the new one is not a power of two up to the maximum.
                self.queues[i].set_size(v as u16);
            }
            QUEUE_MSIX_VECTOR => {
                if let Some(i) = q {
                    self.queue_msix[i] = self.vector(v as u16);
                }
            }
            // Writing 0 is forbidden to the driver (§4.1.4.3.2); it is ignored.
            QUEUE_ENABLE if configurable && v & 0xffff == 1 => {
                let i = q.unwrap_or_default();
                self.queues[i].set_ready(true);
            }
            QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE if configurable => {
                let i = q.unwrap_or_default();
                let a = splice(self.common_value(start));
                let (lo, hi) = (Some(a as u32), Some((a >> 32) as u32));
                match start {
                    QUEUE_DESC => self.queues[i].set_desc_table_address(lo, hi),
                    QUEUE_DRIVER => self.queues[i].set_avail_ring_address(lo, hi),
                    _ => self.queues[i].set_used_ring_address(lo, hi),
                }
            }
            _ => {}
        }
        Effect::None
    }

    /// A vector the device cannot use reads back as NO_VECTOR (§4.1.5.1.2).
    fn vector(&self, v: u16) -> u16 {
        if v < self.vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, v: u8) -> Effect {
        if v == 0 {
            self.reset();
            return Effect::Reset;
        }
        let mut v = v;
        // FEATURES_OK sticks only for a subset of the offer that includes VERSION_1 (§2.2, §6.1).
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let ok = self.driver_features & !self.device_features == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                v &= !status::FEATURES_OK;
            }
        }
        // DRIVER_OK needs FEATURES_OK first.
        if v & status::DRIVER_OK != 0 && v & status::FEATURES_OK == 0 {
            v &= !status::DRIVER_OK;
        }
        self.status = v;
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(t: &mut Transport, off: u64, v: u64, len: usize) -> Effect {
        t.write(off, &v.to_le_bytes()[..len])
    }
    fn r(t: &mut Transport, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        t.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn linux_probe_sequence() {
        let offer = VIRTIO_F_VERSION_1 | 0b10101;
        let mut t = Transport::new(offer, &[256, 64], 3);
        assert_eq!(r(&mut t, common::NUM_QUEUES, 2), 2);
        w(&mut t, common::DEVICE_STATUS, u64::from(status::ACKNOWLEDGE | status::DRIVER), 1);
        w(&mut t, common::DEVICE_FEATURE_SELECT, 1, 4);
        assert_eq!(r(&mut t, common::DEVICE_FEATURE, 4), 1);
        w(&mut t, common::DEVICE_FEATURE_SELECT, 0, 4);
        assert_eq!(r(&mut t, common::DEVICE_FEATURE, 4), 0b10101);
        // Accepting a feature not offered: FEATURES_OK does not stick.
        w(&mut t, common::DRIVER_FEATURE_SELECT, 0, 4);
        w(&mut t, common::DRIVER_FEATURE, 0b10111, 4);
        w(&mut t, common::DRIVER_FEATURE_SELECT, 1, 4);
        w(&mut t, common::DRIVER_FEATURE, 1, 4);
        w(&mut t, common::DEVICE_STATUS, 0xb, 1);
        assert_eq!(r(&mut t, common::DEVICE_STATUS, 1), 3);
        w(&mut t, common::DRIVER_FEATURE_SELECT, 0, 4);
        w(&mut t, common::DRIVER_FEATURE, 0b101, 4);
        w(&mut t, common::DEVICE_STATUS, 0xb, 1);
        assert_eq!(r(&mut t, common::DEVICE_STATUS, 1), 0xb);
        assert_eq!(t.driver_features, VIRTIO_F_VERSION_1 | 0b101);
        // Queue 1: size, vector, addresses in two halves, enable.
        w(&mut t, common::QUEUE_SELECT, 1, 2);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 64);
        w(&mut t, common::QUEUE_SIZE, 48, 2);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 64, "not a power of two: kept");
        w(&mut t, common::QUEUE_SIZE, 32, 2);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 32);
        w(&mut t, common::QUEUE_MSIX_VECTOR, 7, 2);
        assert_eq!(r(&mut t, common::QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR), "only 3 vectors");
        w(&mut t, common::QUEUE_MSIX_VECTOR, 2, 2);
        assert_eq!(r(&mut t, common::QUEUE_NOTIFY_OFF, 2), 1);
        w(&mut t, common::QUEUE_DESC, 0x1_2345_6000, 4);
        w(&mut t, common::QUEUE_DESC + 4, 0x1, 4);
        w(&mut t, common::QUEUE_DRIVER, 0x7000, 8);
        w(&mut t, common::QUEUE_DEVICE, 0x8000, 8);
        assert_eq!(r(&mut t, common::QUEUE_DESC, 8), 0x1_2345_6000);
        assert_eq!(r(&mut t, common::QUEUE_DESC + 4, 4), 1);
        w(&mut t, common::QUEUE_ENABLE, 1, 2);
        assert_eq!(r(&mut t, common::QUEUE_ENABLE, 2), 1);
        w(&mut t, common::QUEUE_DESC, 0x9000, 8);
        assert_eq!(r(&mut t, common::QUEUE_DESC, 8), 0x1_2345_6000, "frozen once enabled");
        assert_eq!(w(&mut t, layout::NOTIFY + 4, 1, 2), Effect::None, "no notification before DRIVER_OK");
        w(&mut t, common::DEVICE_STATUS, 0xf, 1);
        assert_eq!(w(&mut t, layout::NOTIFY + 4, 1, 2), Effect::Notify(1));
        assert_eq!(w(&mut t, layout::NOTIFY + 8, 1, 2), Effect::None, "no queue 2");
        assert_eq!(w(&mut t, layout::NOTIFY + 2, 1, 2), Effect::None, "between doorbells");
        w(&mut t, common::QUEUE_SELECT, 9, 2);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 0, "absent queue");
        t.set_isr_queue();
        assert_eq!(r(&mut t, layout::ISR, 1), 1);
        assert_eq!(r(&mut t, layout::ISR, 1), 0, "read clears");
        assert_eq!(w(&mut t, common::DEVICE_STATUS, 0, 1), Effect::Reset);
        assert_eq!(r(&mut t, common::DEVICE_STATUS, 1), 0);
        w(&mut t, common::QUEUE_SELECT, 1, 2);
        assert_eq!((r(&mut t, common::QUEUE_ENABLE, 2), r(&mut t, common::QUEUE_SIZE, 2), r(&mut t, common::QUEUE_DESC, 8)), (0, 64, 0));
    }

    #[test]
    fn capabilities_point_into_the_bar() {
        let caps = Transport::caps();
        let types: Vec<u8> = caps.iter().map(|c| c[3]).collect();
        assert_eq!(types, [cap_type::COMMON, cap_type::ISR, cap_type::NOTIFY, cap_type::DEVICE]);
        for c in &caps {
            assert_eq!((c[0], usize::from(c[2])), (0x09, c.len()));
            let off = u64::from(u32::from_le_bytes(c[8..12].try_into().unwrap()));
            let len = u64::from(u32::from_le_bytes(c[12..16].try_into().unwrap()));
            assert!(off + len <= layout::BAR_SIZE);
        }
        assert_eq!(u32::from_le_bytes(caps[2][16..20].try_into().unwrap()), layout::NOTIFY_MULTIPLIER);
    }
}
