//! Per-event features: the numbers the models see, with names an analyst can read.
//!
//! Every feature has a stable name (`class.authentication`, `url.entropy`, `f.src_bytes` …)
//! so a model file lists the names it was trained on, scoring looks them up by name (missing
//! = 0), and explanations name them. Text fields contribute statistics (length, entropy,
//! character classes, longest token), not their words, except for a few structural words of
//! prompts; producer-supplied numeric attributes (`event.features`, as flow records carry)
//! come in as `f.<name>`, log-scaled so heavy tails do not dominate.

use std::collections::BTreeMap;

use crate::event::{Event, EventClass};

/// Feature name → value for one event (sorted, so vectors and explanations are stable).
pub type Features = BTreeMap<String, f64>;

/// Signed log scale: keeps order and sign, tames heavy tails (bytes, counts, durations).
pub fn slog(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

/// Shannon entropy in bits per character.
pub fn entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut total = 0u32;
    for b in text.bytes() {
        counts[b as usize] += 1;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    let n = f64::from(total);
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

/// Statistics of one text field under `prefix`.
fn text_stats(prefix: &str, text: &str, out: &mut Features) {
    let len = text.chars().count() as f64;
    let (mut upper, mut digit, mut special, mut space) = (0.0, 0.0, 0.0, 0.0);
    for c in text.chars() {
        if c.is_uppercase() {
            upper += 1.0;
        } else if c.is_ascii_digit() {
            digit += 1.0;
        } else if c.is_whitespace() {
            space += 1.0;
        } else if !c.is_alphanumeric() {
            special += 1.0;
        }
    }
    let per = |x: f64| if len > 0.0 { x / len } else { 0.0 };
    let longest = text.split(|c: char| c.is_whitespace() || c == '&' || c == '?' || c == '/').map(str::len).max().unwrap_or(0);
    // Longest run of base64 alphabet: encoded payloads.
    let mut run = 0usize;
    let mut longest_b64 = 0usize;
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            run += 1;
            longest_b64 = longest_b64.max(run);
        } else {
            run = 0;
        }
    }
    let quotes = text.bytes().filter(|&b| b == b'\'' || b == b'"').count() as f64;
    let terminators = text.matches(';').count() as f64 + text.matches("--").count() as f64;
    let angle = text.bytes().filter(|&b| b == b'<' || b == b'>').count() as f64;
    for (name, value) in [
        ("len", slog(len)),
        ("entropy", entropy(text)),
        ("upper_ratio", per(upper)),
        ("digit_ratio", per(digit)),
        ("special_ratio", per(special)),
        ("spaces", slog(space)),
        ("longest_token", slog(longest as f64)),
        ("longest_base64_run", slog(longest_b64 as f64)),
        ("quotes", slog(quotes)),
        ("terminators", slog(terminators)),
        ("angle_brackets", slog(angle)),
    ] {
        out.insert(format!("{prefix}.{name}"), value);
    }
}

/// Words that talk about the conversation itself rather than a task: instruction overrides
/// and prompt-leak attempts use them, everyday prompts rarely do.
const PROMPT_META_WORDS: &[&str] =
    &["ignore", "instructions", "previous", "above", "system", "prompt", "reveal", "pretend", "rules", "restrictions", "verbatim", "developer", "hidden"];

fn level_rank(level: &str) -> f64 {
    match level {
        "critical" => 4.0,
        "high" => 3.0,
        "medium" => 2.0,
        "low" => 1.0,
        _ => 0.0,
    }
}

fn public_ip(ip: Option<&str>) -> Option<f64> {
    let ip: std::net::IpAddr = ip?.parse().ok()?;
    let private = match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    Some(if private { 0.0 } else { 1.0 })
}

