//! What a PCI function of the daemon is, independent of vfio-user: a backend with a config-space
//! description and BAR handlers, in the shape of rust-vmm vhost-device backends. The vfio-user glue
//! (vfio/server.rs) serves any `PciFunction`; the device logic lives in devices/.
//!
//! What else a function uses, handed to its constructor by the daemon rather than through the
//! trait (so a function can be built and tested on its own):
//! - guest memory: a `guest_mem::GuestRam` clone, filled by QEMU's DMA_MAP messages; take
//!   `ram.snapshot()` for each operation: a `GuestMem` implementing `iommu_model::mem::PhysMem`,
//!   every access bounds-checked against the mapped regions, valid even if QEMU unmaps meanwhile;
//! - interrupts: an `Arc<dyn Irq>`, `raise(vector)` signals that MSI-X vector's eventfd;
//! - the event stream: an `Arc<dyn EventSink>`, `emit(Event::...)` (the records: `abi::event`);
//! - long work: a `crossbeam_channel::Sender<Job>` (`Job = Box<dyn FnOnce() + Send>`); the
//!   daemon's DMA worker runs jobs in the order they were queued, off the socket thread.

/// The fixed parts of a function's config space; the glue builds the header from it.
#[derive(Clone, Debug)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    /// Base class, sub-class, programming interface.
    pub class: u32,
    pub revision: u8,
}

/// One memory BAR. Sizes are powers of two of at least 4 KiB; all BARs are 64-bit, non-prefetchable.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    pub index: u8,
    pub size: u64,
}

/// Interrupts a function raises (MSI or MSI-X vectors), implemented by the glue over QEMU's
/// eventfds.
pub trait Irq: Send + Sync {
    fn raise(&self, vector: u16);
}

/// The machine-readable event stream (JSON lines). Every translation fault, RMP violation, TDISP
/// transition and hazard goes here, as one of the records `abi::event::Event` defines.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: abi::event::Event);
}

/// A PCI function. BAR accesses arrive on the socket thread and must return quickly: long work
/// (DMA) goes to a worker thread.
pub trait PciFunction: Send {
    fn ids(&self) -> PciIds;
    fn bars(&self) -> Vec<Bar>;
    /// Number of MSI-X vectors (0: none). The glue places the table and PBA.
    fn msix_vectors(&self) -> u16 {
        0
    }
    /// Number of MSI vectors (0: no MSI capability; else a power of two up to 32). The driver
    /// enables MSI or MSI-X; `Irq::raise(v)` signals vector v of whichever is enabled.
    fn msi_vectors(&self) -> u8 {
        0
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);
    /// Bus Master Enable hard-wired to 1 (an IOMMU: its own memory writes and MSIs are not
    /// gated by BME, and Linux's amd_iommu never sets it).
    fn bus_master_always(&self) -> bool {
        false
    }
    /// Further read-only capabilities in the standard config space (each from its capability
    /// ID byte; the glue chains them after PCI Express and MSI-X), such as virtio's.
    fn std_caps(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// Extended config space (offset >= 0x100), for capabilities such as DOE. Reads of what the
    /// function does not implement return zeroes; writes to it are ignored.
    fn ext_config_read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn ext_config_write(&mut self, _offset: u16, _data: &[u8]) {}
    /// Whether an extended config access at `offset` is the function's to answer: the bodies of
    /// its extended capabilities, and device-specific registers it declares (such as IOAT's
    /// CHANERR_INT). Elsewhere the glue answers from the chained headers.
    fn ext_config_claims(&self, offset: u16) -> bool {
        self.ext_caps().iter().any(|&(o, _)| offset > o && offset < o.saturating_add(0x40))
    }
    /// The extended capabilities the function implements, as (offset, raw capability header) so
    /// the glue can chain them.
    fn ext_caps(&self) -> Vec<(u16, u32)> {
        Vec::new()
    }
    /// A write to the standard config space (header or capabilities below 0x100) happened; a
    /// TDISP device treats it as a configuration change.
    fn config_written(&mut self, _offset: u64) {}
    /// Function-level reset.
    fn reset(&mut self) {}
}
