//! This process's memory, from `/proc/self/status`: servers started by a test run inside
//! the test process, so a server buffering what it should refuse shows here.

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
