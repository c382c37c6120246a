//! What an allocation of `n` bytes really takes: the size class the allocator rounds it
//! up to.
//!
//! The memory tier uses it twice: to weigh entries by what they hold (so a configured
//! capacity bounds the process's RSS at any object size), and to decide whether a small
//! body is cheaper inline in its head's allocation or in one of its own (a 1 KiB body
//! beside a 290 B head rounds up to 1,536 B together, 1,024 + 320 B apart).
//!
//! The classes are jemalloc's, the `cdn` binary's allocator: multiples of 16 B up to
//! 128 B, then four classes per doubling (160, 192, 224, 256, 320, ...), with no extra
//! page for large ones (built with `disable_cache_oblivious`). A large allocation (above
//! the small classes, 14 KiB) is an extent of its own whose metadata and the page-level
//! fragmentation between extents cost about 1/64 more, measured (`benches/load/memory.sh`
//! at 16 and 64 KiB). glibc's malloc rounds to 16 B with an 8 B header, which these never
//! underestimate by more than that header.

/// The largest of jemalloc's small size classes, kept in slabs.
const SMALL_MAX: usize = 14 * 1024;

/// Bytes the allocator reserves for a request of `n` bytes (zero for zero).
pub fn allocation_size(n: usize) -> usize {
    if n <= 128 {
        return n.div_ceil(16) * 16;
    }
    // 2^lg < n <= 2^(lg+1): four classes between, each 2^(lg-2) apart.
    let lg = usize::BITS - 1 - (n - 1).leading_zeros();
    let step = 1usize << (lg - 2);
    let class = n.div_ceil(step) * step;
    if class > SMALL_MAX {
        class + class / 64
    } else {
        class
    }
}

/// What a `Bytes` cloned from an owned buffer adds: its shared header (24 B, a 32 B
/// class), allocated the first time the buffer is shared.
pub const SHARED_BYTES_HEADER: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_jemallocs_size_classes() {
        let classes = [
            (0, 0),
            (1, 16),
            (100, 112),
            (128, 128),
            (129, 160),
            (256, 256),
            (257, 320),
            (284, 320),
            (384, 384),
            (385, 448),
            (1024, 1024),
            (1025, 1280),
            (1314, 1536),
            (4097, 5120),
            (14 * 1024, 14 * 1024),
            (16 * 1024, 16 * 1024 + 256),
            (16 * 1024 + 1, 20 * 1024 + 320),
            (1 << 20, (1 << 20) + (1 << 14)),
        ];
        for (n, class) in classes {
            assert_eq!(allocation_size(n), class, "{n} B");
        }
    }
}
