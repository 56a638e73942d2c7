//! Scenarios where the guest kernel's own DMA code programs the secure IOMMU: the endpoint bound
//! to vfio-pci behind the daemon's virtio-iommu, user memory mapped through VFIO type1 or
//! iommufd (the kernel pins it and sends MAP requests the daemon materialises in its own AMD-Vi
//! tables), and a software-protected KVM VM's memory converted while mapped. Which kernel path
//! each one takes, and what the daemon reported: docs/kernel-paths.md.

use crate::modes::{amdvi_mode, viommu_mode, vtd_mode};
use crate::report::{expect_dmesg, expect_event, ENDPOINT, R, SKIP};
use crate::rig::{descriptor, wait_status, Rig};
use crate::sys::iommufd::Iommufd;
use crate::sys::kvm::{self, Vm};
use crate::sys::vfio::{bind_vfio_pci, open_cdev, Device, UserMem, Vfio};
use abi::endpoint::{reg, Ctrl, DescFlags, DmaStatus, Op, DESC_SIZE, DESC_STATUS};
use abi::event::Via;
use abi::expect;
use abi::mailbox::{self as mb, SnpCtl};
use abi::virtio_iommu::ReqStatus;

/// The endpoint's sysfs name (0000:00:04.0 under `tiommu run`).
pub(crate) static BDF: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("0000:{}", *ENDPOINT));
/// The same as a regex, for the kernel messages that name it.
pub(crate) static BDF_RE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| BDF.replace('.', r"\."));
pub(crate) const RING_IOVA: u64 = 0x10_0000;
pub(crate) const DATA_IOVA: u64 = 0x20_0000;
/// log2 of the ring's descriptors: 16 of 32 bytes, in the one ring page.
const RING_LOG2: u32 = 4;
const FILL_LEN: usize = 64;

/// The endpoint driven through a VFIO device file, its descriptor ring in a page of this
/// process mapped at RING_IOVA.
pub(crate) struct VfioRing<'a> {
    dev: &'a Device,
    ring: &'a UserMem,
    next: u32,
}

impl<'a> VfioRing<'a> {
    pub(crate) fn start(dev: &'a Device, ring: &'a UserMem) -> Result<VfioRing<'a>, String> {
        ring.write(0, &[0u8; (DESC_SIZE as usize) << RING_LOG2]);
        dev.w32(reg::CTRL, Ctrl::RESET.bits())?;
        dev.w32(reg::RING_BASE, RING_IOVA as u32)?;
        dev.w32(reg::RING_BASE_HI, (RING_IOVA >> 32) as u32)?;
        dev.w32(reg::RING_SIZE, RING_LOG2)?;
        Ok(VfioRing { dev, ring, next: 0 })
    }

    /// One FILL of FILL_LEN bytes of `pattern` at `iova`; its completion status.
    pub(crate) fn fill(&mut self, iova: u64, pattern: u64) -> Result<DmaStatus, String> {
        let slot = (self.next % (1 << RING_LOG2)) as usize * DESC_SIZE as usize;
        self.ring.write(slot, &descriptor(Op::Fill, DescFlags::empty(), FILL_LEN as u32, 0, iova, pattern));
        self.next += 1;
        self.dev.w32(reg::TAIL, self.next % (1 << RING_LOG2))?;
        match wait_status(|st| self.ring.read(slot + DESC_STATUS as usize, st)) {
            Some(st) => st,
            None => Err(format!("descriptor at {slot:#x} never completed (STATUS {:#x})", self.dev.r32(reg::STATUS).unwrap_or(0))),
        }
    }
}

/// Whether the FILL_LEN bytes at `off` of `mem` all hold `pattern`.
pub(crate) fn holds(mem: &UserMem, off: usize, pattern: u64) -> bool {
    let mut data = [0u8; FILL_LEN];
    mem.read(off, &mut data);
    data.chunks(8).all(|c| c == pattern.to_le_bytes())
}

