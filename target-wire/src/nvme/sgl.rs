//! The 16-byte SGL descriptor: NVMe Base Specification 2.0, section 4.3.2 ("Scatter Gather
//! List (SGL)"), Figures 114-124, as in Linux `struct nvme_sgl_desc`/`nvme_keyed_sgl_desc`.
//!
//! Bytes 0-7 address, 8-11 length (keyed: 8-10 length, 11-14 key), byte 15 the SGL
//! identifier: descriptor type in bits 7:4, subtype in bits 3:0. Fabrics commands carry
//! exactly one descriptor in DPTR (SQE bytes 24-39). NVMe/TCP uses two forms (NVMe/TCP
//! Transport 1.0, section 3.3.2): a Data Block with subtype Offset for in-capsule data, and
//! a Transport Data Block (type 5h, subtype Ah) for data moved by R2T/H2CData/C2HData.
//! RDMA uses the Keyed Data Block (type 4h).

use crate::{Error, Result};

/// Length of an SGL descriptor.
pub const SGL_DESC_LEN: usize = 16;
const _: () = assert!(SglDescriptor::<&[u8]>::LEN == SGL_DESC_LEN);

code_enum! {
    /// SGL descriptor type (SGL identifier bits 7:4).
    pub enum SglType: u8 {
        DataBlock = 0x0,
        BitBucket = 0x1,
        Segment = 0x2,
        LastSegment = 0x3,
        KeyedDataBlock = 0x4,
        TransportDataBlock = 0x5,
        VendorSpecific = 0xf,
    }
}

code_enum! {
    /// SGL descriptor subtype (SGL identifier bits 3:0).
    pub enum SglSubtype: u8 {
        /// The address field is a memory address.
        Address = 0x0,
        /// The address field is an offset (into in-capsule data for fabrics).
        Offset = 0x1,
        /// Transport specific: for NVMe/TCP and RDMA Transport Data Blocks.
        Transport = 0xa,
        /// Keyed Data Block: the remote key is to be invalidated (RDMA).
        InvalidateKey = 0xf,
    }
}

wire_view! {
    /// A view of one SGL descriptor.
    pub struct SglDescriptor, len = SGL_DESC_LEN;
    /// Address (bytes 0-7): a memory address or an offset, by subtype.
    address, set_address: u64 = 0;
    /// Length (bytes 8-11) of a non-keyed descriptor.
    length, set_length: u32 = 8;
    /// SGL identifier (byte 15): type << 4 | subtype.
    identifier, set_identifier: u8 = 15;
}

