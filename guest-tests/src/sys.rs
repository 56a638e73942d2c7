//! The guest's view of the hardware: PCI functions found in sysfs, BARs mapped from their
//! resource files, and DMA memory (2 MiB huge pages) with known physical addresses from
//! /proc/self/pagemap.

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
        let read = |f: &str| fs::read_to_string(p.join(f)).ok().and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok());
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

    pub fn r32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len && off % 4 == 0);
        // SAFETY: in bounds and aligned (asserted); device memory needs volatile access.
        unsafe { ptr::read_volatile(self.base.add(off) as *const u32) }
    }
    pub fn w32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len && off % 4 == 0);
        // SAFETY: as r32.
        unsafe { ptr::write_volatile(self.base.add(off) as *mut u32, v) }
    }
    pub fn r64(&self, off: usize) -> u64 {
        u64::from(self.r32(off)) | u64::from(self.r32(off + 4)) << 32
    }
    /// Two 32-bit writes, low half first (how Linux's lo_hi_writeq reaches a 64-bit register).
    pub fn w64(&self, off: usize, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
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
            libc::mmap(ptr::null_mut(), HUGE as usize, libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE | libc::MAP_LOCKED, -1, 0)
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
        assert!(addr % 8 == 0);
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
        let words: Vec<u32> = payload.chunks(4).map(|c| { let mut b = [0u8; 4]; b[..c.len()].copy_from_slice(c); u32::from_le_bytes(b) }).collect();
        self.w32(cap + 0x08, 1); // abort: start clean
        self.w32(cap + 0x10, u32::from(vendor) | u32::from(ty) << 16);
        self.w32(cap + 0x10, words.len() as u32 + 2);
        for w in &words {
            self.w32(cap + 0x10, *w);
        }
        self.w32(cap + 0x08, 1 << 31);
        let mut out = Vec::new();
        for _ in 0..1024 {
            let st = self.r32(cap + 0x0c);
            if st & 4 != 0 {
                return Err("DOE error".into());
            }
            if st >> 31 == 0 {
                break;
            }
            out.push(self.r32(cap + 0x14));
            self.w32(cap + 0x14, 0);
        }
        if out.len() < 2 {
            return Err("no DOE response".into());
        }
        Ok(out[2..].iter().flat_map(|w| w.to_le_bytes()).collect())
    }
}

/// VFIO from user space (kept here, with the other `unsafe` of the guest program).
pub mod vfio {
    //! VFIO type1 from user space, as a VMM or DPDK uses it (Linux include/uapi/linux/vfio.h): bind a
    //! function to vfio-pci, put its group in a container with the type1v2 IOMMU, map user memory for
    //! DMA (the kernel pins it and programs the IOMMU: here, virtio-iommu MAP requests), and reach the
    //! device's BARs through the device file.

    use std::ffi::CString;
    use std::fs;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const VFIO_TYPE: u64 = b';' as u64;
    const fn io(nr: u64) -> u64 {
        (VFIO_TYPE << 8) | nr
    }
    const GET_API_VERSION: u64 = io(100);
    const CHECK_EXTENSION: u64 = io(101);
    const SET_IOMMU: u64 = io(102);
    const GROUP_GET_STATUS: u64 = io(103);
    const GROUP_SET_CONTAINER: u64 = io(104);
    const GROUP_GET_DEVICE_FD: u64 = io(106);
    const DEVICE_GET_REGION_INFO: u64 = io(108);
    const IOMMU_MAP_DMA: u64 = io(113);
    const IOMMU_UNMAP_DMA: u64 = io(114);
    const TYPE1V2_IOMMU: u64 = 3;
    const GROUP_FLAGS_VIABLE: u32 = 1;
    const DMA_MAP_FLAG_READ: u32 = 1;
    const DMA_MAP_FLAG_WRITE: u32 = 2;

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

    fn ioctl_ptr<T>(fd: &OwnedFd, req: u64, arg: *mut T, what: &str) -> Result<i32, String> {
        // SAFETY: `arg` points to a live, properly sized #[repr(C)] structure of the layout the
        // request expects (include/uapi/linux/vfio.h); the kernel reads and writes only within argsz.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
        if r < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(r)
    }

    fn ioctl_val(fd: &OwnedFd, req: u64, arg: u64, what: &str) -> Result<i32, String> {
        // SAFETY: these requests take an integer argument, no memory.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as libc::c_ulong) };
        if r < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(r)
    }