/// The mapped page at `off` of `mem` (IOVA `iova`, last written with `last`) turned
/// guest-private in place while still mapped for DMA, the bug class exclusive pinning prevents:
/// the daemon reports the hazard, the RMP refuses the endpoint's next write and the page keeps
/// what it had. Then back to shared.
fn convert_in_place(r: &mut Rig, ep: &mut VfioRing, mem: &UserMem, off: usize, iova: u64, gpa: u64, last: u64) -> R {
    let pa = mem.phys(off)?;
    check!(r.rmpupdate(pa, gpa, true, 1)? == 0, "RMPUPDATE of the mapped page to private");
    expect_event(expect!(Hazard { iova, spa: pa }));
    let st = ep.fill(iova, 0x0bad_0bad_0bad_0bad)?;
    check!(st == DmaStatus::RmpPageFault, "write to the page turned private: status {st}");
    check!(holds(mem, off, last), "the refused write changed the page");
    if amdvi_mode() {
        expect_dmesg(&format!(
            r"{}: AMD-Vi: Event logged \[RMP_PAGE_FAULT vmg_tag=0x0000, gpa={iova:#x}, flags_rmp=0x0001, flags=0x0020\]",
            *BDF_RE
        ));
    }
    check!(r.rmpupdate(pa, 0, false, 0)? == 0, "back to shared");
    Ok(())
}

/// After `unmap` (the kernel's UNMAP of `iova`, the page at `off` of `mem`), the endpoint's
/// next write there is IO_PAGE_FAULT, written back through the ring, which is still mapped.
fn unmapped_write_faults(ep: &mut VfioRing, mem: &UserMem, off: usize, iova: u64, unmap: impl FnOnce() -> R) -> R {
    unmap()?;
    expect_unmap(iova);
    mem.write(off, &[0u8; FILL_LEN]);
    let st = ep.fill(iova, 0xdead_beef_dead_beef)?;
    check!(st == DmaStatus::IoPageFault, "FILL after the unmap: status {st}");
    check!(holds(mem, off, 0), "the unmapped page was written");
    expect_event(expect!(TranslationFault { devid: *ENDPOINT, via: via(), iova }));
    if amdvi_mode() {
        // Linux read the record from the model's event log (flags 0x20: a write).
        expect_dmesg(&format!(r"{}: AMD-Vi: Event logged \[IO_PAGE_FAULT domain=0x[0-9a-f]+ address={iova:#x} flags=0x0020\]", *BDF_RE));
    }
    if vtd_mode() {
        // Linux's dmar_fault read the record from the unit's fault recording registers.
        expect_dmesg(&format!(
            r"DMAR: \[DMA Write NO_PASID\] Request device \[{}\] fault addr {iova:#x} \[fault reason 0x05\] PTE Write access is not set",
            *BDF_RE
        ));
    }
    Ok(())
}

/// SNP on, read back: the first walk of a mapping then registers it as live for the hazard check,
/// and the read waits for the posted write, which travels over another socket than the
/// endpoint's doorbell.
pub(crate) fn snp_on(r: &mut Rig) -> R {
    r.ctl.w64(mb::reg::SNP_CTL as usize, SnpCtl::SNP_EN.bits());
    check!(SnpCtl::from_bits_truncate(r.ctl.r64(mb::reg::SNP_CTL as usize)).contains(SnpCtl::SNP_EN), "SNP did not turn on");
    Ok(())
}

/// The kernel's own IOMMU driver translates the endpoint: virtio_iommu through the daemon's
/// virtio-iommu, amd_iommu through the secure IOMMU's AMD-Vi registers, or intel_iommu through
/// its VT-d unit.
pub(crate) fn need_kernel_iommu() -> R {
    if !viommu_mode() && !amdvi_mode() && !vtd_mode() {
        return Err(format!("{SKIP}no kernel IOMMU driver for the endpoint (scripts/run-vm --virtio-iommu, --amd-iommu or --intel-iommu)"));
    }
    Ok(())
}

