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
