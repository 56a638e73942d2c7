//! The guest's view of the hardware: PCI functions found in sysfs, BARs mapped from their
//! resource files, and DMA memory (2 MiB huge pages) with known physical addresses from
//! /proc/self/pagemap.

// The guest program's one home of `unsafe`: system calls, mmap of BARs and DMA memory (each
// block with a SAFETY comment).
#![allow(unsafe_code)]

use iommu_model::mem::{MemError, PhysMem};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::ptr;

pub struct PciDev {
    pub path: String,
    pub bdf: String,
}

/// The first function with this vendor and device id.
pub fn find(vendor: u16, device: u16) -> Option<PciDev> {
    let mut entries: Vec<_> = fs::read_dir("/sys/bus/pci/devices").ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let read =
            |f: &str| fs::read_to_string(p.join(f)).ok().and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok());
        if read("vendor") == Some(vendor) && read("device") == Some(device) {
            let _ = fs::write(p.join("enable"), "1");
            return Some(PciDev { path: p.display().to_string(), bdf: e.file_name().to_string_lossy().into_owned() });
        }
    }
    None
}

/// A mapped BAR; accesses are volatile and naturally sized.
pub struct Bar {
    base: *mut u8,
    len: usize,
}

impl Bar {
    pub fn map(dev: &PciDev, index: u8) -> Result<Bar, String> {
        let path = format!("{}/resource{index}", dev.path);
        let f = fs::OpenOptions::new().read(true).write(true).open(&path).map_err(|e| format!("{path}: {e}"))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
        use std::os::unix::io::AsRawFd;
        // SAFETY: maps the BAR's resource file; the mapping outlives `f` as mmap keeps its own
        // reference, and all accesses are bounds-checked below.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(Bar { base: p as *mut u8, len })
    }

    /// The BAR's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn r32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (asserted); device memory needs volatile access.
        unsafe { ptr::read_volatile(self.base.add(off) as *const u32) }
    }
    pub fn w32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: as r32.
        unsafe { ptr::write_volatile(self.base.add(off) as *mut u32, v) }
    }
    /// For the 8-bit fields of virtio-pci's common configuration.
    pub fn w8(&self, off: usize, v: u8) {
        assert!(off < self.len);
        // SAFETY: as r32.
        unsafe { ptr::write_volatile(self.base.add(off), v) }
    }
    /// For the 16-bit fields of virtio-pci's common configuration.
    pub fn w16(&self, off: usize, v: u16) {
        assert!(off + 2 <= self.len && off.is_multiple_of(2));
        // SAFETY: as r32.
        unsafe { ptr::write_volatile(self.base.add(off) as *mut u16, v) }
    }
    pub fn r64(&self, off: usize) -> u64 {
        u64::from(self.r32(off)) | u64::from(self.r32(off + 4)) << 32
    }
    /// Two 32-bit writes, low half first (how Linux's lo_hi_writeq reaches a 64-bit register).
    pub fn w64(&self, off: usize, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
    /// One 8-byte store (a writeq), which QEMU hands the function as one access.
    pub fn store64(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: as r32.
        unsafe { ptr::write_volatile(self.base.add(off) as *mut u64, v) }
    }
    /// Reads of one and two bytes (any register at any width).
    pub fn r8(&self, off: usize) -> u8 {
        assert!(off < self.len);
        // SAFETY: as r32.
        unsafe { ptr::read_volatile(self.base.add(off)) }
    }
    pub fn r16(&self, off: usize) -> u16 {
        assert!(off + 2 <= self.len && off.is_multiple_of(2));
        // SAFETY: as r32.
        unsafe { ptr::read_volatile(self.base.add(off) as *const u16) }
    }
}

// SAFETY: every access to a BAR is one volatile load or store of device memory, which two vCPUs
// may issue at once as two CPUs of a real machine do; the mapping lives as long as the Bar.
unsafe impl Sync for Bar {}
// SAFETY: as for Sync: the mapping is not tied to the thread that made it.
unsafe impl Send for Bar {}
// SAFETY: the pages are this process's, mapped for its whole life; every access is volatile, and
// the threads of the multi-vCPU scenarios touch disjoint addresses.
unsafe impl Sync for DmaMem {}
// SAFETY: as for Sync: the pages are not tied to the thread that mapped them.
unsafe impl Send for DmaMem {}

/// Pin the calling thread to one CPU (`Some`), so a scenario's threads run on distinct vCPUs, or
/// let it run on any (`None`).
pub fn pin_to_cpu(cpu: Option<usize>) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only touch it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(c) => libc::CPU_SET(c, &mut set),
            None => (0..online_cpus()).for_each(|c| libc::CPU_SET(c, &mut set)),
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(format!("sched_setaffinity to cpu {cpu:?}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The number of vCPUs the guest has ("0-3" in /sys/devices/system/cpu/online; whatever this
/// thread is pinned to).
pub fn online_cpus() -> usize {
    let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let n: usize = online
        .trim()
        .split(',')
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?),
            None => r.parse::<usize>().ok().map(|_| 1),
        })
        .sum();
    n.max(1)
}