/// Which front the daemon's records name for the endpoint's translations.
pub(crate) fn via() -> Via {
    if amdvi_mode() {
        Via::AmdVi
    } else if vtd_mode() {
        Via::VtD
    } else {
        Via::VirtioIommu
    }
}

/// The daemon saw the kernel map `iova` (the virtio-iommu's MAP request; Linux's amd_iommu and
/// intel_iommu write their page tables in guest RAM, which the daemon only sees when a device
/// walks them).
pub(crate) fn expect_map(iova: u64) {
    if viommu_mode() {
        expect_event(expect!(Viommu { req: "map".into(), virt_start: Some(iova), pages: Some(1), status: ReqStatus::Ok.into() }));
    }
}

fn expect_unmap(iova: u64) {
    if viommu_mode() {
        expect_event(expect!(Viommu { req: "unmap".into(), virt_start: Some(iova), status: ReqStatus::Ok.into() }));
    }
}

/// The endpoint through iommufd: bound to vfio-pci, its cdev bound to an iommufd and attached
/// to a fresh IOAS.
fn iommufd_endpoint() -> Result<(Iommufd, u32, Device), String> {
    if !std::path::Path::new("/dev/iommu").exists() {
        return Err(format!("{SKIP}no /dev/iommu: this kernel has no CONFIG_IOMMUFD (the distribution's 7.3 has none; scripts/build-kernel, then run-vm --test-kernel)"));
    }
    let fd = Iommufd::open()?;
    bind_vfio_pci(&BDF)?;
    let ioas = fd.ioas_alloc()?;
    let dev = open_cdev(&BDF, &fd.fd, ioas)?;
    Ok((fd, ioas, dev))
}

/// A FILL of `pattern` at `iova` completes and lands in the page at `off` of `mem`.
pub(crate) fn fill_lands(ep: &mut VfioRing, mem: &UserMem, off: usize, iova: u64, pattern: u64) -> R {
    let st = ep.fill(iova, pattern)?;
    check!(st == DmaStatus::Ok, "FILL through the mapping at {iova:#x}: status {st}");
    check!(holds(mem, off, pattern), "the page mapped at {iova:#x} did not receive the pattern");
    Ok(())
}

/// The kernel's VFIO type1 path: VFIO_IOMMU_MAP_DMA of user memory (the kernel pins it and sends
/// virtio-iommu MAP requests), the endpoint's DMA through those mappings, the pinned data page
/// converted to guest-private while mapped (the RMP blocks the endpoint's write, the daemon
/// reports the hazard), then VFIO_IOMMU_UNMAP_DMA and the next DMA there refused
/// (IO_PAGE_FAULT written back through the ring, which is still mapped).
pub fn vfio_type1_map_decides_dma(r: &mut Rig) -> R {
    need_kernel_iommu()?;
    bind_vfio_pci(&BDF)?;
    let v = Vfio::open(&BDF)?;
    let mem = UserMem::new(0x2000)?;
    v.map(mem.addr(), RING_IOVA, 0x1000)?;
    v.map(mem.addr() + 0x1000, DATA_IOVA, 0x1000)?;
    // One pinned page each, as the daemon saw the kernel's MAP requests.
    expect_map(RING_IOVA);
    expect_map(DATA_IOVA);
    snp_on(r)?;
    unused_mapping_is_a_hazard(r, &v)?;
    let mut ep = VfioRing::start(&v.device, &mem)?;
    fill_lands(&mut ep, &mem, 0x1000, DATA_IOVA, 0x1122_3344_5566_7788)?;
    convert_in_place(r, &mut ep, &mem, 0x1000, DATA_IOVA, DATA_IOVA, 0x1122_3344_5566_7788)?;
    unmapped_write_faults(&mut ep, &mem, 0x1000, DATA_IOVA, || v.unmap(DATA_IOVA, 0x1000))
}

