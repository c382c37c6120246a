//! Opening a store's directory: which segments hold what, the index rebuilt from their
//! footers, and the open segment scanned record by record.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::RecoveryReport;
use super::format::{
    ALIGN, BadHeader, CRC, FOOTER_ENTRY, Location, RECORD_HEADER, RecordHeader, SegmentHeader,
    Trailer, decode_footer, seeded_crc,
};
use super::index::Index;

/// Bytes read at a time when scanning a segment.
const WINDOW: usize = 4 << 20;

pub(super) fn segment_path(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("seg-{slot:08}"))
}

/// Opens (creating it if asked) the file of segment `slot`, `segment_size` bytes long.
pub(super) fn open_segment(dir: &Path, slot: u32, segment_size: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(segment_path(dir, slot))?;
    if file.metadata()?.len() != segment_size {
        file.set_len(segment_size)?;
    }
    Ok(file)
}

/// The segment being appended to when the store opened.
#[derive(Debug)]
pub(super) struct OpenSegment {
    pub slot: u32,
    pub generation: u64,
    /// Where the next record goes: the end of the last record that checked out.
    pub end: u64,
    /// Its footer so far (encoded entries).
    pub footer: Vec<u8>,
    pub max_seq: u64,
}

/// Everything the store starts from.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Per slot: its file, if it exists.
    pub files: Vec<Option<File>>,
    /// Per slot: the generation of its segment, 0 when free.
    pub generations: Vec<u64>,
    /// Per slot: bytes of records.
    pub used: Vec<u64>,
    /// Segments that take no more records, oldest first (sealed, or left unsealed).
    pub full: Vec<u32>,
    /// Slots holding no segment.
    pub free: Vec<u32>,
    pub open: Option<OpenSegment>,
    pub index: Index,
    pub next_generation: u64,
    pub next_seq: u64,
    pub report: RecoveryReport,
}

/// A sealed segment's footer, if its trailer and footer check out for `generation`.
pub(super) struct Footer {
    pub entries: Vec<u8>,
    pub offset: u64,
    pub max_seq: u64,
}

/// Reads the trailer of the segment in `file`; `None` unless it is the trailer of
/// `generation`.
fn read_trailer(file: &File, generation: u64, segment_size: u64) -> Option<Trailer> {
    let mut bytes = [0u8; ALIGN as usize];
    file.read_exact_at(&mut bytes, segment_size - ALIGN).ok()?;
    let trailer = Trailer::decode(&bytes).ok()?;
    let footer_end = trailer
        .footer_offset
        .checked_add(trailer.count.checked_mul(FOOTER_ENTRY as u64)?)?;
    (trailer.generation == generation
        && trailer.footer_offset >= ALIGN
        && trailer.footer_offset.is_multiple_of(ALIGN)
        && footer_end <= segment_size - ALIGN)
        .then_some(trailer)
}

/// Reads the footer the trailer of `file` points at, checked against its CRC.
pub(super) fn read_footer(file: &File, generation: u64, segment_size: u64) -> Option<Footer> {
    let trailer = read_trailer(file, generation, segment_size)?;
    let mut entries = vec![0u8; trailer.count as usize * FOOTER_ENTRY];
    file.read_exact_at(&mut entries, trailer.footer_offset)
        .ok()?;
    (crc32c::crc32c(&entries) == trailer.footer_crc).then_some(Footer {
        entries,
        offset: trailer.footer_offset,
        max_seq: trailer.max_seq,
    })
}

/// What a record-by-record scan of a segment found.
struct Scan {
    footer: Vec<u8>,
    end: u64,
    max_seq: u64,
    bytes: u64,
    /// The scan stopped at a record of this segment that did not check out.
    torn: bool,
}

/// A window over a segment file, refilled as the scan moves on.
struct Window<'a> {
    file: &'a File,
    start: u64,
    buf: Vec<u8>,
    limit: u64,
}