/// One 2 MiB huge page of DMA memory and its physical address.
pub struct HugePage {
    pub va: *mut u8,
    pub pa: u64,
}

pub const HUGE: u64 = 2 << 20;

impl HugePage {
    pub fn alloc() -> Result<HugePage, String> {
        // SAFETY: an anonymous private mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                HUGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("huge page: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: p is a fresh mapping of HUGE bytes.
        unsafe { ptr::write_bytes(p as *mut u8, 0, HUGE as usize) };
        let mut f = fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start((p as u64 / 4096) * 8)).map_err(|e| e.to_string())?;
        let mut b = [0u8; 8];
        f.read_exact(&mut b).map_err(|e| e.to_string())?;
        let e = u64::from_le_bytes(b);
        if e >> 63 == 0 || e & ((1 << 55) - 1) == 0 {
            return Err("pagemap: page not present or PFN hidden".into());
        }
        Ok(HugePage { va: p as *mut u8, pa: (e & ((1 << 55) - 1)) << 12 })
    }
}

/// Physical memory as the guest reaches it: only its huge pages.
#[derive(Default)]
pub struct DmaMem {
    pub pages: Vec<HugePage>,
}

impl DmaMem {
    fn at(&self, addr: u64, len: usize) -> Option<*mut u8> {
        self.pages.iter().find_map(|p| {
            let off = addr.checked_sub(p.pa)?;
            (off + len as u64 <= HUGE).then(|| p.va.wrapping_add(off as usize))
        })
    }
    pub fn page(&mut self) -> Result<u64, String> {
        let p = HugePage::alloc()?;
        let pa = p.pa;
        self.pages.push(p);
        Ok(pa)
    }
    /// Volatile reads: the device writes this memory behind the program's back.
    pub fn rd(&self, addr: u64, buf: &mut [u8]) {
        let p = self.at(addr, buf.len()).expect("address in DMA memory");
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside a huge page we own (checked by `at`).
            *b = unsafe { ptr::read_volatile(p.add(i)) };
        }
    }
    pub fn wr(&self, addr: u64, data: &[u8]) {
        let p = self.at(addr, data.len()).expect("address in DMA memory");
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as rd.
            unsafe { ptr::write_volatile(p.add(i), b) };
        }
    }
    /// One aligned 8-byte CPU store (w64 writes byte by byte).
    pub fn store64(&self, addr: u64, v: u64) {
        assert!(addr.is_multiple_of(8));
        let p = self.at(addr, 8).expect("address in DMA memory");
        // SAFETY: inside a huge page we own, 8-byte aligned (asserted).
        unsafe { ptr::write_volatile(p as *mut u64, v) };
    }
    pub fn r64(&self, addr: u64) -> u64 {
        let mut b = [0u8; 8];
        self.rd(addr, &mut b);
        u64::from_le_bytes(b)
    }
    pub fn w64(&self, addr: u64, v: u64) {
        self.wr(addr, &v.to_le_bytes());
    }
}

impl PhysMem for DmaMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.at(addr, buf.len()).ok_or(MemError { addr, len: buf.len() })?;
        self.rd(addr, buf);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        self.at(addr, data.len()).ok_or(MemError { addr, len: data.len() })?;
        self.wr(addr, data);
        Ok(())
    }
}

/// The function's config space through sysfs (all 4 KiB for root).
pub struct Config(fs::File);