const UNUSED_IOVA: u64 = 0x28_0000;

/// A page the kernel mapped that the device never touched is live all the same: converting it
/// to private is reported at once (the daemon searches the kernel's tables, or its own
/// virtio-iommu domains, not only what a device has walked).
fn unused_mapping_is_a_hazard(r: &mut Rig, v: &Vfio) -> R {
    let spare = UserMem::new(0x1000)?;
    v.map(spare.addr(), UNUSED_IOVA, 0x1000)?;
    let pa = spare.phys(0)?;
    check!(r.rmpupdate(pa, UNUSED_IOVA, true, 1)? == 0, "RMPUPDATE of the unused mapped page to private");
    expect_event(expect!(Hazard { iova: UNUSED_IOVA, spa: pa, via: Some(via()) }));
    check!(r.rmpupdate(pa, 0, false, 0)? == 0, "back to shared");
    v.unmap(UNUSED_IOVA, 0x1000)
}

const IOMMUFD_DATA_IOVA: u64 = 0x30_0000;
const MEMFD_IOVA: u64 = 0x40_0000;

/// The kernel's iommufd path: the endpoint's VFIO cdev bound to an iommufd and attached to an
/// IOAS, IOMMU_IOAS_MAP of user memory (pinned by the kernel, sent to the daemon as MAPs), the
/// endpoint's DMA through it, IOMMU_IOAS_UNMAP and the next DMA refused.
pub fn iommufd_map_decides_dma(_r: &mut Rig) -> R {
    need_kernel_iommu()?;
    let (fd, ioas, dev) = iommufd_endpoint()?;
    let mem = UserMem::new(0x2000)?;
    fd.map(ioas, mem.addr(), RING_IOVA, 0x1000)?;
    fd.map(ioas, mem.addr() + 0x1000, IOMMUFD_DATA_IOVA, 0x1000)?;
    expect_map(IOMMUFD_DATA_IOVA);
    let mut ep = VfioRing::start(&dev, &mem)?;
    fill_lands(&mut ep, &mem, 0x1000, IOMMUFD_DATA_IOVA, 0x5566_7788_99aa_bbcc)?;
    unmapped_write_faults(&mut ep, &mem, 0x1000, IOMMUFD_DATA_IOVA, || fd.unmap(ioas, IOMMUFD_DATA_IOVA, 0x1000))
}

/// IOMMU_IOAS_MAP_FILE of a memfd (the kernel pins the file's folios, memfd_pin_folios, not
/// a process's page tables): the endpoint's DMA lands in the file's page, seen through another
/// mapping of the file.
pub fn iommufd_map_file_memfd(_r: &mut Rig) -> R {
    need_kernel_iommu()?;
    let (fd, ioas, dev) = iommufd_endpoint()?;
    let ring = UserMem::new(0x1000)?;
    fd.map(ioas, ring.addr(), RING_IOVA, 0x1000)?;
    let file = UserMem::memfd(0x1000)?;
    fd.map_file(ioas, file.fd.as_ref().ok_or("no memfd")?, 0, MEMFD_IOVA, 0x1000)?;
    expect_map(MEMFD_IOVA);
    let mut ep = VfioRing::start(&dev, &ring)?;
    fill_lands(&mut ep, &file, 0, MEMFD_IOVA, 0x0123_4567_89ab_cdef)?;
    fd.unmap(ioas, MEMFD_IOVA, 0x1000)?;
    expect_unmap(MEMFD_IOVA);
    Ok(())
}

const VM_GPA: u64 = 0x1_0000_0000;
const GMEM_IOVA: u64 = 0x50_0000;
const SHARED_IOVA: u64 = 0x60_0000;

