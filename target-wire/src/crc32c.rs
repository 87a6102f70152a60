//! CRC32C (Castagnoli), the header and data digest of NVMe/TCP (NVMe/TCP Transport
//! Specification 1.0, section 3.6.2.x "Digests") and iSCSI (RFC 7143, section 13.1).
//!
//! One function for everyone: with the `std` feature it is the `crc32c` crate (SSE4.2 or
//! ARMv8 CRC instructions, detected at run time); without it, a table-driven software
//! version (slicing by 8), which the tests check against the crate and the RFC's vectors.

/// The CRC32C of `data`, as it goes on the wire (little-endian for NVMe/TCP and iSCSI).
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Continues a CRC32C over more data: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        ::crc32c::crc32c_append(crc, data)
    }
    #[cfg(not(feature = "std"))]
    {
        software::append(crc, data)
    }
}

#[cfg_attr(
    all(feature = "std", not(test)),
    expect(dead_code, reason = "with std only the tests compare against it")
)]
mod software {
    /// The reflected Castagnoli polynomial.
    const POLY: u32 = 0x82F6_3B78;

    const TABLES: [[u32; 256]; 8] = {
        let mut t = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut k = 0;
            while k < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
                k += 1;
            }
            t[0][i] = crc;
            i += 1;
        }
        let mut n = 1;
        while n < 8 {
            let mut i = 0;
            while i < 256 {
                let prev = t[n - 1][i];
                t[n][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
                i += 1;
            }
            n += 1;
        }
        t
    };

    pub(super) fn append(crc: u32, data: &[u8]) -> u32 {
        let mut crc = !crc;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            crc = TABLES[7][(lo & 0xff) as usize]
                ^ TABLES[6][((lo >> 8) & 0xff) as usize]
                ^ TABLES[5][((lo >> 16) & 0xff) as usize]
                ^ TABLES[4][(lo >> 24) as usize]
                ^ TABLES[3][(hi & 0xff) as usize]
                ^ TABLES[2][((hi >> 8) & 0xff) as usize]
                ^ TABLES[1][((hi >> 16) & 0xff) as usize]
                ^ TABLES[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            crc = (crc >> 8) ^ TABLES[0][((crc ^ u32::from(b)) & 0xff) as usize];
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 appendix B.4 test vectors (also in RFC 7143's references).
    const VECTORS: [(&[u8], u32); 4] = [
        (&[0u8; 32], 0x8A91_36AA),
        (&[0xffu8; 32], 0x62A8_AB43),
        (b"123456789", 0xE306_9283),
        (b"", 0),
    ];

    #[test]
    fn known_vectors() {
        for (data, want) in VECTORS {
            assert_eq!(crc32c(data), want, "{data:?}");
            assert_eq!(software::append(0, data), want, "software, {data:?}");
        }
        let ascending: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn append_equals_whole_and_software_matches_at_every_split() {
        let data: [u8; 77] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        let whole = crc32c(&data);
        for split in 0..data.len() {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), whole, "split {split}");
            assert_eq!(
                software::append(software::append(0, a), b),
                whole,
                "software split {split}"
            );
        }
    }
}
