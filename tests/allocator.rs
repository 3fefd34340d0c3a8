//! The binary turns transparent huge pages off for itself (see `main.rs`): mimalloc asks for
//! them, and zeroing 2 MiB at each first touch cost a growing pipeline more than it saved.
//! `MIMALLOC_ALLOW_THP` (mimalloc's own setting) still decides when it is given.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `THP_enabled` of `/proc/PID/status` (Linux 5.0 and later), once the process has started
/// its runtime (more than one thread: `main` has run its first line by then).
fn huge_pages_enabled_in(pid: u32) -> Option<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let threads: u32 = field("Threads:").and_then(|t| t.parse().ok()).unwrap_or(0);
        if threads > 1 {
            return field("THP_enabled:").map(|v| v != "0");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("threatpipe {pid} did not start its runtime within 30 s");
}

/// Runs the embedded pipeline with `MIMALLOC_ALLOW_THP` as given and reports whether huge
/// pages were enabled for it.
fn run_with(allow_thp: Option<&str>) -> Option<bool> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_threatpipe"));
    command.args(["run", "--rate", "100", "--no-http", "--quiet"]).stdout(Stdio::null()).stderr(Stdio::null());
    command.env_remove("MIMALLOC_ALLOW_THP");
    if let Some(value) = allow_thp {
        command.env("MIMALLOC_ALLOW_THP", value);
    }
    let mut child = command.spawn().unwrap();
    let enabled = huge_pages_enabled_in(child.id());
    let _ = child.kill();
    let _ = child.wait();
    enabled
}

#[test]
fn huge_pages_are_off_unless_mimallocs_setting_asks_for_them() {
    let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(inherited) = own.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim() != "0") else {
        eprintln!("this kernel does not report THP_enabled in /proc/PID/status; nothing to check");
        return;
    };
    assert_eq!(run_with(None), Some(false), "by default the binary turns huge pages off for itself");
    assert_eq!(run_with(Some("0")), Some(false), "mimalloc's own setting turns them off too");
    if inherited {
        assert_eq!(run_with(Some("1")), Some(true), "MIMALLOC_ALLOW_THP=1 keeps them");
    } else {
        eprintln!("this test runs with huge pages off already (inherited), so MIMALLOC_ALLOW_THP=1 cannot be checked");
    }
}