impl Config {
    pub fn open(dev: &PciDev) -> Result<Config, String> {
        let path = format!("{}/config", dev.path);
        fs::OpenOptions::new().read(true).write(true).open(&path).map(Config).map_err(|e| format!("{path}: {e}"))
    }
    pub fn r32(&self, off: u64) -> u32 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        let _ = self.0.read_exact_at(&mut b, off);
        u32::from_le_bytes(b)
    }
    pub fn w32(&self, off: u64, v: u32) {
        use std::os::unix::fs::FileExt;
        let _ = self.0.write_all_at(&v.to_le_bytes(), off);
    }
    /// A 16-bit register (Command, a capability's Message Control) on its own.
    pub fn w16(&self, off: u64, v: u16) {
        use std::os::unix::fs::FileExt;
        let _ = self.0.write_all_at(&v.to_le_bytes(), off);
    }

    /// Find an extended capability by id.
    pub fn ext_cap(&self, id: u32) -> Option<u64> {
        let mut off = 0x100u64;
        for _ in 0..64 {
            let h = self.r32(off);
            if h & 0xffff == id {
                return Some(off);
            }
            off = u64::from(h >> 20) & !3;
            if off < 0x100 {
                return None;
            }
        }
        None
    }

    /// One DOE exchange (PCIe §6.30): write the object, GO, read the response dwords.
    pub fn doe(&self, cap: u64, vendor: u16, ty: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
        use abi::doe::{header, reg, Ctrl, Status};
        let at = |r: u16| cap + u64::from(r);
        let words: Vec<u32> = payload
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(b)
            })
            .collect();
        self.w32(at(reg::CTRL), Ctrl::ABORT.bits()); // start clean
        self.w32(at(reg::WRITE), header(vendor, ty));
        self.w32(at(reg::WRITE), words.len() as u32 + 2);
        for w in &words {
            self.w32(at(reg::WRITE), *w);
        }
        self.w32(at(reg::CTRL), Ctrl::GO.bits());
        let mut out = Vec::new();
        for _ in 0..abi::doe::MAX_DWORDS {
            let st = Status::from_bits_truncate(self.r32(at(reg::STATUS)));
            if st.contains(Status::ERROR) {
                return Err("DOE error".into());
            }
            if !st.contains(Status::DATA_OBJECT_READY) {
                break;
            }
            out.push(self.r32(at(reg::READ)));
            self.w32(at(reg::READ), 0);
        }
        if out.len() < 2 {
            return Err("no DOE response".into());
        }
        Ok(out[2..].iter().flat_map(|w| w.to_le_bytes()).collect())
    }
}

// VFIO, iommufd and KVM from user space (kept here, with the other `unsafe` of the guest program).
pub mod vfio {
    //! VFIO from user space, as a VMM or DPDK uses it (Linux include/uapi/linux/vfio.h): bind a
    //! function to vfio-pci, then either put its group in a type1v2 container or open its device
    //! file (the VFIO cdev) and bind it to an iommufd; map user memory for DMA (the kernel pins it
    //! and programs the IOMMU: here, virtio-iommu MAP requests); reach the device's BAR0 through
    //! the device file.

    use std::ffi::CString;
    use std::fs;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const VFIO_TYPE: u64 = b';' as u64;
    /// _IO(';', nr): VFIO and iommufd requests carry no size or direction bits.
    pub(super) const fn io(nr: u64) -> u64 {
        (VFIO_TYPE << 8) | nr
    }
    const GET_API_VERSION: u64 = io(100);
    const CHECK_EXTENSION: u64 = io(101);
    const SET_IOMMU: u64 = io(102);
    const GROUP_GET_STATUS: u64 = io(103);
    const GROUP_SET_CONTAINER: u64 = io(104);
    const GROUP_GET_DEVICE_FD: u64 = io(106);
    const DEVICE_GET_INFO: u64 = io(107);
    const DEVICE_GET_REGION_INFO: u64 = io(108);
    const DEVICE_SET_IRQS: u64 = io(110);
    const DEVICE_RESET: u64 = io(111);
    const IOMMU_MAP_DMA: u64 = io(113);
    const IOMMU_UNMAP_DMA: u64 = io(114);
    const DEVICE_BIND_IOMMUFD: u64 = io(100 + 18);
    const DEVICE_ATTACH_IOMMUFD_PT: u64 = io(100 + 19);
    const TYPE1V2_IOMMU: u64 = 3;
    const GROUP_FLAGS_VIABLE: u32 = 1;
    const DMA_MAP_FLAG_READ: u32 = 1;
    const DMA_MAP_FLAG_WRITE: u32 = 2;
    /// vfio_device_info.flags: the device supports VFIO_DEVICE_RESET.
    pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
    const PCI_MSIX_IRQ_INDEX: u32 = 2;
    const IRQ_SET_DATA_NONE: u32 = 1 << 0;
    const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
    const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

    #[repr(C)]
    #[derive(Default)]
    struct DeviceInfo {
        argsz: u32,
        flags: u32,
        num_regions: u32,
        num_irqs: u32,
        cap_offset: u32,
        pad: u32,
    }

