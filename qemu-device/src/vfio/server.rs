//! The vfio-user glue: serves one `PciFunction` over one socket with rust-vmm's vfio_user server.
//! Config space is ours (region 7); BAR accesses go to the function; QEMU's DMA_MAP messages
//! bring guest RAM (as file descriptors) into `GuestRam`; MSI and MSI-X vectors are the eventfds
//! QEMU passes with SET_IRQS.

use crate::pci::config::{ConfigSpace, MSIX_BAR, MSIX_BAR_SIZE};
use crate::vfio::function::{Irq, PciFunction};
use crate::vfio::guest_mem::GuestRam;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};

/// MSI-X and MSI vectors as eventfds. A driver enables one of the two (QEMU hands over the
/// eventfds of the enabled one and withdraws the other's), so a vector goes wherever it has one.
#[derive(Default)]
pub struct MsixIrq {
    fds: Mutex<Vec<Option<File>>>,
    msi: Mutex<Vec<Option<File>>>,
}

impl Irq for MsixIrq {
    fn raise(&self, vector: u16) {
        for set in [&self.fds, &self.msi] {
            let fds = set.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(Some(mut f)) = fds.get(usize::from(vector)).map(|f| f.as_ref()) {
                let _ = f.write_all(&1u64.to_le_bytes());
                return;
            }
        }
    }
}

pub struct FunctionBackend<F: PciFunction> {
    name: String,
    config: ConfigSpace,
    function: F,
    ram: GuestRam,
    irq: Arc<MsixIrq>,
    /// Size of each vfio region (BARs, config space); 0 where the function has none.
    sizes: Vec<u64>,
    /// Set at the client's first region access or DMA_MAP: QEMU has attached this function.
    attached: Arc<std::sync::atomic::AtomicBool>,
}

impl<F: PciFunction> FunctionBackend<F> {
    pub fn new(name: &str, function: F, ram: GuestRam, irq: Arc<MsixIrq>) -> Self {
        let bars = function.bars();
        let mut config = ConfigSpace::new(&function.ids(), &bars, function.msix_vectors(), function.msi_vectors());
        config.add_std_caps(&function.std_caps());
        if function.bus_master_always() {
            config.hardwire_bus_master();
        }
        for (off, header) in function.ext_caps() {
            config.add_ext_cap(off, header);
        }
        let mut sizes = vec![0u64; VFIO_PCI_NUM_REGIONS as usize];
        for b in &bars {
            if let Some(s) = sizes.get_mut(usize::from(b.index)) {
                *s = b.size;
            }
        }
        if function.msix_vectors() > 0 {
            sizes[usize::from(MSIX_BAR)] = MSIX_BAR_SIZE;
        }
        sizes[VFIO_PCI_CONFIG_REGION_INDEX as usize] = crate::pci::config::SIZE as u64;
        FunctionBackend { name: name.into(), config, sizes, function, ram, irq, attached: Arc::default() }
    }

    /// Whether a client has used the function yet (shared with the daemon's session).
    pub fn attached(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.attached.clone()
    }

    fn seen(&self) {
        self.attached.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The function's BAR that `len` bytes at `offset` of `region` fall in, if they lie inside it.
    /// The crate passes the client's region, offset and count through unchecked (QEMU checks them
    /// against the sizes we announced; a client that does not is answered with zeroes and its
    /// writes dropped). QEMU emulates the MSI-X table and PBA itself.
    fn bar(&self, region: u32, offset: u64, len: usize) -> Option<u8> {
        let size = self.sizes.get(region as usize).copied().unwrap_or(0);
        let inside = offset.checked_add(len as u64).is_some_and(|end| end <= size);
        (region <= 5 && region != u32::from(MSIX_BAR) && inside).then_some(region as u8)
    }

    fn regions(&self) -> Vec<ServerRegion> {
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let size = self.sizes[index as usize];
                let flags = if size > 0 { VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE } else { 0 };
                ServerRegion {
                    region_info: vfio_region_info {
                        argsz: std::mem::size_of::<vfio_region_info>() as u32,
                        index,
                        size,
                        flags,
                        ..Default::default()
                    },
                    sparse_areas: Vec::new(),
                    mmap_fd: None,
                }
            })
            .collect()
    }

    fn irqs(&self) -> Vec<IrqInfo> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| {
                let count = match index {
                    VFIO_PCI_MSIX_IRQ_INDEX => u32::from(self.function.msix_vectors()),
                    VFIO_PCI_MSI_IRQ_INDEX => u32::from(self.function.msi_vectors()),
                    _ => 0,
                };
                IrqInfo { index, count, flags: if count > 0 { VFIO_IRQ_INFO_EVENTFD } else { 0 } }
            })
            .collect()
    }

    /// Serve one client on `listener` (from `listen`) until it disconnects.
    pub fn serve(mut self, listener: UnixListener) -> Result<(), ServeError> {
        let server = Server::from_owned_fd(listener.into(), true, self.irqs(), self.regions());
        let r = server.run(&mut self).map_err(|e| ServeError { function: self.name.to_string(), detail: format!("{e:?}") });
        tracing::info!("{}: client disconnected", self.name);
        r
    }
}

/// A client's session that ended in a protocol or transport error.
#[derive(Debug, thiserror::Error)]
#[error("{function}: {detail}")]
pub struct ServeError {
    pub function: String,
    pub detail: String,
}

