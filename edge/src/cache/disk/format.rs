//! The on-disk format: segment headers, records, footers and trailers, the key hash and the
//! packed locations the index holds. Everything here is pure (bytes in, values out), so the
//! format can be tested and read without a store.
//!
//! All integers are little-endian. Every CRC is CRC32C (Castagnoli). Checksums over a
//! record's contents are *seeded with the record's sequence number* ([`seeded_crc`]): a frame
//! of another record (say, of the record a reused segment now holds at the same place) never
//! verifies as a frame of this one.

/// Records, footers and trailers start on multiples of this.
pub const ALIGN: u64 = 512;
/// Body bytes per frame; the last frame of a body may be shorter.
pub const FRAME: u32 = 64 * 1024;
/// Version of the record and segment formats.
pub const VERSION: u8 = 1;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 48;
/// Bytes of a footer entry: key hash, offset and length in [`ALIGN`] units.
pub const FOOTER_ENTRY: usize = 16;
/// Bytes of the CRC that follows the key and meta, and each body frame.
pub const CRC: usize = 4;

const RECORD_MAGIC: [u8; 4] = *b"CDNR";
const SEGMENT_MAGIC: [u8; 8] = *b"CDNSEG01";
const TRAILER_MAGIC: [u8; 8] = *b"CDNFOOT1";

/// Bits of a packed [`Location`]: segment slot, offset and length (both in [`ALIGN`] units).
const SLOT_BITS: u32 = 20;
const UNIT_BITS: u32 = 22;
/// Segments a store may have: slots are 20 bits of a packed location.
pub const MAX_SLOTS: u64 = 1 << SLOT_BITS;
/// The largest segment a packed location can address.
pub const MAX_SEGMENT: u64 = (1 << UNIT_BITS) * ALIGN;

/// The key hash the index is keyed on and the footers persist: XXH3-64 with seed 0 and the
/// default secret. Fixed forever (changing it orphans every stored record); pinned by a
/// golden test.
pub fn key_hash(key: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(key)
}

/// CRC32C of `parts`, seeded with the record's sequence number.
pub fn seeded_crc(seq: u64, parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(crc32c::crc32c(&seq.to_le_bytes()), |crc, part| {
            crc32c::crc32c_append(crc, part)
        })
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Where a record lives: its segment slot, its offset in the segment and its length (aligned),
/// packed into one `u64` in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub slot: u32,
    pub offset: u64,
    pub len: u64,
}

impl Location {
    /// `slot` (20 bits) | offset / 512 (22 bits) | len / 512 (22 bits). Offsets and lengths
    /// are multiples of [`ALIGN`] below [`MAX_SEGMENT`], slots below [`MAX_SLOTS`] (both
    /// enforced by the config's validation).
    pub fn pack(self) -> u64 {
        debug_assert!(u64::from(self.slot) < MAX_SLOTS);
        debug_assert!(self.offset.is_multiple_of(ALIGN) && self.offset < MAX_SEGMENT);
        debug_assert!(self.len.is_multiple_of(ALIGN) && self.len < MAX_SEGMENT);
        (u64::from(self.slot) << (2 * UNIT_BITS))
            | ((self.offset / ALIGN) << UNIT_BITS)
            | (self.len / ALIGN)
    }

    pub fn unpack(packed: u64) -> Self {
        let mask = (1 << UNIT_BITS) - 1;
        Self {
            slot: (packed >> (2 * UNIT_BITS)) as u32,
            offset: ((packed >> UNIT_BITS) & mask) * ALIGN,
            len: (packed & mask) * ALIGN,
        }
    }
}

/// What a record holds. One kind today; the byte is there so that a later kind (a
/// tombstone, say) is refused by older code instead of misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A key, its caller-defined meta bytes and a body.
    Object = 1,
}

/// Why bytes are not a valid header (record, segment or trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHeader {
    /// All zeros: nothing was ever written here (the clean end of a segment's records).
    Empty,
    Magic,
    Version,
    Crc,
    Kind,
    FrameSize,
    /// Shorter than a header.
    Short,
}