impl Window<'_> {
    fn get(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let end = offset + len as u64;
        if end > self.limit {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if offset < self.start || end > self.start + self.buf.len() as u64 {
            let size = (WINDOW as u64).max(len as u64).min(self.limit - offset);
            self.buf.resize(size as usize, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

/// Whether the record at `offset` checks out (key and meta, every frame); its key's hash if
/// so.
fn check_record(
    window: &mut Window<'_>,
    offset: u64,
    header: &RecordHeader,
    hash: fn(&[u8]) -> u64,
) -> io::Result<Option<u64>> {
    let head = window.get(offset, header.body_offset() as usize)?;
    let (key_and_meta, crc) = head[RECORD_HEADER..].split_at(head.len() - RECORD_HEADER - CRC);
    if seeded_crc(header.seq, &[key_and_meta]).to_le_bytes() != crc {
        return Ok(None);
    }
    let key_hash = hash(&key_and_meta[..usize::from(header.key_len)]);
    for n in 0..header.frames() {
        let len = header.frame_len(n) as usize;
        let frame = window.get(offset + header.frame_offset(n), len + CRC)?;
        if seeded_crc(header.seq, &[&frame[..len]]).to_le_bytes() != frame[len..] {
            return Ok(None);
        }
    }
    Ok(Some(key_hash))
}

/// Scans the records of segment `slot` (of `generation`) from its start, checking each,
/// until the first that does not check out or belongs to an earlier use of the file.
fn scan(
    file: &File,
    slot: u32,
    generation: u64,
    segment_size: u64,
    hash: fn(&[u8]) -> u64,
) -> io::Result<Scan> {
    let limit = segment_size - ALIGN;
    let mut window = Window {
        file,
        start: 0,
        buf: Vec::new(),
        limit,
    };
    let mut scan = Scan {
        footer: Vec::new(),
        end: ALIGN,
        max_seq: 0,
        bytes: 0,
        torn: false,
    };
    let mut last_seq = None;
    while scan.end + RECORD_HEADER as u64 <= limit {
        let header = match RecordHeader::decode(window.get(scan.end, RECORD_HEADER)?) {
            Ok(header) => header,
            // Never written, or the leftovers of an earlier use of the file.
            Err(BadHeader::Empty | BadHeader::Magic) => break,
            Err(_) => {
                scan.torn = true;
                break;
            }
        };
        // A record of an earlier use of the file, or older than the one before it.
        if header.generation != generation || last_seq.is_some_and(|seq| header.seq <= seq) {
            break;
        }
        let len = header.aligned_len();
        // Room for the record and one footer entry before the trailer: the writer never
        // puts one past that.
        if scan.end + len + (scan.footer.len() + FOOTER_ENTRY) as u64 > limit {
            scan.torn = true;
            break;
        }
        let Some(key_hash) = check_record(&mut window, scan.end, &header, hash)? else {
            scan.torn = true;
            break;
        };
        let location = Location {
            slot,
            offset: scan.end,
            len,
        };
        super::format::encode_footer_entry(&mut scan.footer, key_hash, location);
        last_seq = Some(header.seq);
        scan.max_seq = header.seq;
        scan.bytes += len;
        scan.end += len;
    }
    Ok(scan)
}

/// Opens the store in `dir`: deletes the segment files beyond `slots`, reads every
/// segment's header, rebuilds the index from the footers of sealed segments (oldest
/// first, so a key's newest record wins) and scans the others.
pub(super) fn recover(
    dir: &Path,
    segment_size: u64,
    slots: u32,
    hash: fn(&[u8]) -> u64,
) -> io::Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    remove_beyond(dir, slots)?;
    let mut files: Vec<Option<File>> = Vec::with_capacity(slots as usize);
    let mut segments = Vec::new();
    for slot in 0..slots {
        if !segment_path(dir, slot).exists() {
            files.push(None);
            continue;
        }
        let file = open_segment(dir, slot, segment_size)?;
        let mut bytes = [0u8; ALIGN as usize];
        file.read_exact_at(&mut bytes, 0)?;
        if let Ok(header) = SegmentHeader::decode(&bytes)
            && header.segment_size == segment_size
        {
            segments.push((header.generation, slot));
        }
        files.push(Some(file));
    }
    segments.sort_unstable();

    let mut recovered = Recovered {
        generations: vec![0; slots as usize],
        used: vec![0; slots as usize],
        full: Vec::new(),
        free: Vec::new(),
        open: None,
        index: Index::default(),
        next_generation: segments.last().map_or(1, |&(generation, _)| generation + 1),
        next_seq: 1,
        report: RecoveryReport::default(),
        files: Vec::new(),
    };
    // Footers first: their sizes tell how large the index will be.
    let footers: Vec<Option<Footer>> = segments
        .iter()
        .map(|&(generation, slot)| {
            let file = files[slot as usize].as_ref().expect("a segment has a file");
            read_footer(file, generation, segment_size)
        })
        .collect();
    let total: usize = footers
        .iter()
        .flatten()
        .map(|footer| footer.entries.len() / FOOTER_ENTRY)
        .sum();
    recovered.index.reserve(total);

    let last = segments.len().saturating_sub(1);
    let mut max_seq = 0;
    for (n, (&(generation, slot), footer)) in segments.iter().zip(footers).enumerate() {
        recovered.generations[slot as usize] = generation;
        let (entries, end, bytes, seq) = match footer {
            Some(footer) => {
                recovered.report.sealed_segments += 1;
                let bytes = decode_footer(&footer.entries, slot)
                    .map(|(_, l)| l.len)
                    .sum();
                (footer.entries, footer.offset, bytes, footer.max_seq)
            }
            None => {
                let file = files[slot as usize].as_ref().expect("a segment has a file");
                let scan = scan(file, slot, generation, segment_size, hash)?;
                recovered.report.scanned_segments += 1;
                recovered.report.torn_records += u64::from(scan.torn);
                if n == last {
                    recovered.open = Some(OpenSegment {
                        slot,
                        generation,
                        end: scan.end,
                        footer: scan.footer.clone(),
                        max_seq: scan.max_seq,
                    });
                }
                (scan.footer, scan.end, scan.bytes, scan.max_seq)
            }
        };
        for (key_hash, location) in decode_footer(&entries, slot) {
            recovered.index.insert(key_hash, location);
        }
        recovered.used[slot as usize] = end - ALIGN;
        recovered.report.bytes += bytes;
        max_seq = max_seq.max(seq);
        if recovered.open.as_ref().is_none_or(|open| open.slot != slot) {
            recovered.full.push(slot);
        }
    }
    recovered.next_seq = max_seq + 1;
    recovered.report.objects = recovered.index.len() as u64;
    // Free slots, lowest given out first.
    recovered.free = (0..slots)
        .rev()
        .filter(|&slot| recovered.generations[slot as usize] == 0)
        .collect();
    recovered.files = files;
    Ok(recovered)
}

/// Deletes the segment files of slots `slots` and up (left by a larger `size`).
fn remove_beyond(dir: &Path, slots: u32) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(slot) = name
            .to_str()
            .and_then(|name| name.strip_prefix("seg-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if slot >= u64::from(slots) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
