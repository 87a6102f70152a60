//! NVMe base wire structures: NVM Express Base Specification 2.0 (section 3.3.3 "Command
//! Format", 4.1 "Submission Queue Entry", 4.6 "Completion Queue Entry", 4.3 "Scatter Gather
//! List", 5 "Admin Command Set", 5.15 "Get Log Page", 5.17 "Identify") with the NVM Command
//! Set Specification 1.0 (3 "I/O Commands") and NVMe over Fabrics 1.1 / Base 2.0 section 6
//! ("Fabrics Command Set") and the Discovery Log Page.
//!
//! Everything is little-endian. Each fixed structure is a view `Foo<T: AsRef<[u8]>>` made
//! with `new_checked`, which checks the buffer is at least `Foo::LEN` bytes once; after that
//! no accessor can panic. Structures the controller returns (Identify data, log pages) are
//! written through the same views' setters into a buffer the caller zeroed.
//!
//! - [`sqe`]: the 64-byte submission queue entry and command-specific dwords.
//! - [`sgl`]: the 16-byte SGL descriptor (in-capsule, transport and keyed data blocks).
//! - [`cqe`]: the 16-byte completion queue entry.
//! - [`status`]: status code type and status codes.
//! - [`opcode`]: admin, NVM I/O and fabrics command opcodes; CNS, log page and feature IDs.
//! - [`fabrics`]: Connect, Property Get/Set, and the Connect data.
//! - [`properties`]: controller properties (CAP, VS, CC, CSTS, NSSR).
//! - [`identify`]: Identify Controller/Namespace, NSID lists, namespace ID descriptors.
//! - [`log`]: Error Information, SMART/Health, Firmware Slot, Changed Namespace List,
//!   Commands Supported and Effects, Discovery Log Page.

use crate::{Error, Result};