/// A software-protected KVM VM (KVM_X86_SW_PROTECTED_VM, run by the guest's own KVM on TCG's
/// SVM): a memslot whose shared pages are a memfd and whose private pages are a guest_memfd.
/// - The guest_memfd cannot be mapped for DMA: IOMMU_IOAS_MAP_FILE takes shmem and hugetlbfs
///   files only (memfd_pin_folios), so Linux 7.3 refuses it.
/// - The memfd page backing the gfn is mapped through iommufd and the endpoint writes it. The
///   gfn is then converted to private with KVM_SET_MEMORY_ATTRIBUTES while that page is still
///   pinned and mapped: the kernel allows it, and nothing reaches the secure IOMMU (the gfn's
///   private memory is guest_memfd's page, a different one), so the device's next write to the
///   page still succeeds: into memory the guest no longer reads at that gfn.
/// - A conversion in place, which is what SNP firmware is asked for when the same page turns
///   private (RMPUPDATE of that page, done here as an SNP host would), is the hazard: the
///   daemon reports it and the RMP refuses the device's write.
pub fn guest_memfd_conversion(r: &mut Rig) -> R {
    need_kernel_iommu()?;
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err(format!("{SKIP}no /dev/kvm: this kernel has no KVM, or the CPU model has no SVM/VMX"));
    }
    let types = kvm::vm_types()?;
    if types & (1 << kvm::X86_SW_PROTECTED_VM) == 0 {
        return Err(format!("{SKIP}KVM offers no KVM_X86_SW_PROTECTED_VM (VM types {types:#x}; CONFIG_KVM_SW_PROTECTED_VM is not set in the distribution's 7.3)"));
    }
    let (fd, ioas, dev) = iommufd_endpoint()?;
    let ring = UserMem::new(0x1000)?;
    fd.map(ioas, ring.addr(), RING_IOVA, 0x1000)?;

    let vm = Vm::create(kvm::X86_SW_PROTECTED_VM)?;
    let shared = UserMem::memfd(0x2000)?;
    let gmem = vm.guest_memfd(0x2000)?;
    vm.set_memory_region(0, VM_GPA, 0x2000, shared.addr(), &gmem)?;
    match fd.map_file(ioas, &gmem, 0, GMEM_IOVA, 0x1000) {
        Err(e) if e.contains("Invalid argument") => println!("# IOMMU_IOAS_MAP_FILE of the guest_memfd refused: {e}"),
        Err(e) => return Err(format!("IOMMU_IOAS_MAP_FILE of the guest_memfd: {e}, not EINVAL")),
        Ok(()) => {
            return Err("IOMMU_IOAS_MAP_FILE mapped a guest_memfd: this kernel maps private memory for DMA; extend this scenario".into())
        }
    }
    let memfd = shared.fd.as_ref().ok_or("no memfd")?;
    fd.map_file(ioas, memfd, 0, SHARED_IOVA, 0x1000)?;
    expect_map(SHARED_IOVA);
    snp_on(r)?;
    let mut ep = VfioRing::start(&dev, &ring)?;
    fill_lands(&mut ep, &shared, 0, SHARED_IOVA, 0x1111_2222_3333_4444)?;

    vm.set_memory_attributes(VM_GPA, 0x1000, kvm::ATTRIBUTE_PRIVATE)
        .map_err(|e| format!("converting the gfn to private while its shared page is mapped: {e}"))?;
    println!(
        "# KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) of gpa {VM_GPA:#x} accepted while its shared page is pinned and mapped at {SHARED_IOVA:#x}"
    );
    // The shared page is unchanged for the IOMMU: the write still lands.
    fill_lands(&mut ep, &shared, 0, SHARED_IOVA, 0x5555_6666_7777_8888)?;

    convert_in_place(r, &mut ep, &shared, 0, SHARED_IOVA, VM_GPA, 0x5555_6666_7777_8888)?;
    vm.set_memory_attributes(VM_GPA, 0x1000, 0)?;
    fd.unmap(ioas, SHARED_IOVA, 0x1000)?;
    Ok(())
}

const GMEM_MMAP_IOVA: u64 = 0x70_0000;