    /// vfio_irq_set with room for one eventfd.
    #[repr(C)]
    struct IrqSet {
        argsz: u32,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        fd: i32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct GroupStatus {
        argsz: u32,
        flags: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct RegionInfo {
        argsz: u32,
        flags: u32,
        index: u32,
        cap_offset: u32,
        size: u64,
        offset: u64,
    }

    #[repr(C)]
    struct DmaMap {
        argsz: u32,
        flags: u32,
        vaddr: u64,
        iova: u64,
        size: u64,
    }

    #[repr(C)]
    struct DmaUnmap {
        argsz: u32,
        flags: u32,
        iova: u64,
        size: u64,
    }

    #[repr(C)]
    struct BindIommufd {
        argsz: u32,
        flags: u32,
        iommufd: i32,
        out_devid: u32,
        token_uuid_ptr: u64,
    }

    #[repr(C)]
    struct AttachIommufdPt {
        argsz: u32,
        flags: u32,
        pt_id: u32,
        pasid: u32,
    }

    pub(super) fn ioctl_ptr<T>(fd: &OwnedFd, req: u64, arg: *mut T, what: &str) -> Result<i32, String> {
        // SAFETY: every caller passes a live, properly sized #[repr(C)] structure (or C string) of
        // the layout the request expects (include/uapi/linux/{vfio,iommufd,kvm}.h); the kernel
        // reads and writes only within it.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
        if r < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(r)
    }

    pub(super) fn ioctl_val(fd: &OwnedFd, req: u64, arg: u64, what: &str) -> Result<i32, String> {
        // SAFETY: these requests take an integer argument, no memory.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as libc::c_ulong) };
        if r < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(r)
    }

    /// A descriptor an ioctl returned, owned from here on.
    pub(super) fn owned(fd: i32) -> OwnedFd {
        // SAFETY: the kernel just returned this descriptor and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    pub(super) fn open(path: &str) -> Result<OwnedFd, String> {
        let c = CString::new(path).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated path; the returned descriptor is owned from here on.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("{path}: {}", std::io::Error::last_os_error()));
        }
        Ok(owned(fd))
    }

    /// Bind `bdf` (e.g. "0000:00:04.0") to vfio-pci, unbinding the driver it has.
    pub fn bind_vfio_pci(bdf: &str) -> Result<(), String> {
        let dev = format!("/sys/bus/pci/devices/{bdf}");
        match fs::read_link(format!("{dev}/driver")) {
            Ok(l) if l.ends_with("vfio-pci") => return Ok(()),
            Ok(_) => fs::write(format!("{dev}/driver/unbind"), bdf).map_err(|e| format!("unbind: {e}"))?,
            Err(_) => {}
        }
        fs::write(format!("{dev}/driver_override"), "vfio-pci").map_err(|e| format!("driver_override: {e}"))?;
        fs::write("/sys/bus/pci/drivers_probe", bdf).map_err(|e| format!("drivers_probe: {e}"))?;
        if !fs::read_link(format!("{dev}/driver")).is_ok_and(|l| l.ends_with("vfio-pci")) {
            return Err(format!("{bdf} did not bind to vfio-pci"));
        }
        Ok(())
    }

    /// A VFIO device file and where its BAR0 and config space regions sit in it.
    pub struct Device {
        pub fd: OwnedFd,
        bar0: u64,
        config: u64,
    }

    /// VFIO_PCI_CONFIG_REGION_INDEX.
    const CONFIG_REGION: u32 = 7;

    impl Device {
        fn new(fd: OwnedFd) -> Result<Device, String> {
            let offset = |index: u32| {
                let mut ri = RegionInfo { argsz: std::mem::size_of::<RegionInfo>() as u32, index, ..Default::default() };
                ioctl_ptr(&fd, DEVICE_GET_REGION_INFO, &mut ri, "VFIO_DEVICE_GET_REGION_INFO").map(|_| ri.offset)
            };
            let (bar0, config) = (offset(0)?, offset(CONFIG_REGION)?);
            Ok(Device { fd, bar0, config })
        }