impl<T: AsRef<[u8]>> SglDescriptor<T> {
    pub fn sgl_type(&self) -> SglType {
        (self.identifier() >> 4).into()
    }
    pub fn subtype(&self) -> SglSubtype {
        (self.identifier() & 0x0f).into()
    }
    /// Length of a Keyed Data Block (bytes 8-10, 24 bits).
    pub fn keyed_length(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_le_bytes([b[8], b[9], b[10], 0])
    }
    /// Key of a Keyed Data Block (bytes 11-14).
    pub fn key(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_le_bytes([b[11], b[12], b[13], b[14]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SglDescriptor<T> {
    /// Sets type and subtype. An `Unknown` value is truncated to its 4 bits.
    pub fn set_type(&mut self, t: SglType, s: SglSubtype) {
        self.set_identifier((u8::from(t) << 4) | (u8::from(s) & 0x0f));
    }
    /// Sets the 24-bit length of a Keyed Data Block (the top byte of `len` is dropped).
    pub fn set_keyed_length(&mut self, len: u32) {
        let l = len.to_le_bytes();
        self.buffer.as_mut()[8..11].copy_from_slice(&l[..3]);
    }
    pub fn set_key(&mut self, key: u32) {
        self.buffer.as_mut()[11..15].copy_from_slice(&key.to_le_bytes());
    }
}

/// The largest length a Keyed Data Block can describe.
pub const KEYED_MAX_LEN: u32 = 0x00ff_ffff;

/// The SGL descriptor forms a fabrics target accepts in DPTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SglRepr {
    /// Data Block, subtype Offset: `length` bytes of in-capsule data starting `offset`
    /// bytes into the capsule's data (NVMe/TCP: after PDO; the host writes ICDOFF, 0).
    InCapsule { offset: u64, length: u32 },
    /// Transport Data Block, subtype Transport: `length` bytes moved by the transport
    /// (NVMe/TCP R2T + H2CData for writes, C2HData for reads). The address is reserved.
    Transport { length: u32 },
    /// Keyed Data Block (RDMA): remote `address`, 24-bit `length`, remote `key`;
    /// `invalidate` is subtype Fh (Invalidate Key).
    Keyed {
        address: u64,
        length: u32,
        key: u32,
        invalidate: bool,
    },
}

impl SglRepr {
    /// Recognises the descriptor. Any other type/subtype is `Malformed`, which a target
    /// answers with [`GenericStatus::SglDescriptorTypeInvalid`](super::status::GenericStatus).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(d: &SglDescriptor<&T>) -> Result<Self> {
        match (d.sgl_type(), d.subtype()) {
            (SglType::DataBlock, SglSubtype::Offset) => Ok(Self::InCapsule {
                offset: d.address(),
                length: d.length(),
            }),
            (SglType::TransportDataBlock, SglSubtype::Transport) => {
                Ok(Self::Transport { length: d.length() })
            }
            (SglType::KeyedDataBlock, s @ (SglSubtype::Address | SglSubtype::InvalidateKey)) => {
                Ok(Self::Keyed {
                    address: d.address(),
                    length: d.keyed_length(),
                    key: d.key(),
                    invalidate: s == SglSubtype::InvalidateKey,
                })
            }
            _ => Err(Error::Malformed),
        }
    }

    /// Length of the data the descriptor describes.
    pub fn data_len(&self) -> u32 {
        match *self {
            Self::InCapsule { length, .. }
            | Self::Transport { length }
            | Self::Keyed { length, .. } => length,
        }
    }

    pub const fn buffer_len(&self) -> usize {
        SGL_DESC_LEN
    }

    /// Writes all 16 bytes (reserved ones as zero). `Malformed` if a keyed length does
    /// not fit in 24 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(
        &self,
        d: &mut SglDescriptor<&mut T>,
    ) -> Result<()> {
        d.as_bytes_mut().fill(0);
        match *self {
            Self::InCapsule { offset, length } => {
                d.set_address(offset);
                d.set_length(length);
                d.set_type(SglType::DataBlock, SglSubtype::Offset);
            }
            Self::Transport { length } => {
                d.set_length(length);
                d.set_type(SglType::TransportDataBlock, SglSubtype::Transport);
            }
            Self::Keyed {
                address,
                length,
                key,
                invalidate,
            } => {
                if length > KEYED_MAX_LEN {
                    return Err(Error::Malformed);
                }
                d.set_address(address);
                d.set_keyed_length(length);
                d.set_key(key);
                let sub = if invalidate {
                    SglSubtype::InvalidateKey
                } else {
                    SglSubtype::Address
                };
                d.set_type(SglType::KeyedDataBlock, sub);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Result<SglRepr> {
        SglRepr::parse(&SglDescriptor::new_checked(b)?)
    }

    fn emit(r: SglRepr) -> [u8; 16] {
        let mut b = [0xaau8; 16];
        r.emit(&mut SglDescriptor::new_unchecked(&mut b[..]))
            .unwrap();
        b
    }

    #[test]
    fn in_capsule() {
        // As the Linux host writes it: address = ICDOFF (0), length, 0x01 identifier.
        let b = [0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0x01];
        let r = SglRepr::InCapsule {
            offset: 0,
            length: 4096,
        };
        assert_eq!(parse(&b), Ok(r));
        assert_eq!(emit(r), b);
        assert_eq!(r.data_len(), 4096);
        let d = SglDescriptor::new_checked(&b[..]).unwrap();
        assert_eq!(d.sgl_type(), SglType::DataBlock);
        assert_eq!(d.subtype(), SglSubtype::Offset);
    }

    #[test]
    fn transport() {
        let b = [0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0x5a];
        let r = SglRepr::Transport { length: 0x20000 };
        assert_eq!(parse(&b), Ok(r));
        assert_eq!(emit(r), b);
    }

    #[test]
    fn keyed() {
        let b = [
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // address
            0x00, 0x10, 0x00, // length
            0x44, 0x33, 0x22, 0x11, // key
            0x40,
        ];
        let r = SglRepr::Keyed {
            address: 0x0102_0304_0506_0708,
            length: 4096,
            key: 0x1122_3344,
            invalidate: false,
        };
        assert_eq!(parse(&b), Ok(r));
        assert_eq!(emit(r), b);
        let mut inv = b;
        inv[15] = 0x4f;
        assert!(matches!(
            parse(&inv),
            Ok(SglRepr::Keyed {
                invalidate: true,
                ..
            })
        ));
        let mut out = [0u8; 16];
        let big = SglRepr::Keyed {
            address: 0,
            length: 1 << 24,
            key: 0,
            invalidate: false,
        };
        assert_eq!(
            big.emit(&mut SglDescriptor::new_unchecked(&mut out[..])),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn other_forms_rejected() {
        for id in [0x00u8, 0x10, 0x20, 0x30, 0x50, 0x51, 0x0a, 0x41, 0xf0] {
            let mut b = [0u8; 16];
            b[15] = id;
            assert_eq!(parse(&b), Err(Error::Malformed), "{id:#x}");
        }
        let mut b = [0u8; 16];
        b[15] = 0x23;
        let d = SglDescriptor::new_checked(&b[..]).unwrap();
        assert_eq!(d.sgl_type(), SglType::Segment);
        assert_eq!(d.subtype(), SglSubtype::Unknown(3));
        b[15] = 0x7b;
        let d = SglDescriptor::new_checked(&b[..]).unwrap();
        assert_eq!(d.sgl_type(), SglType::Unknown(7));
        assert_eq!(u8::from(d.sgl_type()), 7);
        assert_eq!(d.subtype(), SglSubtype::Unknown(0xb));
    }

    #[test]
    fn truncated() {
        assert_eq!(parse(&[0u8; 15]).err(), Some(Error::Truncated));
        assert!(SglDescriptor::new_checked(&[0u8; 0][..]).is_err());
    }
}