/// A record's fixed header:
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | magic `CDNR` |
/// | 4 | version (1) |
/// | 5 | kind ([`RecordKind`]) |
/// | 6..8 | key length (u16) |
/// | 8..12 | meta length (u32) |
/// | 12..16 | frame size (u32) |
/// | 16..24 | body length (u64) |
/// | 24..32 | sequence number (u64, increasing in write order) |
/// | 32..40 | generation of the segment it was written into (u64) |
/// | 40..44 | CRC32C of bytes 0..40 |
/// | 44..48 | zero |
///
/// Then the key, the meta, a CRC of both ([`seeded_crc`]), and the body in frames of
/// `frame_size` bytes each followed by its CRC; then zeros up to the next [`ALIGN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub key_len: u16,
    pub meta_len: u32,
    pub frame_size: u32,
    pub body_len: u64,
    pub seq: u64,
    pub generation: u64,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER] {
        let mut out = [0u8; RECORD_HEADER];
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[4] = VERSION;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&self.key_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.meta_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.frame_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..40]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BadHeader> {
        let bytes = bytes.get(..RECORD_HEADER).ok_or(BadHeader::Short)?;
        if bytes.iter().all(|&b| b == 0) {
            return Err(BadHeader::Empty);
        }
        if bytes[0..4] != RECORD_MAGIC {
            return Err(BadHeader::Magic);
        }
        if crc32c::crc32c(&bytes[0..40]) != u32_at(bytes, 40) {
            return Err(BadHeader::Crc);
        }
        if bytes[4] != VERSION {
            return Err(BadHeader::Version);
        }
        if bytes[5] != RecordKind::Object as u8 {
            return Err(BadHeader::Kind);
        }
        let frame_size = u32_at(bytes, 12);
        if !frame_size.is_power_of_two() || !(4096..=1 << 20).contains(&frame_size) {
            return Err(BadHeader::FrameSize);
        }
        Ok(Self {
            kind: RecordKind::Object,
            key_len: u16::from_le_bytes([bytes[6], bytes[7]]),
            meta_len: u32_at(bytes, 8),
            frame_size,
            body_len: u64_at(bytes, 16),
            seq: u64_at(bytes, 24),
            generation: u64_at(bytes, 32),
        })
    }

    /// Offset of the key-and-meta CRC from the record's start.
    pub fn head_crc_offset(&self) -> u64 {
        RECORD_HEADER as u64 + u64::from(self.key_len) + u64::from(self.meta_len)
    }

    /// Offset of the first body frame from the record's start.
    pub fn body_offset(&self) -> u64 {
        self.head_crc_offset() + CRC as u64
    }

    pub fn frames(&self) -> u64 {
        self.body_len.div_ceil(u64::from(self.frame_size))
    }

    /// Offset of frame `n` from the record's start.
    pub fn frame_offset(&self, n: u64) -> u64 {
        self.body_offset() + n * (u64::from(self.frame_size) + CRC as u64)
    }

    /// Body bytes in frame `n`.
    pub fn frame_len(&self, n: u64) -> u64 {
        let start = n * u64::from(self.frame_size);
        (self.body_len - start).min(u64::from(self.frame_size))
    }

    /// Bytes of the record without its alignment padding.
    pub fn record_len(&self) -> u64 {
        self.body_offset() + self.body_len + self.frames() * CRC as u64
    }

    /// Bytes the record takes in its segment.
    pub fn aligned_len(&self) -> u64 {
        align_up(self.record_len())
    }
}

/// The first [`ALIGN`] bytes of a segment: magic `CDNSEG01` (0..8), version (8..12),
/// segment size (12..20), generation (20..28), CRC32C of 0..28 (28..32), zeros. A
/// generation is given out once per store and never reused, so it orders segments by age
/// and tells a record of this use of the file from one left by an earlier use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_size: u64,
    pub generation: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; ALIGN as usize] {
        let mut out = [0u8; ALIGN as usize];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&u32::from(VERSION).to_le_bytes());
        out[12..20].copy_from_slice(&self.segment_size.to_le_bytes());
        out[20..28].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BadHeader> {
        let bytes = bytes.get(..32).ok_or(BadHeader::Short)?;
        if bytes.iter().all(|&b| b == 0) {
            return Err(BadHeader::Empty);
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(BadHeader::Magic);
        }
        if crc32c::crc32c(&bytes[0..28]) != u32_at(bytes, 28) {
            return Err(BadHeader::Crc);
        }
        if u32_at(bytes, 8) != u32::from(VERSION) {
            return Err(BadHeader::Version);
        }
        Ok(Self {
            segment_size: u64_at(bytes, 12),
            generation: u64_at(bytes, 20),
        })
    }
}

/// The last [`ALIGN`] bytes of a sealed segment: magic `CDNFOOT1` (0..8), the segment's
/// generation (8..16), the footer's offset (16..24) and entry count (24..32), the highest
/// record sequence number in the segment (32..40), the footer's CRC32C (40..44), CRC32C of
/// 0..44 (44..48). The footer is `count` entries of [`FOOTER_ENTRY`] bytes, one per record
/// in write order: key hash (u64), offset / 512 (u32), aligned length / 512 (u32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub generation: u64,
    pub footer_offset: u64,
    pub count: u64,
    pub max_seq: u64,
    pub footer_crc: u32,
}

