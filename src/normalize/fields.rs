//! Field-level canonicalization shared by every input format.

use std::net::IpAddr;

use super::NormalizeError;
use crate::event::Endpoint;

/// `success`, `failure` or `unknown` from the many spellings producers use.
pub fn canonical_outcome(text: &str) -> String {
    match text.trim().to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "successful" | "ok" | "true" | "allowed" | "allow" | "accept"
        | "accepted" | "pass" | "passed" | "permit" => "success".into(),
        "failure" | "failed" | "fail" | "false" | "denied" | "deny" | "reject" | "rejected"
        | "blocked" | "block" | "error" | "drop" | "dropped" => "failure".into(),
        _ => "unknown".into(),
    }
}

/// Validates and stores an endpoint; an address that is not an IP is an input error, since
/// IoC and CIDR matching downstream rely on it.
pub fn set_endpoint(
    slot: &mut Option<Endpoint>,
    side: &'static str,
    ip: Option<String>,
    port: Option<i64>,
    hostname: Option<String>,
) -> Result<(), NormalizeError> {
    if ip.is_none() && port.is_none() && hostname.is_none() {
        return Ok(());
    }
    let (ip_field, port_field) = if side == "src" { ("src_ip", "src_port") } else { ("dst_ip", "dst_port") };
    let ip = match ip {
        Some(text) => {
            let trimmed = text.trim().trim_start_matches('[').trim_end_matches(']');
            let parsed: IpAddr = trimmed
                .parse()
                .map_err(|_| NormalizeError::invalid_field(ip_field, &text, "not an IP address"))?;
            // An IPv4 address that parsed is already in canonical form (the parser refuses
            // leading zeros), so the text is kept instead of formatted again; IPv6 is
            // written canonically (compressed, lower case).
            if parsed.is_ipv4() && trimmed.len() == text.len() {
                Some(text)
            } else {
                Some(parsed.to_string())
            }
        }
        None => None,
    };
    let port = match port {
        Some(p) => Some(
            u16::try_from(p)
                .map(i32::from)
                .map_err(|_| NormalizeError::invalid_field(port_field, &p.to_string(), "not a port (0-65535)"))?,
        ),
        None => None,
    };
    let endpoint = slot.get_or_insert_with(Default::default);
    endpoint.ip = ip.or(endpoint.ip.take());
    endpoint.port = port.or(endpoint.port);
    endpoint.hostname = hostname.or(endpoint.hostname.take());
    Ok(())
}

/// Cuts `text` to at most `max_bytes` on a character boundary.
pub fn truncate(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Keeps at most `max` characters of a value shown in an error message.
pub fn preview(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}
