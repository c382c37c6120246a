//! The tokio runtime every subcommand runs on, shaped by how many cores the process has.
//!
//! With one core (a node pinned with `taskset`, a one-CPU container, or `--threads 1`)
//! the runtime is tokio's current-thread scheduler: one FIFO run queue, so when every
//! socket is readable each connection is served in turn. The work-stealing scheduler on
//! one worker has no one to steal from and splits runnable tasks between a 256-slot local
//! ring and an overflow queue it looks at only every few dozen polls; under 1,000 busy
//! connections that served some of them several times less often than others (1 KiB hits
//! on one core: p99 44-62 ms against a p50 of 3.6 ms; current-thread: p99 10-13 ms,
//! the same requests per second; BENCHMARKS.md "Tails under 1,000 connections").
//! With more cores, the multi-thread scheduler with one worker per core.

use std::num::NonZeroUsize;

/// Builds the runtime for `threads` workers; `None` takes the cores this process may run
/// on (its CPU affinity and cgroup quota, as `std::thread::available_parallelism` reads
/// them).
pub fn build(threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_thread_is_the_fifo_scheduler_and_more_are_the_work_stealing_one() {
        let flavor = |n: usize| {
            build(NonZeroUsize::new(n))
                .unwrap()
                .block_on(async { tokio::runtime::Handle::current().runtime_flavor() })
        };
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
        let workers = build(NonZeroUsize::new(3))
            .unwrap()
            .block_on(async { tokio::runtime::Handle::current().metrics().num_workers() });
        assert_eq!(workers, 3);
    }
}
