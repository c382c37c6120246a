//! This process's memory, from `/proc/self/status`: servers started by a test run inside
//! the test process, so a server buffering what it should refuse shows here. The process
//! is shared by every test of the binary, so a test that measures it first moves to a
//! process of its own with [`alone`].

use std::process::Command;

/// Set in the child [`alone`] starts, so the test runs there instead of starting another.
const ALONE: &str = "CDN_TEST_ALONE";

/// Runs the calling test again in a child process of this test binary, with no other test
/// beside it, and returns `true` once it passed there: the caller then returns at once. In
/// that child it returns `false`, and the test runs. Other tests of the binary (edges
/// filling 32 MiB objects, twenty-node topologies) grow this process by far more than a
/// memory bound allows, so sharing the process would make the bound measure them.
pub fn alone() -> bool {
    if std::env::var_os(ALONE).is_some() {
        return false;
    }
    // The test harness names each test's thread after the test (`purge::a_flood_...`).
    let thread = std::thread::current();
    let name = thread.name().expect("called on the test's own thread");
    let binary = std::env::current_exe().expect("the test binary");
    let out = Command::new(binary)
        .args([name, "--exact", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("test result: ok. 1 passed"),
        "{name}, alone in a child process, did not pass:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Resident set size now, in bytes (`VmRSS`).
pub fn rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Peak resident set size, in bytes (`VmHWM`).
pub fn peak() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Lowers the peak to the current size (writing `5` to `/proc/self/clear_refs`, Linux 4.0
/// and later), so a later [`peak`] measures only what came after. Returns the resident
/// size to compare the peak with.
pub fn reset_peak() -> u64 {
    // Where the kernel refuses, the peak keeps its earlier value: comparing it with the
    // resident size now only makes the check stricter.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    rss()
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}