impl Trailer {
    pub fn encode(&self) -> [u8; ALIGN as usize] {
        let mut out = [0u8; ALIGN as usize];
        out[0..8].copy_from_slice(&TRAILER_MAGIC);
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..24].copy_from_slice(&self.footer_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.count.to_le_bytes());
        out[32..40].copy_from_slice(&self.max_seq.to_le_bytes());
        out[40..44].copy_from_slice(&self.footer_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..44]);
        out[44..48].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BadHeader> {
        let bytes = bytes.get(..48).ok_or(BadHeader::Short)?;
        if bytes.iter().all(|&b| b == 0) {
            return Err(BadHeader::Empty);
        }
        if bytes[0..8] != TRAILER_MAGIC {
            return Err(BadHeader::Magic);
        }
        if crc32c::crc32c(&bytes[0..44]) != u32_at(bytes, 44) {
            return Err(BadHeader::Crc);
        }
        Ok(Self {
            generation: u64_at(bytes, 8),
            footer_offset: u64_at(bytes, 16),
            count: u64_at(bytes, 24),
            max_seq: u64_at(bytes, 32),
            footer_crc: u32_at(bytes, 40),
        })
    }
}

/// One footer entry: a record's key hash and where it is in its segment.
pub fn encode_footer_entry(out: &mut Vec<u8>, hash: u64, location: Location) {
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(&((location.offset / ALIGN) as u32).to_le_bytes());
    out.extend_from_slice(&((location.len / ALIGN) as u32).to_le_bytes());
}

/// The footer entries in `bytes` (a multiple of [`FOOTER_ENTRY`]) of segment `slot`.
pub fn decode_footer(bytes: &[u8], slot: u32) -> impl Iterator<Item = (u64, Location)> + '_ {
    bytes.chunks_exact(FOOTER_ENTRY).map(move |entry| {
        let location = Location {
            slot,
            offset: u64::from(u32_at(entry, 8)) * ALIGN,
            len: u64::from(u32_at(entry, 12)) * ALIGN,
        };
        (u64_at(entry, 0), location)
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is persisted in footers: a change of crate, version or seed must fail here,
    /// not silently orphan every record on every node's disk.
    #[test]
    fn key_hash_is_pinned() {
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        // Golden values: another crate, version, seed or secret fails here.
        assert_eq!(key_hash(b"a"), 0xe6c6_32b6_1e96_4e1f);
        assert_eq!(
            key_hash(b"g1|example.com/index.html"),
            0xba91_2fbd_20f5_eb2d
        );
    }

    #[test]
    fn locations_pack_and_unpack() {
        let location = Location {
            slot: (MAX_SLOTS - 1) as u32,
            offset: MAX_SEGMENT - ALIGN,
            len: MAX_SEGMENT - ALIGN,
        };
        assert_eq!(Location::unpack(location.pack()), location);
        let small = Location {
            slot: 3,
            offset: 512,
            len: 1536,
        };
        assert_eq!(Location::unpack(small.pack()), small);
    }

    #[test]
    fn record_header_round_trips_and_rejects_any_flipped_byte() {
        let header = RecordHeader {
            kind: RecordKind::Object,
            key_len: 17,
            meta_len: 300,
            frame_size: FRAME,
            body_len: 200_000,
            seq: 42,
            generation: 7,
        };
        let bytes = header.encode();
        assert_eq!(RecordHeader::decode(&bytes), Ok(header));
        for at in 0..44 {
            let mut bad = bytes;
            bad[at] ^= 0x10;
            assert!(RecordHeader::decode(&bad).is_err(), "byte {at}");
        }
        assert_eq!(RecordHeader::decode(&[0u8; 48]), Err(BadHeader::Empty));
        assert_eq!(header.frames(), 4);
        assert_eq!(header.frame_len(3), 200_000 - 3 * 65536);
        assert_eq!(header.record_len(), 48 + 17 + 300 + 4 + 200_000 + 16);
    }

    #[test]
    fn segment_header_and_trailer_round_trip() {
        let header = SegmentHeader {
            segment_size: 64 << 20,
            generation: 9,
        };
        assert_eq!(SegmentHeader::decode(&header.encode()), Ok(header));
        let trailer = Trailer {
            generation: 9,
            footer_offset: 4096,
            count: 3,
            max_seq: 77,
            footer_crc: 0xdead_beef,
        };
        let bytes = trailer.encode();
        assert_eq!(Trailer::decode(&bytes), Ok(trailer));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert_eq!(Trailer::decode(&bad), Err(BadHeader::Crc));
    }

    #[test]
    fn seeded_crcs_differ_by_record() {
        assert_ne!(seeded_crc(1, &[b"frame"]), seeded_crc(2, &[b"frame"]));
        assert_eq!(seeded_crc(1, &[b"fr", b"ame"]), seeded_crc(1, &[b"frame"]));
    }
}
