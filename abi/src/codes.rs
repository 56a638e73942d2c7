//! Numbered codes with their names: every status, command and operation of the ABI is one of
//! these enums, so a record, a log line or a test failure can say `IO_PAGE_FAULT` instead of 2.

/// An enum of codes: `code()`, `from_code()`, `name()` (the spec's or the ABI's spelling),
/// `Display` as the name, and `ALL` in declaration order.
macro_rules! codes {
    ($(#[$m:meta])* $vis:vis enum $name:ident: $repr:ty {
        $($(#[$vm:meta])* $var:ident = $val:literal => $text:literal,)*
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        $vis enum $name {
            $($(#[$vm])* $var = $val,)*
        }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            pub const fn code(self) -> $repr {
                self as $repr
            }

            /// The code's variant; `None` for a number the ABI does not define.
            pub const fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $($val => Some($name::$var),)*
                    _ => None,
                }
            }

            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$var => $text,)*
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl From<$name> for $repr {
            fn from(c: $name) -> $repr {
                c.code()
            }
        }
    };
}

pub(crate) use codes;
