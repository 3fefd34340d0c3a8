//! The `threatpipe` binary: logging setup, then the CLI.

use clap::Parser;

/// mimalloc instead of glibc malloc: the hot path allocates many small strings (Avro decode
/// builds a value tree, rsigma lowercases field values); glibc spent a fifth of decode time
/// in malloc/free/consolidate. See load/README.md for the before/after figures, and
/// `threatpipe::allocator` for how it is called.
#[global_allocator]
static GLOBAL: threatpipe::allocator::Mimalloc = threatpipe::allocator::Mimalloc;

/// Transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` (mimalloc's
/// own setting) is given. mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so
/// the first touch of each 2 MiB region zeroes all of it in the page fault. A pipeline's
/// memory grows for minutes (windows, baselines, buffers), and that zeroing was 8-13% of
/// the pipeline instance's extra CPU over a pass-through's in `perf` (two pairs), on a VM
/// where a fresh page is dear. Off, pages are zeroed 4 KiB at a time as they are
/// used: an embedded run of 300,000 events spent 0.11 s in the kernel instead of 0.50 s,
/// and 6.90 s of CPU instead of 7.21 s, with 145 MB resident instead of 173 MB
/// (load/README.md, session 29). `MIMALLOC_ALLOW_THP=0` does the same from mimalloc's side;
/// `=1` keeps huge pages.
fn huge_pages_off_unless_asked() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integers only and sets a flag of this process.
        // It cannot fail in a way that matters: huge pages stay as they were.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

fn main() -> std::process::ExitCode {
    huge_pages_off_unless_asked();
    let filter = tracing_subscriber::EnvFilter::try_from_env("THREATPIPE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_writer(std::io::stderr).init();
    let cli = threatpipe::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(threatpipe::cli::main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