/// Why a function's socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{0}: not a socket path")]
    BadPath(PathBuf),
    #[error("{0} is in use by another server")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { what, path: path.to_path_buf(), source }
}

/// Listen on `path` with a socket only the daemon's user can connect to (mode 0600 from the
/// start). Binding at `path` directly would leave the socket open to others (as the umask allows)
/// until a chmod; instead it is bound inside a fresh 0700 directory beside `path`, made 0600 there,
/// and renamed into place.
pub fn listen(path: &Path) -> Result<UnixListener, SocketError> {
    prepare_socket_path(path)?;
    let name = path.file_name().ok_or_else(|| SocketError::BadPath(path.to_path_buf()))?;
    let private: PathBuf = path.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    if std::fs::symlink_metadata(&private).is_ok_and(|m| m.is_dir()) {
        // Left by an earlier daemon of the same pid that was killed between bind and rename.
        let _ = std::fs::remove_dir_all(&private);
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(io("cannot create", &private))?;
    let staged = private.join("sock");
    let result = (|| {
        let listener = UnixListener::bind(&staged).map_err(io("cannot listen on", &staged))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &staged))?;
        std::fs::rename(&staged, path).map_err(io("cannot move the socket to", path))?;
        Ok(listener)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    let _ = std::fs::remove_dir(&private);
    if result.is_ok() {
        tracing::info!("listening on {}", path.display());
    }
    result
}

/// Remove a socket the daemon created, on the way out.
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether a server is listening on the socket at `path` (a connection is accepted into its queue).
pub fn in_use(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) && UnixStream::connect(path).is_ok()
}

/// The daemon replaces a socket path only if it is a stale socket (nobody listening).
fn prepare_socket_path(path: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("cannot remove stale socket", path))
        }
        Ok(_) => Err(SocketError::NotASocket(path.to_path_buf())),
    }
}

impl<F: PciFunction> ServerBackend for FunctionBackend<F> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), std::io::Error> {
        self.seen();
        if region == VFIO_PCI_CONFIG_REGION_INDEX {
            self.config.read(offset, data);
            if (0x100..crate::pci::config::SIZE as u64).contains(&offset) && self.function.ext_config_claims(offset as u16) {
                self.function.ext_config_read(offset as u16, data);
            }
        } else if let Some(bar) = self.bar(region, offset, data.len()) {
            self.function.bar_read(bar, offset, data);
        } else {
            data.fill(0);
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.seen();
        if region == VFIO_PCI_CONFIG_REGION_INDEX {
            if (0x100..crate::pci::config::SIZE as u64).contains(&offset) && self.function.ext_config_claims(offset as u16) {
                self.function.ext_config_write(offset as u16, data);
            } else {
                self.config.write(offset, data);
                if offset < 0x100 {
                    self.function.config_written(offset);
                }
                if ConfigSpace::initiates_flr(offset, data) {
                    crate::info_limited!("{}: function-level reset", self.name);
                    self.config.flr();
                    self.function.reset();
                }
            }
        } else if let Some(bar) = self.bar(region, offset, data.len()) {
            self.function.bar_write(bar, offset, data);
        }
        Ok(())
    }

    fn dma_map(&mut self, _flags: DmaMapFlags, offset: u64, address: u64, size: u64, fd: Option<File>) -> Result<(), std::io::Error> {
        self.seen();
        // Regions without a file (ROM, VGA) cannot be shared; DMA to them fails as "no memory".
        let Some(fd) = fd else { return Ok(()) };
        tracing::debug!("{}: DMA_MAP {address:#x}+{size:#x}", self.name);
        // An error here would end the connection (the crate has no error reply); the region
        // stays unmapped instead, and DMA to it fails as to any address outside guest RAM.
        if let Err(e) = self.ram.map(address, size, fd, offset) {
            tracing::warn!("{}: DMA_MAP {address:#x}+{size:#x} not mapped: {e}", self.name);
        }
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> Result<(), std::io::Error> {
        self.ram.unmap(address, size);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), std::io::Error> {
        self.config.flr();
        self.function.reset();
        Ok(())
    }

    fn set_irqs(&mut self, index: u32, flags: u32, start: u32, count: u32, fds: Vec<File>) -> Result<(), std::io::Error> {
        tracing::debug!("{}: SET_IRQS index {index} flags {flags:#x} start {start} count {count}, {} fds", self.name, fds.len());
        let (set, n) = match index {
            VFIO_PCI_MSIX_IRQ_INDEX => (&self.irq.fds, usize::from(self.function.msix_vectors())),
            VFIO_PCI_MSI_IRQ_INDEX => (&self.irq.msi, usize::from(self.function.msi_vectors())),
            _ => return Ok(()),
        };
        tracing::debug!("{}: SET_IRQS index {index} flags {flags:#x} start {start} count {count} ({} fds)", self.name, fds.len());
        let mut v = set.lock().unwrap_or_else(|p| p.into_inner());
        v.resize_with(n, || None);
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 && flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0 {
            for (i, fd) in fds.into_iter().enumerate() {
                if let Some(slot) = v.get_mut((start as usize).saturating_add(i)) {
                    *slot = Some(fd);
                }
            }
        } else if count == 0 {
            v.iter_mut().for_each(|s| *s = None);
        }
        Ok(())
    }
}
