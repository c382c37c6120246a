//! `[cache.disk]`: where the disk tier lives and how large it may grow.

use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::Deserialize;

use super::format::{ALIGN, FRAME, MAX_SEGMENT, MAX_SLOTS};

/// The disk tier's settings. Sizes are humane (`"100 GiB"`, `"64 MiB"`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Directory of the segment files (created if missing). Nothing else of the node's
    /// should live there: files named `seg-*` beyond the configured size are deleted.
    pub path: PathBuf,
    /// Total bytes of segment files: the store never holds more. At least two segments.
    pub size: ByteSize,
    /// Bytes per segment file, the unit of reclaim (the oldest segment is dropped whole)
    /// and the limit on one object's size on disk. 1 MiB to 1 GiB, a multiple of 512 B.
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// Bytes the writer gathers before one write. 64 KiB up to the segment size.
    #[serde(default = "default_write_buffer")]
    pub write_buffer: ByteSize,
    /// Bytes of objects accepted but not yet written; past it an insert is refused
    /// (`queue_full`), so a disk slower than admissions costs objects, never memory.
    #[serde(default = "default_max_queue")]
    pub max_queue: ByteSize,
}

fn default_segment_size() -> ByteSize {
    ByteSize::mib(64)
}

fn default_write_buffer() -> ByteSize {
    ByteSize::mib(4)
}

fn default_max_queue() -> ByteSize {
    ByteSize::mib(64)
}

impl DiskConfig {
    /// A config with the defaults for everything but `path` and `size`.
    pub fn new(path: impl Into<PathBuf>, size: ByteSize) -> Self {
        Self {
            path: path.into(),
            size,
            segment_size: default_segment_size(),
            write_buffer: default_write_buffer(),
            max_queue: default_max_queue(),
        }
    }

    /// Segment files the store may have: `size / segment_size`, rounded down.
    pub fn segments(&self) -> u64 {
        self.size.as_u64() / self.segment_size.as_u64().max(1)
    }

    /// The largest record a segment can hold (its header, one footer entry and its trailer
    /// aside).
    pub fn max_record(&self) -> u64 {
        self.segment_size.as_u64().saturating_sub(3 * ALIGN)
    }

    /// Checks the numbers, then that `path` is a directory this process can write (creating
    /// it if needed). Each error names the setting and says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let segment = self.segment_size.as_u64();
        if !(1 << 20..=1 << 30).contains(&segment) || !segment.is_multiple_of(ALIGN) {
            return Err(format!(
                "cache.disk.segment_size = {}: must be between 1 MiB and 1 GiB and a multiple of 512 B",
                self.segment_size
            ));
        }
        debug_assert!(segment <= MAX_SEGMENT);
        if self.segments() < 2 {
            return Err(format!(
                "cache.disk.size = {} holds fewer than two segments of {}: raise size or lower segment_size",
                self.size, self.segment_size
            ));
        }
        if self.segments() > MAX_SLOTS {
            return Err(format!(
                "cache.disk.size = {} makes {} segments of {}, more than {MAX_SLOTS}: raise segment_size",
                self.size,
                self.segments(),
                self.segment_size
            ));
        }
        let buffer = self.write_buffer.as_u64();
        if buffer < u64::from(FRAME) || buffer > segment {
            return Err(format!(
                "cache.disk.write_buffer = {}: must be between 64 KiB and segment_size ({})",
                self.write_buffer, self.segment_size
            ));
        }
        if self.max_queue.as_u64() < buffer {
            return Err(format!(
                "cache.disk.max_queue = {}: must be at least write_buffer ({})",
                self.max_queue, self.write_buffer
            ));
        }
        check_writable(&self.path).map_err(|e| {
            format!(
                "cache.disk.path = {}: not a writable directory: {e}",
                self.path.display()
            )
        })
    }
}

/// Creates `dir` if needed, then creates and removes a file in it.
fn check_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<DiskConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn humane_sizes_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(&format!(
            "path = {:?}\nsize = \"10 GiB\"\n",
            dir.path().display().to_string()
        ))
        .unwrap();
        assert_eq!(config.size, ByteSize::gib(10));
        assert_eq!(config.segment_size, ByteSize::mib(64));
        assert_eq!(config.segments(), 160);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse("path = \"/x\"\nsize = \"1 GiB\"\nsegmnet_size = \"1 MiB\"\n").unwrap_err();
        assert!(err.contains("segmnet_size"), "{err}");
    }

    #[test]
    fn validation_says_what_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DiskConfig::new(dir.path(), ByteSize::mib(100));
        let err = config.validate().unwrap_err();
        assert!(err.contains("fewer than two segments"), "{err}");

        config.size = ByteSize::gib(1);
        config.segment_size = ByteSize::kib(100);
        let err = config.validate().unwrap_err();
        assert!(err.contains("segment_size"), "{err}");

        config.segment_size = ByteSize::mib(64);
        config.write_buffer = ByteSize::kib(1);
        let err = config.validate().unwrap_err();
        assert!(err.contains("write_buffer"), "{err}");

        config.write_buffer = ByteSize::mib(4);
        config.max_queue = ByteSize::mib(1);
        let err = config.validate().unwrap_err();
        assert!(err.contains("max_queue"), "{err}");
    }

    #[test]
    fn a_path_that_cannot_be_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"not a directory").unwrap();
        let config = DiskConfig::new(file.join("cache"), ByteSize::gib(1));
        let err = config.validate().unwrap_err();
        assert!(err.contains("not a writable directory"), "{err}");
    }
}
