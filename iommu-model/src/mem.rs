//! The physical memory that tables are read from and events are written to.
//!
//! Every access is bounds-checked by the implementation and reports memory that is not there as an
//! error; nothing in this crate indexes memory any other way.

use std::fmt;

/// An access to physical memory that is not backed (outside RAM, or across its end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    pub addr: u64,
    pub len: usize,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no memory at {:#x} (+{:#x})", self.addr, self.len)
    }
}

impl std::error::Error for MemError {}

/// System physical memory as the IOMMU sees it.
pub trait PhysMem {
    /// Fill `buf` from `addr`; all of it or an error, never a part.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Store `data` at `addr`; all of it or an error, never a part.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError>;

    /// Little-endian, as every IOMMU structure in memory is.
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_u64(&mut self, addr: u64, val: u64) -> Result<(), MemError> {
        self.write(addr, &val.to_le_bytes())
    }
}

/// Memory as a byte array starting at physical address `base`: for tests, fuzzing and dumped images.
#[derive(Clone, Debug, Default)]
pub struct ByteMem {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl ByteMem {
    pub fn new(base: u64, size: usize) -> Self {
        ByteMem { base, bytes: vec![0; size] }
    }

    pub fn from_bytes(base: u64, bytes: Vec<u8>) -> Self {
        ByteMem { base, bytes }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, MemError> {
        let err = MemError { addr, len };
        let off = addr.checked_sub(self.base).ok_or(err)?;
        let off = usize::try_from(off).map_err(|_| err)?;
        let end = off.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() {
            return Err(err);
        }
        Ok(off..end)
    }
}

impl PhysMem for ByteMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(addr, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_and_refuses_outside() {
        let mut m = ByteMem::new(0x1000, 0x1000);
        m.write_u64(0x1ff8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u64(0x1ff8).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(m.read_u64(0x1ffc), Err(MemError { addr: 0x1ffc, len: 8 }));
        assert!(m.read_u64(0xff8).is_err());
        assert!(m.read_u64(u64::MAX - 3).is_err());
        assert!(m.write_u64(0x2000, 1).is_err());
    }
}