        /// Command register: bus master enable (PCI 3.0 §6.2.2), through the config region.
        pub fn enable_bus_master(&self) -> Result<(), String> {
            let mut cmd = [0u8; 2];
            // SAFETY: reads 2 bytes into a live buffer from the device file's config region.
            let n = unsafe { libc::pread(self.fd.as_raw_fd(), cmd.as_mut_ptr().cast(), 2, (self.config + 4) as libc::off_t) };
            cmd[0] |= 0x04;
            // SAFETY: writes 2 bytes from a live buffer to the device file's config region.
            let m = unsafe { libc::pwrite(self.fd.as_raw_fd(), cmd.as_ptr().cast(), 2, (self.config + 4) as libc::off_t) };
            if n != 2 || m != 2 {
                return Err(format!("PCI_COMMAND: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }

        pub fn w32(&self, reg: u64, v: u32) -> Result<(), String> {
            let b = v.to_le_bytes();
            // SAFETY: writes 4 bytes from a live buffer to the device file at the BAR0 region offset.
            let n = unsafe { libc::pwrite(self.fd.as_raw_fd(), b.as_ptr().cast(), 4, (self.bar0 + reg) as libc::off_t) };
            if n != 4 {
                return Err(format!("BAR0 write {reg:#x}: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }

        pub fn r32(&self, reg: u64) -> Result<u32, String> {
            let mut b = [0u8; 4];
            self.read(reg, &mut b)?;
            Ok(u32::from_le_bytes(b))
        }

        /// One BAR0 access of `data.len()` bytes (1, 2, 4 or 8: vfio-pci issues it at that width).
        pub fn write(&self, reg: u64, data: &[u8]) -> Result<(), String> {
            // SAFETY: writes from a live buffer of that length to the device file at the BAR0 region offset.
            let n = unsafe { libc::pwrite(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), (self.bar0 + reg) as libc::off_t) };
            if n != data.len() as isize {
                return Err(format!("BAR0 write {reg:#x}: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }

        pub fn read(&self, reg: u64, buf: &mut [u8]) -> Result<(), String> {
            // SAFETY: reads into a live buffer of that length from the device file at the BAR0 region offset.
            let n = unsafe { libc::pread(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), (self.bar0 + reg) as libc::off_t) };
            if n != buf.len() as isize {
                return Err(format!("BAR0 read {reg:#x}: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }

        pub fn r64(&self, reg: u64) -> Result<u64, String> {
            let mut b = [0u8; 8];
            self.read(reg, &mut b)?;
            Ok(u64::from_le_bytes(b))
        }

        /// VFIO_DEVICE_GET_INFO's flags (DEVICE_FLAGS_RESET: the kernel found a reset method).
        pub fn flags(&self) -> Result<u32, String> {
            let mut i = DeviceInfo { argsz: std::mem::size_of::<DeviceInfo>() as u32, ..Default::default() };
            ioctl_ptr(&self.fd, DEVICE_GET_INFO, &mut i, "VFIO_DEVICE_GET_INFO")?;
            Ok(i.flags)
        }

        /// VFIO_DEVICE_RESET: the function-level reset.
        pub fn reset(&self) -> Result<(), String> {
            ioctl_val(&self.fd, DEVICE_RESET, 0, "VFIO_DEVICE_RESET").map(drop)
        }

        /// MSI-X vector `vector` signals a new eventfd (VFIO_DEVICE_SET_IRQS); the kernel enables
        /// MSI-X on the function for it.
        pub fn msix_eventfd(&self, vector: u32) -> Result<OwnedFd, String> {
            // SAFETY: creates a descriptor we own from here on.
            let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
            }
            let efd = owned(efd);
            let mut set = IrqSet {
                argsz: std::mem::size_of::<IrqSet>() as u32,
                flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
                index: PCI_MSIX_IRQ_INDEX,
                start: vector,
                count: 1,
                fd: efd.as_raw_fd(),
            };
            ioctl_ptr(&self.fd, DEVICE_SET_IRQS, &mut set, "VFIO_DEVICE_SET_IRQS")?;
            Ok(efd)
        }

        /// MSI-X off again (VFIO_DEVICE_SET_IRQS with no vectors).
        pub fn msix_off(&self) -> Result<(), String> {
            let mut set = IrqSet {
                argsz: 20,
                flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
                index: PCI_MSIX_IRQ_INDEX,
                start: 0,
                count: 0,
                fd: -1,
            };
            ioctl_ptr(&self.fd, DEVICE_SET_IRQS, &mut set, "VFIO_DEVICE_SET_IRQS").map(drop)
        }
    }

    /// How many times an eventfd was signalled since the last call (0 if not).
    pub fn eventfd_count(fd: &OwnedFd) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from a non-blocking eventfd.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_le_bytes(b)
        } else {
            0
        }
    }

    /// A container with the type1v2 IOMMU holding one group, and the device's file.
    pub struct Vfio {
        pub container: OwnedFd,
        _group: OwnedFd,
        pub device: Device,
    }

    impl Vfio {
        pub fn open(bdf: &str) -> Result<Vfio, String> {
            let group = fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group")).map_err(|e| format!("iommu_group: {e}"))?;
            let group = group.file_name().ok_or("group name")?.to_string_lossy().into_owned();
            let container = open("/dev/vfio/vfio")?;
            if ioctl_val(&container, GET_API_VERSION, 0, "VFIO_GET_API_VERSION")? != 0 {
                return Err("unexpected VFIO API version".into());
            }
            if ioctl_val(&container, CHECK_EXTENSION, TYPE1V2_IOMMU, "VFIO_CHECK_EXTENSION")? != 1 {
                return Err("no VFIO_TYPE1v2_IOMMU (vfio_iommu_type1 not loaded?)".into());
            }
            let g = open(&format!("/dev/vfio/{group}"))?;
            let mut st = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
            ioctl_ptr(&g, GROUP_GET_STATUS, &mut st, "VFIO_GROUP_GET_STATUS")?;
            if st.flags & GROUP_FLAGS_VIABLE == 0 {
                return Err(format!("group {group} is not viable"));
            }
            let mut cfd: i32 = container.as_raw_fd();
            ioctl_ptr(&g, GROUP_SET_CONTAINER, &mut cfd, "VFIO_GROUP_SET_CONTAINER")?;
            ioctl_val(&container, SET_IOMMU, TYPE1V2_IOMMU, "VFIO_SET_IOMMU")?;
            let name = CString::new(bdf).map_err(|e| e.to_string())?;
            let dfd = ioctl_ptr(&g, GROUP_GET_DEVICE_FD, name.as_ptr() as *mut libc::c_char, "VFIO_GROUP_GET_DEVICE_FD")?;
            let device = Device::new(owned(dfd))?;
            Ok(Vfio { container, _group: g, device })
        }

        /// VFIO_IOMMU_MAP_DMA: `len` bytes of this process's memory at `vaddr` to `iova`, read-write.
        pub fn map(&self, vaddr: u64, iova: u64, len: u64) -> Result<(), String> {
            let mut m = DmaMap {
                argsz: std::mem::size_of::<DmaMap>() as u32,
                flags: DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
                vaddr,
                iova,
                size: len,
            };
            ioctl_ptr(&self.container, IOMMU_MAP_DMA, &mut m, "VFIO_IOMMU_MAP_DMA").map(drop)
        }

        pub fn unmap(&self, iova: u64, len: u64) -> Result<(), String> {
            let mut u = DmaUnmap { argsz: std::mem::size_of::<DmaUnmap>() as u32, flags: 0, iova, size: len };
            ioctl_ptr(&self.container, IOMMU_UNMAP_DMA, &mut u, "VFIO_IOMMU_UNMAP_DMA").map(drop)
        }
    }

    /// The device's VFIO cdev (/dev/vfio/devices/vfioN, CONFIG_VFIO_DEVICE_CDEV), bound to an
    /// iommufd and attached to one of its IOAS (Documentation/driver-api/vfio.rst, "VFIO device cdev").
    pub fn open_cdev(bdf: &str, iommufd: &OwnedFd, ioas: u32) -> Result<Device, String> {
        let dir = format!("/sys/bus/pci/devices/{bdf}/vfio-dev");
        let name = fs::read_dir(&dir)
            .map_err(|e| format!("{dir}: {e} (a kernel without CONFIG_VFIO_DEVICE_CDEV)"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("vfio"))
            .ok_or_else(|| format!("no vfioN under {dir}"))?;
        let fd = open(&format!("/dev/vfio/devices/{name}"))?;
        let mut b = BindIommufd {
            argsz: std::mem::size_of::<BindIommufd>() as u32,
            flags: 0,
            iommufd: iommufd.as_raw_fd(),
            out_devid: 0,
            token_uuid_ptr: 0,
        };
        ioctl_ptr(&fd, DEVICE_BIND_IOMMUFD, &mut b, "VFIO_DEVICE_BIND_IOMMUFD")?;
        let mut a = AttachIommufdPt { argsz: std::mem::size_of::<AttachIommufdPt>() as u32, flags: 0, pt_id: ioas, pasid: 0 };
        ioctl_ptr(&fd, DEVICE_ATTACH_IOMMUFD_PT, &mut a, "VFIO_DEVICE_ATTACH_IOMMUFD_PT")?;
        Device::new(fd)
    }

    /// Memory of this process, populated (what VFIO and iommufd pin): anonymous, or a memfd's
    /// pages mapped shared (then `fd` is the memfd, for IOMMU_IOAS_MAP_FILE).
    pub struct UserMem {
        pub ptr: *mut u8,
        pub len: usize,
        pub fd: Option<OwnedFd>,
    }

    impl UserMem {
        pub fn new(len: usize) -> Result<UserMem, String> {
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            Ok(UserMem { ptr: p.cast(), len, fd: None })
        }

        /// `len` bytes of `fd` mapped shared and populated (a guest_memfd created mmap-able).
        pub fn map_fd(fd: OwnedFd, len: usize) -> Result<UserMem, String> {
            // SAFETY: a fresh shared mapping of a descriptor we own; nothing else refers to it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            Ok(UserMem { ptr: p.cast(), len, fd: Some(fd) })
        }

        /// A memfd (shmem) of `len` bytes, mapped shared and populated.
        pub fn memfd(len: usize) -> Result<UserMem, String> {
            // SAFETY: a NUL-terminated name; the descriptor is owned from here on.
            let fd = unsafe { libc::memfd_create(c"tiommu-dma".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
            }
            let fd = owned(fd);
            // SAFETY: an integer size on a descriptor we own.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
                return Err(format!("ftruncate: {}", std::io::Error::last_os_error()));
            }
            Self::map_fd(fd, len).map_err(|e| format!("memfd: {e}"))
        }

        pub fn addr(&self) -> u64 {
            self.ptr as u64
        }
        /// The physical address of the page at `off` (/proc/self/pagemap; the page is pinned).
        pub fn phys(&self, off: usize) -> Result<u64, String> {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
            f.seek(SeekFrom::Start((self.addr() + off as u64) / 4096 * 8)).map_err(|e| e.to_string())?;
            let mut b = [0u8; 8];
            f.read_exact(&mut b).map_err(|e| e.to_string())?;
            let e = u64::from_le_bytes(b);
            if e >> 63 == 0 || e & ((1 << 55) - 1) == 0 {
                return Err("pagemap: page not present or PFN hidden".into());
            }
            Ok((e & ((1 << 55) - 1)) << 12)
        }
        pub fn write(&self, off: usize, data: &[u8]) {
            assert!(off + data.len() <= self.len);
            for (i, &b) in data.iter().enumerate() {
                // SAFETY: inside the mapping (checked above); volatile because the device writes it too.
                unsafe { std::ptr::write_volatile(self.ptr.add(off + i), b) };
            }
        }
        pub fn read(&self, off: usize, buf: &mut [u8]) {
            assert!(off + buf.len() <= self.len);
            for (i, b) in buf.iter_mut().enumerate() {
                // SAFETY: inside the mapping (checked above).
                *b = unsafe { std::ptr::read_volatile(self.ptr.add(off + i)) };
            }
        }
    }

    impl Drop for UserMem {
        fn drop(&mut self) {
            // SAFETY: the mapping made in new() or memfd(), unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

pub mod iommufd {
    //! iommufd (/dev/iommu, Linux include/uapi/linux/iommufd.h): an IOAS, user memory or a memfd
    //! mapped into it (the kernel pins the pages and programs the attached IOMMU), unmapped.

    use super::vfio::{io, ioctl_ptr, open};
    use std::os::fd::{AsRawFd, OwnedFd};

    const IOAS_ALLOC: u64 = io(0x81);
    const IOAS_MAP: u64 = io(0x85);
    const IOAS_UNMAP: u64 = io(0x86);
    const IOAS_MAP_FILE: u64 = io(0x8f);
    const MAP_FIXED_IOVA: u32 = 1 << 0;
    const MAP_WRITEABLE: u32 = 1 << 1;
    const MAP_READABLE: u32 = 1 << 2;
    const RW_FIXED: u32 = MAP_FIXED_IOVA | MAP_WRITEABLE | MAP_READABLE;

    #[repr(C)]
    struct IoasAlloc {
        size: u32,
        flags: u32,
        out_ioas_id: u32,
    }

    #[repr(C)]
    struct IoasMap {
        size: u32,
        flags: u32,
        ioas_id: u32,
        reserved: u32,
        user_va: u64,
        length: u64,
        iova: u64,
    }

    #[repr(C)]
    struct IoasMapFile {
        size: u32,
        flags: u32,
        ioas_id: u32,
        fd: i32,
        start: u64,
        length: u64,
        iova: u64,
    }

    #[repr(C)]
    struct IoasUnmap {
        size: u32,
        ioas_id: u32,
        iova: u64,
        length: u64,
    }

    pub struct Iommufd {
        pub fd: OwnedFd,
    }

    impl Iommufd {
        pub fn open() -> Result<Iommufd, String> {
            open("/dev/iommu").map(|fd| Iommufd { fd }).map_err(|e| format!("{e} (a kernel without CONFIG_IOMMUFD)"))
        }

        pub fn ioas_alloc(&self) -> Result<u32, String> {
            let mut a = IoasAlloc { size: std::mem::size_of::<IoasAlloc>() as u32, flags: 0, out_ioas_id: 0 };
            ioctl_ptr(&self.fd, IOAS_ALLOC, &mut a, "IOMMU_IOAS_ALLOC")?;
            Ok(a.out_ioas_id)
        }

        /// IOMMU_IOAS_MAP of `len` bytes of this process's memory at `va` to `iova`, read-write.
        pub fn map(&self, ioas: u32, va: u64, iova: u64, len: u64) -> Result<(), String> {
            let mut m = IoasMap {
                size: std::mem::size_of::<IoasMap>() as u32,
                flags: RW_FIXED,
                ioas_id: ioas,
                reserved: 0,
                user_va: va,
                length: len,
                iova,
            };
            ioctl_ptr(&self.fd, IOAS_MAP, &mut m, "IOMMU_IOAS_MAP").map(drop)
        }

        /// IOMMU_IOAS_MAP_FILE of `len` bytes of `file` from `start` to `iova`, read-write.
        pub fn map_file(&self, ioas: u32, file: &OwnedFd, start: u64, iova: u64, len: u64) -> Result<(), String> {
            let mut m = IoasMapFile {
                size: std::mem::size_of::<IoasMapFile>() as u32,
                flags: RW_FIXED,
                ioas_id: ioas,
                fd: file.as_raw_fd(),
                start,
                length: len,
                iova,
            };
            ioctl_ptr(&self.fd, IOAS_MAP_FILE, &mut m, "IOMMU_IOAS_MAP_FILE").map(drop)
        }

        pub fn unmap(&self, ioas: u32, iova: u64, len: u64) -> Result<(), String> {
            let mut u = IoasUnmap { size: std::mem::size_of::<IoasUnmap>() as u32, ioas_id: ioas, iova, length: len };
            ioctl_ptr(&self.fd, IOAS_UNMAP, &mut u, "IOMMU_IOAS_UNMAP").map(drop)
        }
    }
}

pub mod kvm {
    //! A software-protected KVM VM (KVM_X86_SW_PROTECTED_VM) with guest_memfd, as far as this
    //! program needs one (Linux include/uapi/linux/kvm.h): no vCPU ever runs.

    use super::vfio::{ioctl_ptr, ioctl_val, open, owned};
    use std::os::fd::{AsRawFd, OwnedFd};

    const KVMIO: u64 = 0xae;
    const fn io(nr: u64) -> u64 {
        (KVMIO << 8) | nr
    }
    const fn iow(nr: u64, size: usize) -> u64 {
        (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const CREATE_VM: u64 = io(0x01);
    const CHECK_EXTENSION: u64 = io(0x03);
    const SET_USER_MEMORY_REGION2: u64 = iow(0x49, std::mem::size_of::<Region2>());
    const SET_MEMORY_ATTRIBUTES: u64 = iow(0xd2, std::mem::size_of::<Attributes>());
    const CREATE_GUEST_MEMFD: u64 = iowr(0xd4, std::mem::size_of::<CreateGuestMemfd>());
    const CAP_VM_TYPES: u64 = 235;
    const CAP_GUEST_MEMFD_FLAGS: u64 = 244;
    pub const X86_DEFAULT_VM: u64 = 0;
    pub const X86_SW_PROTECTED_VM: u64 = 1;
    /// guest_memfd creation flags (include/uapi/linux/kvm.h GUEST_MEMFD_FLAG_*).
    pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
    pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
    const MEM_GUEST_MEMFD: u32 = 1 << 2;
    pub const ATTRIBUTE_PRIVATE: u64 = 1 << 3;

    #[repr(C)]
    struct Region2 {
        slot: u32,
        flags: u32,
        guest_phys_addr: u64,
        memory_size: u64,
        userspace_addr: u64,
        guest_memfd_offset: u64,
        guest_memfd: u32,
        pad1: u32,
        pad2: [u64; 14],
    }

    #[repr(C)]
    struct Attributes {
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    }

    #[repr(C)]
    struct CreateGuestMemfd {
        size: u64,
        flags: u64,
        reserved: [u64; 6],
    }

    /// The VM types /dev/kvm offers (KVM_CAP_VM_TYPES, a bit per type).
    pub fn vm_types() -> Result<u64, String> {
        let kvm = open("/dev/kvm")?;
        ioctl_val(&kvm, CHECK_EXTENSION, CAP_VM_TYPES, "KVM_CHECK_EXTENSION").map(|v| v as u64)
    }

    pub struct Vm {
        fd: OwnedFd,
    }

    impl Vm {
        pub fn create(ty: u64) -> Result<Vm, String> {
            let kvm = open("/dev/kvm")?;
            ioctl_val(&kvm, CREATE_VM, ty, "KVM_CREATE_VM").map(|fd| Vm { fd: owned(fd) })
        }

        pub fn guest_memfd(&self, size: u64) -> Result<OwnedFd, String> {
            self.guest_memfd_flags(size, 0)
        }

        pub fn guest_memfd_flags(&self, size: u64, flags: u64) -> Result<OwnedFd, String> {
            let mut c = CreateGuestMemfd { size, flags, reserved: [0; 6] };
            ioctl_ptr(&self.fd, CREATE_GUEST_MEMFD, &mut c, "KVM_CREATE_GUEST_MEMFD").map(owned)
        }

        /// The guest_memfd flags this VM accepts (KVM_CAP_GUEST_MEMFD_FLAGS on the VM; 0 on a
        /// kernel that does not know the capability).
        pub fn guest_memfd_flags_supported(&self) -> u64 {
            ioctl_val(&self.fd, CHECK_EXTENSION, CAP_GUEST_MEMFD_FLAGS, "KVM_CHECK_EXTENSION").map_or(0, |v| v as u64)
        }

        /// A memslot whose shared pages are `uaddr` and whose private pages are `gmem`.
        pub fn set_memory_region(&self, slot: u32, gpa: u64, size: u64, uaddr: u64, gmem: &OwnedFd) -> Result<(), String> {
            let mut r = Region2 {
                slot,
                flags: MEM_GUEST_MEMFD,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: uaddr,
                guest_memfd_offset: 0,
                guest_memfd: gmem.as_raw_fd() as u32,
                pad1: 0,
                pad2: [0; 14],
            };
            ioctl_ptr(&self.fd, SET_USER_MEMORY_REGION2, &mut r, "KVM_SET_USER_MEMORY_REGION2").map(drop)
        }

        pub fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), String> {
            let mut a = Attributes { address: gpa, size, attributes, flags: 0 };
            ioctl_ptr(&self.fd, SET_MEMORY_ATTRIBUTES, &mut a, "KVM_SET_MEMORY_ATTRIBUTES").map(drop)
        }
    }
}