/// Generates a protocol-code enum with an `Unknown` arm and `From` conversions both ways.
macro_rules! code_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident : $repr:ty {
            $( $(#[$vm:meta])* $var:ident = $val:literal, )*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vm])* $var, )*
            /// A value this crate does not name.
            Unknown($repr),
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                match v {
                    $( $val => Self::$var, )*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                match v {
                    $( $name::$var => $val, )*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

/// Generates a fixed-length view type with `new_checked`/`new_unchecked`, typed
/// little-endian getters and (on `AsMut` buffers) setters at fixed offsets.
macro_rules! wire_view {
    (
        $(#[$m:meta])*
        pub struct $name:ident, len = $len:expr;
        $( $(#[$fm:meta])* $get:ident, $set:ident : $ty:ty = $off:expr; )*
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        // Every field lies inside the structure.
        const _: () = {
            $(
                let end = $off + core::mem::size_of::<$ty>();
                assert!(end <= $len);
            )*
        };

        impl<T: AsRef<[u8]>> $name<T> {
            /// Length of the structure in bytes.
            pub const LEN: usize = $len;

            /// Wraps a buffer without checking its length: only for emitting into a
            /// buffer of at least [`Self::LEN`] bytes.
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps a buffer of at least [`Self::LEN`] bytes.
            pub fn new_checked(buffer: T) -> $crate::Result<Self> {
                if buffer.as_ref().len() < Self::LEN {
                    return Err($crate::Error::Truncated);
                }
                Ok(Self { buffer })
            }

            /// The wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The structure's bytes (the first [`Self::LEN`] of the buffer).
            pub fn as_bytes(&self) -> &[u8] {
                &self.buffer.as_ref()[..Self::LEN]
            }

            $(
                $(#[$fm])*
                pub fn $get(&self) -> $ty {
                    <$ty as $crate::nvme::Field>::read(self.buffer.as_ref(), $off)
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// The structure's bytes, writable.
            pub fn as_bytes_mut(&mut self) -> &mut [u8] {
                &mut self.buffer.as_mut()[..Self::LEN]
            }

            $(
                $(#[$fm])*
                pub fn $set(&mut self, value: $ty) {
                    <$ty as $crate::nvme::Field>::write(self.buffer.as_mut(), $off, value);
                }
            )*
        }
    };
}

pub mod cqe;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod properties;
pub mod sgl;
pub mod sqe;
pub mod status;

pub use cqe::{Cqe, CqeRepr};
pub use fabrics::{ConnectData, ConnectDataRepr, ConnectRepr, PropertyGetRepr, PropertySetRepr};
pub use opcode::{AdminOpcode, FabricsType, IoOpcode};
pub use sgl::{SglDescriptor, SglRepr};
pub use sqe::Sqe;
pub use status::{Sct, Status};

/// The NSID that means "all namespaces" (or, for some commands, "the controller").
pub const NSID_ALL: u32 = 0xffff_ffff;
/// Size of an NQN field in the Connect data, Identify Controller and the Discovery Log.
pub const NQN_FIELD_LEN: usize = 256;
/// The longest NQN the spec allows (NVMe Base 2.0, section 4.5 "NVMe Qualified Names"),
/// not counting the terminating NUL.
pub const NQN_MAX_LEN: usize = 223;
/// The well-known NQN of a discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// A fixed-width little-endian integer at a byte offset. Callers have checked the buffer
/// length (through a view's `new_checked`), so the indexing cannot fail.
pub(crate) trait Field: Sized {
    fn read(b: &[u8], at: usize) -> Self;
    fn write(b: &mut [u8], at: usize, v: Self);
}

macro_rules! le_field {
    ($($ty:ty),*) => {$(
        impl Field for $ty {
            fn read(b: &[u8], at: usize) -> Self {
                let mut a = [0u8; core::mem::size_of::<$ty>()];
                a.copy_from_slice(&b[at..at + core::mem::size_of::<$ty>()]);
                <$ty>::from_le_bytes(a)
            }
            fn write(b: &mut [u8], at: usize, v: Self) {
                b[at..at + core::mem::size_of::<$ty>()].copy_from_slice(&v.to_le_bytes());
            }
        }
    )*};
}
le_field!(u8, u16, u32, u64, u128);

/// Reads a NUL-terminated UTF-8 string (an NQN) from a fixed-size field: the text before
/// the first NUL. `Malformed` if there is no NUL in the field or the text is not UTF-8.
pub fn nul_terminated(field: &[u8]) -> Result<&str> {
    let end = field.iter().position(|&b| b == 0).ok_or(Error::Malformed)?;
    core::str::from_utf8(&field[..end]).map_err(|_| Error::Malformed)
}

/// Writes `s` into a fixed-size field followed by NULs. `Malformed` if `s` contains a NUL
/// or leaves no room for the terminator.
pub fn put_nul_terminated(field: &mut [u8], s: &str) -> Result<()> {
    let b = s.as_bytes();
    if b.len() >= field.len() || b.contains(&0) {
        return Err(Error::Malformed);
    }
    field[..b.len()].copy_from_slice(b);
    field[b.len()..].fill(0);
    Ok(())
}

/// Reads an ASCII field padded with spaces (or NULs, which some hosts use): the text with
/// trailing spaces and NULs removed. `Malformed` if it is not ASCII.
pub fn space_padded(field: &[u8]) -> Result<&str> {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    let text = &field[..end];
    if !text.is_ascii() {
        return Err(Error::Malformed);
    }
    core::str::from_utf8(text).map_err(|_| Error::Malformed)
}

/// Writes ASCII `s` into a fixed-size field padded with spaces (Identify SN/MN/FR,
/// Discovery TRSVCID/TRADDR). `Malformed` if `s` is longer than the field or not printable
/// ASCII.
pub fn put_space_padded(field: &mut [u8], s: &str) -> Result<()> {
    let b = s.as_bytes();
    if b.len() > field.len() || !b.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(Error::Malformed);
    }
    field[..b.len()].copy_from_slice(b);
    field[b.len()..].fill(b' ');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_terminated_field() {
        let mut f = [0u8; 8];
        put_nul_terminated(&mut f, "nqn.x").unwrap();
        assert_eq!(&f, b"nqn.x\0\0\0");
        assert_eq!(nul_terminated(&f), Ok("nqn.x"));
        assert_eq!(
            put_nul_terminated(&mut f, "12345678"),
            Err(Error::Malformed)
        );
        assert_eq!(put_nul_terminated(&mut f, "a\0b"), Err(Error::Malformed));
        assert_eq!(nul_terminated(b"abcd"), Err(Error::Malformed));
        assert_eq!(nul_terminated(b"\xff\xfe\0"), Err(Error::Malformed));
        assert_eq!(nul_terminated(b"\0abc"), Ok(""));
    }

    #[test]
    fn space_padded_field() {
        let mut f = [0u8; 6];
        put_space_padded(&mut f, "ab").unwrap();
        assert_eq!(&f, b"ab    ");
        assert_eq!(space_padded(&f), Ok("ab"));
        assert_eq!(space_padded(b"4420\0\0"), Ok("4420"));
        assert_eq!(space_padded(b"      "), Ok(""));
        assert_eq!(put_space_padded(&mut f, "1234567"), Err(Error::Malformed));
        assert_eq!(put_space_padded(&mut f, "caf\u{e9}"), Err(Error::Malformed));
        assert_eq!(space_padded(b"\xe9  "), Err(Error::Malformed));
    }

    #[test]
    fn le_fields() {
        let mut b = [0u8; 16];
        u128::write(&mut b, 0, 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100);
        assert_eq!(b, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(u16::read(&b, 1), 0x0201);
        assert_eq!(u32::read(&b, 4), 0x0706_0504);
        assert_eq!(u64::read(&b, 8), 0x0f0e_0d0c_0b0a_0908);
    }
}