/// The one guest_memfd pin path Linux 7.3 has: a guest_memfd of an ordinary VM (no private
/// memory) created with GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED, mmapped by this
/// process and mapped through VFIO type1 (VFIO_IOMMU_MAP_DMA pins it with long-term GUP). What the
/// kernel does with it is the result: its folios are pinned and mapped, and the endpoint's DMA
/// lands in the guest_memfd page (read back through the mmap), until the unmap.
pub fn guest_memfd_mmap_pinned_for_dma(_r: &mut Rig) -> R {
    need_kernel_iommu()?;
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err(format!("{SKIP}no /dev/kvm: this kernel has no KVM, or the CPU model has no SVM/VMX"));
    }
    let vm = Vm::create(kvm::X86_DEFAULT_VM)?;
    let want = kvm::GUEST_MEMFD_FLAG_MMAP | kvm::GUEST_MEMFD_FLAG_INIT_SHARED;
    let flags = vm.guest_memfd_flags_supported();
    if flags & want != want {
        return Err(format!("{SKIP}this kernel's guest_memfd cannot be mmapped (KVM_CAP_GUEST_MEMFD_FLAGS {flags:#x})"));
    }
    let gmem = UserMem::map_fd(vm.guest_memfd_flags(0x1000, want)?, 0x1000)?;
    gmem.write(0, &[0u8; FILL_LEN]);
    bind_vfio_pci(&BDF)?;
    let v = Vfio::open(&BDF)?;
    let ring = UserMem::new(0x1000)?;
    v.map(ring.addr(), RING_IOVA, 0x1000)?;
    v.map(gmem.addr(), GMEM_MMAP_IOVA, 0x1000).map_err(|e| format!("VFIO_IOMMU_MAP_DMA of the mmapped guest_memfd: {e}"))?;
    println!("# VFIO_IOMMU_MAP_DMA pinned the mmapped guest_memfd page at {:#x} for DMA", gmem.phys(0)?);
    expect_map(GMEM_MMAP_IOVA);
    let mut ep = VfioRing::start(&v.device, &ring)?;
    fill_lands(&mut ep, &gmem, 0, GMEM_MMAP_IOVA, 0x6d6d_6170_6d65_6d67)?;
    unmapped_write_faults(&mut ep, &gmem, 0, GMEM_MMAP_IOVA, || v.unmap(GMEM_MMAP_IOVA, 0x1000))
}

/// Figures for docs/performance.md (not a test; `tiommu.perf=1` on the kernel command line): the
/// time of VFIO_IOMMU_MAP_DMA and VFIO_IOMMU_UNMAP_DMA of one 4 KiB page, 64 of each, through
/// whichever kernel IOMMU driver translates the endpoint. The daemon's amdvi_commands record
/// then holds what those cost in commands (compare a run without `tiommu.perf=1`).
pub fn measure_map_cost() {
    let on = std::fs::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|a| a == "tiommu.perf=1");
    if !on || need_kernel_iommu().is_err() || bind_vfio_pci(&BDF).is_err() {
        return;
    }
    let (Ok(v), Ok(mem)) = (Vfio::open(&BDF), UserMem::new(64 * 0x1000)) else { return };
    let base = 0x1000_0000u64;
    let t = std::time::Instant::now();
    for i in 0..64u64 {
        if let Err(e) = v.map(mem.addr() + i * 0x1000, base + i * 0x1000, 0x1000) {
            println!("# perf: map failed: {e}");
            return;
        }
    }
    let map = t.elapsed();
    let t = std::time::Instant::now();
    for i in 0..64u64 {
        let _ = v.unmap(base + i * 0x1000, 0x1000);
    }
    let unmap = t.elapsed();
    println!(
        "# perf: {} VFIO_IOMMU_MAP_DMA of 4 KiB: {:.1} us each, UNMAP {:.1} us each (64 of each)",
        via(),
        map.as_secs_f64() * 1e6 / 64.0,
        unmap.as_secs_f64() * 1e6 / 64.0
    );
}