    fn open(path: &str) -> Result<OwnedFd, String> {
        let c = CString::new(path).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated path; the returned descriptor is owned from here on.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("{path}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just opened and is not owned elsewhere.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Bind `bdf` (e.g. "0000:00:04.0") to vfio-pci.
    pub fn bind_vfio_pci(bdf: &str) -> Result<(), String> {
        let dev = format!("/sys/bus/pci/devices/{bdf}");
        if fs::read_link(format!("{dev}/driver")).is_ok_and(|l| l.ends_with("vfio-pci")) {
            return Ok(());
        }
        fs::write(format!("{dev}/driver_override"), "vfio-pci").map_err(|e| format!("driver_override: {e}"))?;
        fs::write("/sys/bus/pci/drivers_probe", bdf).map_err(|e| format!("drivers_probe: {e}"))?;
        if !fs::read_link(format!("{dev}/driver")).is_ok_and(|l| l.ends_with("vfio-pci")) {
            return Err(format!("{bdf} did not bind to vfio-pci"));
        }
        Ok(())
    }

    /// A container with the type1v2 IOMMU holding one group, and the device's file.
    pub struct Vfio {
        pub container: OwnedFd,
        _group: OwnedFd,
        pub device: OwnedFd,
        bar0: u64,
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
            // SAFETY: the ioctl returned a new descriptor that nothing else owns.
            let device = unsafe { OwnedFd::from_raw_fd(dfd) };
            let mut ri = RegionInfo { argsz: std::mem::size_of::<RegionInfo>() as u32, index: 0, ..Default::default() };
            ioctl_ptr(&device, DEVICE_GET_REGION_INFO, &mut ri, "VFIO_DEVICE_GET_REGION_INFO")?;
            Ok(Vfio { container, _group: g, device, bar0: ri.offset })
        }

        /// VFIO_IOMMU_MAP_DMA: `len` bytes of this process's memory at `vaddr` to `iova`, read-write.
        pub fn map(&self, vaddr: u64, iova: u64, len: u64) -> Result<(), String> {
            let mut m = DmaMap { argsz: std::mem::size_of::<DmaMap>() as u32, flags: DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE, vaddr, iova, size: len };
            ioctl_ptr(&self.container, IOMMU_MAP_DMA, &mut m, "VFIO_IOMMU_MAP_DMA").map(drop)
        }

        pub fn unmap(&self, iova: u64, len: u64) -> Result<(), String> {
            let mut u = DmaUnmap { argsz: std::mem::size_of::<DmaUnmap>() as u32, flags: 0, iova, size: len };
            ioctl_ptr(&self.container, IOMMU_UNMAP_DMA, &mut u, "VFIO_IOMMU_UNMAP_DMA").map(drop)
        }

        pub fn w32(&self, reg: u64, v: u32) -> Result<(), String> {
            let b = v.to_le_bytes();
            // SAFETY: writes 4 bytes from a live buffer to the device file at the BAR0 region offset.
            let n = unsafe { libc::pwrite(self.device.as_raw_fd(), b.as_ptr().cast(), 4, (self.bar0 + reg) as libc::off_t) };
            if n != 4 {
                return Err(format!("BAR0 write {reg:#x}: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }

        pub fn r32(&self, reg: u64) -> Result<u32, String> {
            let mut b = [0u8; 4];
            // SAFETY: reads 4 bytes into a live buffer from the device file at the BAR0 region offset.
            let n = unsafe { libc::pread(self.device.as_raw_fd(), b.as_mut_ptr().cast(), 4, (self.bar0 + reg) as libc::off_t) };
            if n != 4 {
                return Err(format!("BAR0 read {reg:#x}: {}", std::io::Error::last_os_error()));
            }
            Ok(u32::from_le_bytes(b))
        }
    }

    /// Anonymous memory of this process, populated (what VFIO pins).
    pub struct UserMem {
        pub ptr: *mut u8,
        pub len: usize,
    }

    impl UserMem {
        pub fn new(len: usize) -> Result<UserMem, String> {
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let p = unsafe {
                libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1, 0)
            };
            if p == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            Ok(UserMem { ptr: p.cast(), len })
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
            // SAFETY: the mapping made in new(), unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}
