//! The progress line on the terminal: what flowed, how fast, and where it went.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::telemetry::Telemetry;

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn line(telemetry: &Telemetry, elapsed: Duration, rate: Option<f64>) -> String {
    let flow = &telemetry.flow;
    let mut parts = Vec::new();
    let generated = flow.generated.load(Ordering::Relaxed);
    if generated > 0 {
        parts.push(format!(
            "generated {} ({} attacks, {} malformed)",
            thousands(generated),
            thousands(flow.attacks_injected.load(Ordering::Relaxed)),
            thousands(flow.malformed_injected.load(Ordering::Relaxed))
        ));
    }
    for s in &telemetry.stages {
        let mut part = format!("{} {}", s.stage, thousands(s.received.load(Ordering::Relaxed)));
        let dead = s.dead_lettered.load(Ordering::Relaxed);
        if dead > 0 {
            part.push_str(&format!(" ({} dlq)", thousands(dead)));
        }
        parts.push(part);
    }
    parts.push(format!("alerts {}", thousands(flow.alerts.load(Ordering::Relaxed))));
    let rate = rate.map(|r| format!(" {:>8.0} ev/s", r)).unwrap_or_default();
    format!("[{:>5}s]{rate} | {}", elapsed.as_secs(), parts.join(" | "))
}

/// Prints a progress line every `interval` until `stop`.
pub async fn run(telemetry: Telemetry, interval: Duration, stop: CancellationToken) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let first_stage_received = |t: &Telemetry| t.stages.first().map(|s| s.received.load(Ordering::Relaxed)).unwrap_or(0);
    let mut last = (Instant::now(), first_stage_received(&telemetry));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = (Instant::now(), first_stage_received(&telemetry));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        last = now;
        eprintln!("{}", line(&telemetry, started.elapsed(), Some(rate)));
    }
}

pub fn print_summary(telemetry: &Telemetry, elapsed: Duration) {
    eprintln!("{} (stopped)", line(telemetry, elapsed, None));
}