/// The features of one event.
pub fn event_features(event: &Event) -> Features {
    let mut out = Features::new();
    for class in EventClass::ALL {
        out.insert(format!("class.{}", class.as_str()), f64::from(u8::from(event.class == class)));
    }
    let seconds = (event.time_us / 1_000_000).rem_euclid(86_400) as f64;
    let angle = seconds / 86_400.0 * std::f64::consts::TAU;
    out.insert("time.hour_sin".into(), angle.sin());
    out.insert("time.hour_cos".into(), angle.cos());
    out.insert("outcome.failure".into(), f64::from(u8::from(event.outcome.as_deref() == Some("failure"))));
    let blocked = matches!(event.action.as_deref(), Some("blocked" | "deny" | "denied" | "drop" | "dropped" | "reject"));
    out.insert("action.blocked".into(), f64::from(u8::from(blocked)));
    out.insert("src.public".into(), public_ip(event.src_ip()).unwrap_or(0.0));
    out.insert("dst.public".into(), public_ip(event.dst_ip()).unwrap_or(0.0));
    if let Some(port) = event.dst.as_ref().and_then(|d| d.port) {
        out.insert("dst.port_log".into(), slog(f64::from(port)));
        out.insert("dst.port_privileged".into(), f64::from(u8::from(port < 1024)));
    }
    if let Some(http) = &event.http {
        if let Some(status) = http.status {
            out.insert("http.status_class".into(), f64::from(status / 100));
            out.insert("http.status_error".into(), f64::from(u8::from(status >= 400)));
        }
        out.insert("http.bytes_out".into(), slog(http.bytes_out.unwrap_or(0) as f64));
        out.insert("http.bytes_in".into(), slog(http.bytes_in.unwrap_or(0) as f64));
        if let Some(url) = &http.url {
            text_stats("url", url, &mut out);
        }
    }
    if let Some(command) = event.process.as_ref().and_then(|p| p.command_line.as_deref()) {
        text_stats("cmd", command, &mut out);
    }
    if let Some(query) = event.dns.as_ref().and_then(|d| d.query.as_deref()) {
        out.insert("dns.len".into(), slog(query.len() as f64));
        out.insert("dns.labels".into(), query.split('.').count() as f64);
        out.insert("dns.entropy".into(), entropy(query));
    }
    if let Some(prompt) = event.llm.as_ref().and_then(|l| l.prompt.as_deref()) {
        text_stats("prompt", prompt, &mut out);
        let lower = prompt.to_lowercase();
        let words = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).count().max(1) as f64;
        let meta = PROMPT_META_WORDS.iter().map(|w| lower.matches(w).count()).sum::<usize>() as f64;
        let second_person = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| matches!(*w, "you" | "your" | "yourself")).count() as f64;
        out.insert("prompt.meta_words".into(), meta);
        out.insert("prompt.meta_ratio".into(), meta / words);
        out.insert("prompt.second_person_ratio".into(), second_person / words);
    }
    let kinds = |kind: &str| event.matches.iter().filter(|m| m.kind == kind).count() as f64;
    out.insert("match.sigma".into(), kinds("sigma"));
    out.insert("match.ioc".into(), kinds("ioc"));
    out.insert("match.pattern".into(), kinds("pattern"));
    out.insert("match.max_level".into(), event.matches.iter().map(|m| level_rank(&m.level)).fold(0.0, f64::max));
    out.insert("correlation.count".into(), event.correlations.len() as f64);
    out.insert("correlation.max_level".into(), event.correlations.iter().map(|c| level_rank(&c.level)).fold(0.0, f64::max));
    for (name, value) in &event.features {
        if value.is_finite() {
            out.insert(format!("f.{name}"), slog(*value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_and_slog() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("ab") - 1.0).abs() < 1e-9);
        assert_eq!(slog(0.0), 0.0);
        assert!((slog(-(std::f64::consts::E - 1.0)) + 1.0).abs() < 1e-9);
    }

    #[test]
    fn features_are_named_and_finite() {
        let mut event = Event { class: EventClass::HttpActivity, ..Event::default() };
        event.http = Some(crate::event::Http { url: Some("/search?q=1' OR '1'='1".into()), status: Some(500), ..Default::default() });
        event.features.insert("src_bytes".into(), 491.0);
        let f = event_features(&event);
        assert_eq!(f["class.http_activity"], 1.0);
        assert_eq!(f["http.status_class"], 5.0);
        assert!(f["url.quotes"] > 1.0);
        assert!((f["f.src_bytes"] - 491f64.ln_1p()).abs() < 1e-9);
        assert!(f.values().all(|v| v.is_finite()));
    }
}
