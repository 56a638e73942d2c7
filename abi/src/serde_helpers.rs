//! How the event records write numbers that have another natural form: addresses as `"0x..."`
//! strings (the stream stays readable), codes by their names. Reading accepts every form a
//! person or a script might write: a number, a decimal or `0x` hex string, a name in any case.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A number from a JSON number, a decimal string or a `0x` hex string.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

struct U64Visitor;

impl Visitor<'_> for U64Visitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an unsigned number, or a string with a decimal or 0x hex number")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_u64(v).ok_or_else(|| E::custom(format!("{v:?} is not a number")))
    }
}

/// A u64 written `"0x..."`; read from a number or a string in either base.
pub mod hex {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(U64Visitor)
    }

    /// The same for an optional field (absent or null: None).
    pub mod opt {
        use super::*;

        pub fn serialize<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.collect_str(&format_args!("{v:#x}")),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            struct Opt;
            impl<'de> Visitor<'de> for Opt {
                type Value = Option<u64>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("null, or a number in either base")
                }
                fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                    d.deserialize_any(U64Visitor).map(Some)
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                    Ok(Some(v))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                    U64Visitor.visit_i64(v).map(Some)
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    U64Visitor.visit_str(v).map(Some)
                }
            }
            d.deserialize_any(Opt)
        }
    }
}

/// A code read from its name (any case, `find` knows the names), a number, or a number in a
/// string; `names` lists them for the error.
pub(crate) fn code<'de, D: Deserializer<'de>>(
    d: D,
    find: impl Fn(&str) -> Option<u64>,
    names: impl Fn() -> String,
) -> Result<u64, D::Error> {
    struct Raw(Result<u64, String>);
    impl<'de> serde::Deserialize<'de> for Raw {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Raw;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a code's name or number")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                    Ok(Raw(Ok(v)))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                    U64Visitor.visit_i64(v).map(|v| Raw(Ok(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                    Ok(Raw(Err(v.to_string())))
                }
            }
            d.deserialize_any(V)
        }
    }
    match <Raw as serde::Deserialize>::deserialize(d)?.0 {
        Ok(n) => Ok(n),
        Err(s) => find(s.trim())
            .or_else(|| parse_u64(&s))
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not one of {} or a number", names()))),
    }
}

/// An enum of a few words, written as the word and read in any case.
macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($(#[$cm:meta])* $c:ident = $w:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            #[default]
            $($(#[$cm])* $c,)*
        }

        impl $name {
            pub fn word(self) -> &'static str {
                match self {
                    $($name::$c => $w,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.word())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.word())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $(if s.eq_ignore_ascii_case($w) {
                    return Ok($name::$c);
                })*
                Err(serde::de::Error::custom(format!("{s:?} is not one of {}", [$($w),*].join(", "))))
            }
        }
    };
}

pub(crate) use words;
