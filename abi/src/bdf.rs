//! A PCI requester id (bus/device/function), the one way tiommu names a device: in event records
//! (`"00:04.0"`), on command lines (`00:04.0` or a 16-bit hex id such as `0x20`) and in ACPI
//! tables (the 16-bit DeviceID of the IVRS and the DMAR's source-id).

use std::fmt;
use std::str::FromStr;

/// Bus in bits 15:8, device in 7:3, function in 2:0 (PCIe Base 6.0 §2.2.6.2, the Requester ID).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf(pub u16);

impl Bdf {
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Bdf((bus as u16) << 8 | ((dev as u16) & 0x1f) << 3 | (func as u16) & 7)
    }
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub const fn dev(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }
    pub const fn func(self) -> u8 {
        (self.0 & 7) as u8
    }
}

impl From<u16> for Bdf {
    fn from(id: u16) -> Self {
        Bdf(id)
    }
}

impl From<Bdf> for u16 {
    fn from(b: Bdf) -> u16 {
        b.0
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus(), self.dev(), self.func())
    }
}

/// Why a string is not a requester id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadBdf(pub String);

impl fmt::Display for BadBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not bus:dev.fn (such as 00:04.0) or a 16-bit hex id (such as 0x20)", self.0)
    }
}

impl std::error::Error for BadBdf {}

impl FromStr for Bdf {
    type Err = BadBdf;

    /// `bb:dd.f` (hex bus and device, device < 32, function < 8) or a hex id with `0x`. A bare
    /// number without `0x` is refused: `32` could mean 0x32 or 00:04.0.
    fn from_str(s: &str) -> Result<Self, BadBdf> {
        let bad = || BadBdf(s.to_string());
        if let Some((bus, rest)) = s.split_once(':') {
            let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
            let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
            let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32).ok_or_else(bad)?;
            let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8).ok_or_else(bad)?;
            return Ok(Bdf::new(bus, dev, func));
        }
        let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).ok_or_else(bad)?;
        u16::from_str_radix(digits, 16).map(Bdf).map_err(|_| bad())
    }
}

impl serde::Serialize for Bdf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Bdf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Bdf;

    #[test]
    fn text_round_trips() {
        for id in [0u16, 0x20, 0x18, 0x30, 0xffff, 0x0107] {
            let b = Bdf(id);
            assert_eq!(b.to_string().parse::<Bdf>(), Ok(b));
        }
        assert_eq!(Bdf(0x20).to_string(), "00:04.0");
        assert_eq!("0x20".parse::<Bdf>(), Ok(Bdf::new(0, 4, 0)));
    }

    #[test]
    fn refuses_what_is_not_an_id() {
        for s in ["32", "00:20.0", "00:04.8", "00:04", "1:2:3.4", "0x10000", "", "zz:00.0"] {
            assert!(s.parse::<Bdf>().is_err(), "{s}");
        }
    }
}
