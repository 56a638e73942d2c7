//! The virtio-iommu function as a hostile driver reaches it: the transport brought up the way
//! Linux does (features, two queues, DRIVER_OK), then guest RAM holding whatever descriptor
//! tables, rings and requests the input says, notifications, and arbitrary BAR0 accesses on top.
//! Endpoint DMA through the resulting domains is tried too (at any 64-bit IOVA), so faults reach
//! the event queue. The daemon must neither panic nor take more than one queue's worth per
//! notification.

use crate::{guest_ram, Null};
use iommu_model::walk::Access;
use qemu_device::devices::virtio_iommu::transport::{common, layout};
use qemu_device::devices::virtio_iommu::VirtioIommu;
use qemu_device::secure::dma::{self, TranslateCheck};
use qemu_device::secure::SecureIommu;
use qemu_device::vfio::function::PciFunction;
use qemu_device::vfio::guest_mem::GuestRam;
use qemu_device::vfio::server::MsixIrq;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

const RAM: u64 = 64 << 10;

fn w(d: &mut VirtioIommu, off: u64, v: u64, len: usize) {
    d.bar_write(0, off, &v.to_le_bytes()[..len]);
}

pub fn run(data: &[u8]) {
    static RAM_FILE: OnceLock<(GuestRam, File)> = OnceLock::new();

    // Layout: 1 byte queue size log2, then up to 16 KiB of guest RAM image (descriptor tables at
    // 0x0 and 0x1000, avail rings at 0x2000 and 0x2800, used rings at 0x3000 and 0x3800, buffers
    // anywhere), then 16-byte BAR0 accesses.
    let Some((&qlog, rest)) = data.split_first() else { return };
    let img_len = rest.len().min(16 << 10);
    let (image, ops) = rest.split_at(img_len);
    let (ram, file) = RAM_FILE.get_or_init(|| guest_ram("viommu", RAM));
    let mut page = vec![0u8; RAM as usize];
    page[..image.len()].copy_from_slice(image);
    file.write_all_at(&page, 0).expect("RAM written");

    let irq = Arc::new(MsixIrq::default());
    let mut d = VirtioIommu::new(&[0x20], ram.clone(), irq.clone(), Arc::new(Null));
    let mut sec = SecureIommu::new(Arc::new(Null), irq);
    sec.attach_virtio_iommu(d.domains.clone(), Some(d.event_queue()));
    let sec = Mutex::new(sec);
    w(&mut d, common::DEVICE_STATUS, 3, 1);
    for (sel, v) in [(0u64, 0x17u64), (1, 1)] {
        w(&mut d, common::DRIVER_FEATURE_SELECT, sel, 4);
        w(&mut d, common::DRIVER_FEATURE, v, 4);
    }
    w(&mut d, common::DEVICE_STATUS, 0xb, 1);
    for q in 0..2u64 {
        w(&mut d, common::QUEUE_SELECT, q, 2);
        w(&mut d, common::QUEUE_SIZE, 1 << (qlog % 9), 2);
        w(&mut d, common::QUEUE_MSIX_VECTOR, q + 1, 2);
        w(&mut d, common::QUEUE_DESC, q * 0x1000, 8);
        w(&mut d, common::QUEUE_DRIVER, 0x2000 + q * 0x800, 8);
        w(&mut d, common::QUEUE_DEVICE, 0x3000 + q * 0x800, 8);
        w(&mut d, common::QUEUE_ENABLE, 1, 2);
    }
    w(&mut d, common::DEVICE_STATUS, 0xf, 1);
    w(&mut d, layout::NOTIFY, 0, 2);
    let mut mem = ram.snapshot();
    for op in ops.chunks_exact(16) {
        let offset = u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]])) % layout::BAR_SIZE;
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        match op[0] % 4 {
            0 => d.bar_write(0, offset, &op[8..8 + len]),
            1 => {
                let mut out = [0u8; 8];
                d.bar_read(0, offset, &mut out[..len]);
            }
            2 => w(&mut d, layout::NOTIFY, 0, 2),
            _ => {
                let iova = u64::from_le_bytes(op[8..16].try_into().unwrap_or([0; 8]));
                // Through the DMA path's caller, which posts the faults on the event queue.
                let mut per_page = dma::PerPage(&sec);
                let _ = per_page.translate_page(&mut mem, 0x20, false, iova, if op[1] & 4 == 0 { Access::Read } else { Access::Write });
            }
        }
    }
}
