//! `cdn edge` (or `cdn shield`) as a child process, for what only a process can show:
//! signals (SIGHUP, SIGUSR1), file watching, and upgrades that pass sockets between
//! processes. Killed when dropped.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `cdn edge --config FILE [ARGS]`.
pub struct NodeProcess {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Starts `cdn edge --config <config> <args>` and waits for the line it prints once it
    /// listens (where it reads its addresses from).
    pub fn edge(config: &Path, args: &[&str]) -> Self {
        // Its log goes to an unnamed file, read back only to say why it did not start.
        let mut log = tempfile::tempfile().expect("a file for the edge's log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cdn"))
            .args(["edge", "--config"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("the log file"))
            .spawn()
            .expect("cdn edge starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the edge says where it listens");
        let mut addr = |after: &str| -> SocketAddr {
            line.split(after)
                .nth(1)
                .and_then(|rest| rest.split([',', ' ', '\n']).next())
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| {
                    let status = child.wait();
                    let mut said = String::new();
                    let _ = log.seek(SeekFrom::Start(0));
                    let _ = log.read_to_string(&mut said);
                    panic!(
                        "no address after {after:?} in {line:?}: the edge {status:?}, said {said:?}"
                    )
                })
        };
        let (public, admin) = (addr("serving on http://"), addr("admin on http://"));
        Self {
            child,
            public,
            admin,
        }
    }

    /// Sends signal `name` (`HUP`, `USR1`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }
}

/// Sends signal `name` (`HUP`, `INT`, `KILL`, ...) to process `pid`, which must exist.
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{name} {pid}");
}
