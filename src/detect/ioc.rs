//! Indicators of compromise: exact sets of known-bad IPs, CIDR ranges, domains, URLs, file
//! hashes and user agents, with a bloom pre-screen in front.
//!
//! Threat-intel feeds are large (millions of entries) and almost never hit, so the design
//! is: one normalized byte key per indicator (`kind tag + value`), one blocked bloom filter
//! over all keys and one hash map behind it. A lookup is a constant number of probes: one
//! per field, one per parent domain of a host name (bounded by [`MAX_DOMAIN_LABELS`]) and one
//! per CIDR prefix length that the feeds actually use (at most 33 for IPv4, 129 for IPv6).
//!
//! Feeds load from plain text (`value` or `value;description`, `#` comments — the LOKI /
//! signature-base layout), CSV with a header (`value`/`indicator`, optional `type`,
//! `description`) and STIX 2.1 bundles (indicator objects whose pattern is equality
//! comparisons joined by OR). A line or object that is not an indicator is counted and
//! reported, never fatal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::bloom::BlockedBloom;
use crate::event::{Event, Match};

/// Host names are checked against the domain set label by label from the right; more than
/// this many labels are not walked (constant-time bound).
pub const MAX_DOMAIN_LABELS: usize = 8;

/// What an indicator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IocKind {
    Ip,
    Cidr,
    Domain,
    Url,
    Md5,
    Sha1,
    Sha256,
    UserAgent,
}

impl IocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Cidr => "cidr",
            Self::Domain => "domain",
            Self::Url => "url",
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::UserAgent => "user_agent",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
            "ip" | "ipv4" | "ipv6" | "ip_address" | "ipv4_addr" | "ipv6_addr" | "ip_dst" | "ip_src" => Self::Ip,
            "cidr" | "ip_range" | "network" | "subnet" => Self::Cidr,
            "domain" | "domain_name" | "hostname" | "host" | "fqdn" => Self::Domain,
            "url" | "uri" => Self::Url,
            "md5" => Self::Md5,
            "sha1" | "sha_1" => Self::Sha1,
            "sha256" | "sha_256" => Self::Sha256,
            "user_agent" | "useragent" | "ua" => Self::UserAgent,
            _ => return None,
        })
    }

    fn tag(self) -> u8 {
        match self {
            Self::Ip => b'i',
            Self::Cidr => b'c',
            Self::Domain => b'd',
            Self::Url => b'u',
            Self::Md5 | Self::Sha1 | Self::Sha256 => b'h',
            Self::UserAgent => b'a',
        }
    }
}

/// One indicator as loaded, for the match record.
#[derive(Debug, Clone)]
pub struct IocInfo {
    pub kind: IocKind,
    pub value: String,
    pub feed: Arc<str>,
    pub description: Option<String>,
}

/// A feed line or object that did not load.
#[derive(Debug, Clone)]
pub struct IocLoadError {
    pub path: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for IocLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
    }
}

/// What loading a set of feeds did.
#[derive(Debug, Default)]
pub struct IocLoadReport {
    pub loaded: usize,
    pub duplicates: usize,
    /// The first [`IocLoadReport::MAX_ERRORS`] errors; `rejected` counts all of them.
    pub errors: Vec<IocLoadError>,
    pub rejected: usize,
}

impl IocLoadReport {
    pub const MAX_ERRORS: usize = 100;

    fn reject(&mut self, path: &Path, line: usize, reason: impl Into<String>) {
        self.rejected += 1;
        if self.errors.len() < Self::MAX_ERRORS {
            self.errors.push(IocLoadError { path: path.to_path_buf(), line, reason: reason.into() });
        }
    }
}

/// The exact indicator sets. Build with [`IocSetBuilder`].
pub struct IocSet {
    bloom: BlockedBloom,
    exact: HashMap<Box<[u8]>, u32, XxBuild>,
    /// IPv4 ranges by prefix length, network address masked.
    v4_ranges: Vec<(u8, HashMap<u32, u32, XxBuild>)>,
    v6_ranges: Vec<(u8, HashMap<u128, u32, XxBuild>)>,
    infos: Vec<IocInfo>,
    level: String,
}

/// xxh3 for the exact maps: keys are feed data, not attacker-chosen collisions on a
/// per-process secret we would need SipHash for — but a fixed seed would be, so the
/// seed is random per process.
#[derive(Clone)]
struct XxBuild(u64);

impl Default for XxBuild {
    fn default() -> Self {
        let seed = std::collections::hash_map::RandomState::new();
        use std::hash::BuildHasher;
        Self(seed.hash_one(0x7468_7265_6174u64))
    }
}

impl std::hash::BuildHasher for XxBuild {
    type Hasher = xxhash_rust::xxh3::Xxh3;
    fn build_hasher(&self) -> Self::Hasher {
        xxhash_rust::xxh3::Xxh3::with_seed(self.0)
    }
}

fn key(kind: IocKind, normalized: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(normalized.len() + 1);
    k.push(kind.tag());
    k.extend_from_slice(normalized.as_bytes());
    k
}

/// The exact-match key of an address: the kind's tag, then its 4 (IPv4 or IPv4-mapped) or 16
/// octets. On the stack: every event's addresses are looked up (two allocations each when
/// this was a growing `Vec`).
struct IpKey {
    bytes: [u8; 17],
    len: usize,
}

impl IpKey {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn ip_key(ip: IpAddr) -> IpKey {
    let mut key = IpKey { bytes: [0; 17], len: 0 };
    let mut put = |part: &[u8]| {
        key.bytes[key.len..key.len + part.len()].copy_from_slice(part);
        key.len += part.len();
    };
    put(&[IocKind::Ip.tag()]);
    match ip {
        IpAddr::V4(v4) => put(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => put(&v4.octets()),
            None => put(&v6.octets()),
        },
    }
    key
}

/// Canonical domain: lower case, no trailing dot, no scheme or path.
fn normalize_domain(raw: &str) -> Option<String> {
    let d = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let d = d.strip_prefix("*.").unwrap_or(&d).to_string();
    let valid = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !d.split('.').any(str::is_empty);
    valid.then_some(d)
}

/// Canonical URL: scheme and host lower case, no fragment, no trailing slash on a bare host.
fn normalize_url(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once("://")?;
    let rest = rest.split('#').next().unwrap_or_default();
    let (host, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let path = if path == "/" { "" } else { path };
    Some(format!("{}://{}{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), path))
}

/// The host part of a URL, without user info or port.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(host.split(':').next().unwrap_or(host)).filter(|h| !h.is_empty())
}

fn hash_kind(value: &str) -> Option<IocKind> {
    if !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match value.len() {
        32 => Some(IocKind::Md5),
        40 => Some(IocKind::Sha1),
        64 => Some(IocKind::Sha256),
        _ => None,
    }
}

fn parse_cidr(value: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = value.trim().split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

/// Guesses what a bare feed value is.
pub fn classify(value: &str) -> Option<IocKind> {
    let v = value.trim();
    if v.parse::<IpAddr>().is_ok() {
        Some(IocKind::Ip)
    } else if parse_cidr(v).is_some() {
        Some(IocKind::Cidr)
    } else if let Some(kind) = hash_kind(v) {
        Some(kind)
    } else if v.contains("://") {
        normalize_url(v).map(|_| IocKind::Url)
    } else {
        normalize_domain(v).map(|_| IocKind::Domain)
    }
}

/// Collects indicators, then builds the bloom filter and maps once, sized to fit.
#[derive(Default)]
pub struct IocSetBuilder {
    exact: HashMap<Box<[u8]>, u32, XxBuild>,
    v4_ranges: HashMap<u8, HashMap<u32, u32, XxBuild>>,
    v6_ranges: HashMap<u8, HashMap<u128, u32, XxBuild>>,
    infos: Vec<IocInfo>,
    pub report: IocLoadReport,
    level: Option<String>,
}

fn mask_v4(ip: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { ip & (u32::MAX << (32 - len as u32)) }
}

fn mask_v6(ip: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { ip & (u128::MAX << (128 - len as u32)) }
}

impl IocSetBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Severity recorded on IoC matches (default `high`).
    pub fn level(mut self, level: &str) -> Self {
        self.level = Some(level.to_string());
        self
    }

    /// Adds one indicator; `Err` says why it is not one.
    pub fn add(&mut self, kind: Option<IocKind>, value: &str, feed: &Arc<str>, description: Option<&str>) -> Result<(), String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty value".into());
        }
        let kind = match kind {
            Some(kind) => kind,
            None => classify(value).ok_or_else(|| format!("not an ip, cidr, domain, url or hash: {value:?}"))?,
        };
        let index = self.infos.len() as u32;
        let fresh = match kind {
            IocKind::Ip => {
                let ip: IpAddr = value.parse().map_err(|_| format!("bad ip address: {value:?}"))?;
                self.exact.insert(ip_key(ip).as_slice().into(), index).is_none()
            }
            IocKind::Cidr => {
                let (ip, len) = parse_cidr(value).ok_or_else(|| format!("bad cidr range: {value:?}"))?;
                match ip {
                    IpAddr::V4(v4) => self.v4_ranges.entry(len).or_default().insert(mask_v4(v4.into(), len), index).is_none(),
                    IpAddr::V6(v6) => self.v6_ranges.entry(len).or_default().insert(mask_v6(v6.into(), len), index).is_none(),
                }
            }
            IocKind::Domain => {
                let d = normalize_domain(value).ok_or_else(|| format!("bad domain: {value:?}"))?;
                self.exact.insert(key(kind, &d).into(), index).is_none()
            }
            IocKind::Url => {
                let u = normalize_url(value).ok_or_else(|| format!("bad url (needs scheme://host): {value:?}"))?;
                self.exact.insert(key(kind, &u).into(), index).is_none()
            }
            IocKind::Md5 | IocKind::Sha1 | IocKind::Sha256 => {
                if hash_kind(value) != Some(kind) {
                    return Err(format!("not a {} hash: {value:?}", kind.as_str()));
                }
                self.exact.insert(key(kind, &value.to_ascii_lowercase()).into(), index).is_none()
            }
            IocKind::UserAgent => self.exact.insert(key(kind, value).into(), index).is_none(),
        };
        if fresh {
            self.infos.push(IocInfo {
                kind,
                value: value.to_string(),
                feed: feed.clone(),
                description: description.map(str::trim).filter(|d| !d.is_empty()).map(str::to_string),
            });
            self.report.loaded += 1;
        } else {
            self.report.duplicates += 1;
        }
        Ok(())
    }

    /// Loads a feed file, or every feed file under a directory (`.txt`, `.list`, `.csv`,
    /// `.json`; other files are skipped).
    pub fn load_path(&mut self, path: &Path) {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
                Err(e) => return self.report.reject(path, 0, e.to_string()),
            };
            files.sort();
            for file in files {
                let ext = file.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
                if file.is_dir() || matches!(ext.as_str(), "txt" | "list" | "csv" | "json") {
                    self.load_path(&file);
                }
            }
            return;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => return self.report.reject(path, 0, e.to_string()),
        };
        let feed: Arc<str> = path.file_stem().and_then(|s| s.to_str()).unwrap_or("feed").into();
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => self.load_csv(path, &text, &feed),
            Some("json") => self.load_stix(path, &text, &feed),
            _ => self.load_text(path, &text, &feed),
        }
    }

    /// `value` or `value;description` per line; `#` starts a comment line.
    pub fn load_text(&mut self, path: &Path, text: &str, feed: &Arc<str>) {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (value, description) = match line.split_once(';') {
                Some((v, d)) => (v, Some(d)),
                None => (line, None),
            };
            if let Err(reason) = self.add(None, value, feed, description) {
                self.report.reject(path, n + 1, reason);
            }
        }
    }

    /// CSV with a header row: a `value` (or `indicator`, `ioc`) column, optional `type`
    /// and `description` (or `comment`) columns.
    pub fn load_csv(&mut self, path: &Path, text: &str, feed: &Arc<str>) {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
        let Some((_, header)) = lines.next() else { return };
        let header: Vec<String> = split_csv(header).into_iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
        let Some(value_col) = col(&["value", "indicator", "ioc", "observable"]) else {
            return self.report.reject(path, 1, "CSV header has no value/indicator column");
        };
        let type_col = col(&["type", "kind", "indicator_type", "ioc_type"]);
        let desc_col = col(&["description", "comment", "desc", "threat", "malware"]);
        for (n, line) in lines {
            let fields = split_csv(line);
            let Some(value) = fields.get(value_col) else {
                self.report.reject(path, n + 1, "row has no value column");
                continue;
            };
            let kind = match type_col.and_then(|c| fields.get(c)).filter(|t| !t.trim().is_empty()) {
                Some(t) => match IocKind::from_name(t) {
                    Some(kind) => Some(kind),
                    None => {
                        self.report.reject(path, n + 1, format!("unknown indicator type {t:?}"));
                        continue;
                    }
                },
                None => None,
            };
            let description = desc_col.and_then(|c| fields.get(c)).map(String::as_str);
            if let Err(reason) = self.add(kind, value, feed, description) {
                self.report.reject(path, n + 1, reason);
            }
        }
    }

    /// STIX 2.1 bundle: every `indicator` object with a STIX pattern made of equality
    /// comparisons joined by OR. The indicator's `name` (or `description`) describes it.
    pub fn load_stix(&mut self, path: &Path, text: &str, feed: &Arc<str>) {
        let bundle: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.report.reject(path, e.line(), format!("not JSON: {e}")),
        };
        let objects = match bundle.get("objects").and_then(Value::as_array) {
            Some(objects) => objects.as_slice(),
            None if bundle.get("type").and_then(Value::as_str) == Some("indicator") => std::slice::from_ref(&bundle),
            None => return self.report.reject(path, 0, "not a STIX bundle (no \"objects\" array)"),
        };
        for (n, object) in objects.iter().enumerate() {
            if object.get("type").and_then(Value::as_str) != Some("indicator") {
                continue;
            }
            let position = n + 1;
            let pattern_type = object.get("pattern_type").and_then(Value::as_str).unwrap_or("stix");
            if pattern_type != "stix" {
                self.report.reject(path, position, format!("pattern_type {pattern_type:?} is not supported"));
                continue;
            }
            let Some(pattern) = object.get("pattern").and_then(Value::as_str) else {
                self.report.reject(path, position, "indicator has no pattern");
                continue;
            };
            let description = object
                .get("name")
                .or_else(|| object.get("description"))
                .and_then(Value::as_str);
            match parse_stix_pattern(pattern) {
                Ok(comparisons) => {
                    for (kind, value) in comparisons {
                        if let Err(reason) = self.add(Some(kind), &value, feed, description) {
                            self.report.reject(path, position, reason);
                        }
                    }
                }
                Err(reason) => self.report.reject(path, position, reason),
            }
        }
    }

    pub fn build(self) -> IocSet {
        let keys = self.exact.len() + self.v4_ranges.values().map(HashMap::len).sum::<usize>();
        let mut bloom = BlockedBloom::with_capacity(keys);
        for key in self.exact.keys() {
            bloom.insert(key);
        }
        let mut v4_ranges: Vec<_> = self.v4_ranges.into_iter().collect();
        v4_ranges.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let mut v6_ranges: Vec<_> = self.v6_ranges.into_iter().collect();
        v6_ranges.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        IocSet {
            bloom,
            exact: self.exact,
            v4_ranges,
            v6_ranges,
            infos: self.infos,
            level: self.level.unwrap_or_else(|| "high".into()),
        }
    }
}

/// Splits one CSV line (RFC 4180 quoting, no embedded newlines).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// `[ipv4-addr:value = '1.2.3.4'] OR [file:hashes.'SHA-256' = '…']` → indicators.
fn parse_stix_pattern(pattern: &str) -> Result<Vec<(IocKind, String)>, String> {
    let mut out = Vec::new();
    let mut rest = pattern.trim();
    while !rest.is_empty() {
        let (object_path, after) = rest.split_once('=').ok_or_else(|| format!("unsupported pattern (no equality): {pattern}"))?;
        let object_path = object_path.trim().trim_start_matches('[').trim();
        if object_path.contains(' ') {
            return Err(format!("unsupported pattern operator in {pattern:?}: only '=' joined by OR"));
        }
        let after = after.trim_start();
        let after = after.strip_prefix('\'').ok_or_else(|| format!("expected a quoted value in {pattern:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '\'' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated string in {pattern:?}"))?;
        let (object, path) = object_path.split_once(':').unwrap_or((object_path, ""));
        let path = path.replace(['\'', '"'], "").to_ascii_lowercase();
        let kind = match (object, path.as_str()) {
            ("ipv4-addr" | "ipv6-addr", "value") => {
                if value.contains('/') { IocKind::Cidr } else { IocKind::Ip }
            }
            ("domain-name", "value") => IocKind::Domain,
            ("url", "value") => IocKind::Url,
            ("file", "hashes.md5") => IocKind::Md5,
            ("file", "hashes.sha-1" | "hashes.sha1") => IocKind::Sha1,
            ("file", "hashes.sha-256" | "hashes.sha256") => IocKind::Sha256,
            ("network-traffic", p) if p.ends_with("user_agent") || p.contains("user-agent") => IocKind::UserAgent,
            _ => return Err(format!("unsupported STIX object path {object}:{path}")),
        };
        out.push((kind, value));
        rest = after[end..].trim_start().trim_start_matches(']').trim_start();
        if rest.is_empty() {
            break;
        }
        let upper = rest.get(..3).map(str::to_ascii_uppercase);
        if upper.as_deref() == Some("OR ") {
            rest = rest[3..].trim_start();
        } else {
            return Err(format!("unsupported pattern operator in {pattern:?}: only '=' joined by OR"));
        }
    }
    if out.is_empty() {
        return Err(format!("empty pattern {pattern:?}"));
    }
    Ok(out)
}

impl IocSet {
    pub fn empty() -> Self {
        IocSetBuilder::new().build()
    }

    /// Loads a feed file or directory; the report counts what did not load.
    pub fn load(path: &Path) -> (Self, IocLoadReport) {
        let mut builder = IocSetBuilder::new();
        builder.load_path(path);
        let report = std::mem::take(&mut builder.report);
        (builder.build(), report)
    }

    pub fn len(&self) -> usize {
        self.infos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    pub fn bloom_bytes(&self) -> usize {
        self.bloom.size_bytes()
    }

    fn probe(&self, key: &[u8]) -> Option<u32> {
        if !self.bloom.may_contain(key) {
            return None;
        }
        self.exact.get(key).copied()
    }

    /// The indicator an IP address (exact or in a range) hits.
    pub fn lookup_ip(&self, raw: &str) -> Option<&IocInfo> {
        let ip: IpAddr = raw.trim().parse().ok()?;
        if let Some(i) = self.probe(ip_key(ip).as_slice()) {
            return Some(&self.infos[i as usize]);
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let hit = match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                self.v4_ranges.iter().find_map(|(len, set)| set.get(&mask_v4(bits, *len)))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                self.v6_ranges.iter().find_map(|(len, set)| set.get(&mask_v6(bits, *len)))
            }
        };
        hit.map(|i| &self.infos[*i as usize])
    }

    /// The indicator a host name or any of its parent domains hits.
    pub fn lookup_domain(&self, raw: &str) -> Option<&IocInfo> {
        let host = raw.trim().trim_end_matches('.');
        if host.parse::<IpAddr>().is_ok() {
            return self.lookup_ip(host);
        }
        let mut buf = Vec::with_capacity(host.len() + 1);
        buf.push(IocKind::Domain.tag());
        buf.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
        let mut start = 1;
        for _ in 0..MAX_DOMAIN_LABELS {
            let candidate = &buf[start..];
            if !candidate.contains(&b'.') {
                break; // a bare TLD is never an indicator
            }
            let mut probe = Vec::with_capacity(candidate.len() + 1);
            probe.push(IocKind::Domain.tag());
            probe.extend_from_slice(candidate);
            if let Some(i) = self.probe(&probe) {
                return Some(&self.infos[i as usize]);
            }
            match candidate.iter().position(|&b| b == b'.') {
                Some(dot) => start += dot + 1,
                None => break,
            }
        }
        None
    }

    /// The indicator a URL, or its host, hits.
    pub fn lookup_url(&self, raw: &str) -> Option<&IocInfo> {
        if let Some(i) = normalize_url(raw).and_then(|url| self.probe(&key(IocKind::Url, &url))) {
            return Some(&self.infos[i as usize]);
        }
        url_host(raw).and_then(|host| self.lookup_domain(host))
    }

    pub fn lookup_hash(&self, raw: &str) -> Option<&IocInfo> {
        let kind = hash_kind(raw.trim())?;
        self.probe(&key(kind, &raw.trim().to_ascii_lowercase())).map(|i| &self.infos[i as usize])
    }

    pub fn lookup_user_agent(&self, raw: &str) -> Option<&IocInfo> {
        self.probe(&key(IocKind::UserAgent, raw.trim())).map(|i| &self.infos[i as usize])
    }

    /// Every indicator the event's addresses, names, URLs, hashes and user agent hit.
    pub fn evaluate(&self, event: &Event) -> Vec<Match> {
        let mut matches: Vec<Match> = Vec::new();
        if self.is_empty() {
            return matches;
        }
        let mut hit = |field: &str, value: &str, info: Option<&IocInfo>| {
            if let Some(info) = info {
                self.record(&mut matches, field, value, info);
            }
        };
        for (field, endpoint) in [("src.ip", &event.src), ("dst.ip", &event.dst)] {
            if let Some(ip) = endpoint.as_ref().and_then(|e| e.ip.as_deref()) {
                hit(field, ip, self.lookup_ip(ip));
            }
        }
        for (field, endpoint) in [("src.hostname", &event.src), ("dst.hostname", &event.dst)] {
            if let Some(host) = endpoint.as_ref().and_then(|e| e.hostname.as_deref()) {
                hit(field, host, self.lookup_domain(host));
            }
        }
        if let Some(dns) = &event.dns {
            if let Some(q) = dns.query.as_deref() {
                hit("dns.query", q, self.lookup_domain(q));
            }
            for answer in &dns.answers {
                hit("dns.answers", answer, self.lookup_domain(answer));
            }
        }
        if let Some(http) = &event.http {
            if let Some(url) = http.url.as_deref() {
                hit("http.url", url, self.lookup_url(url));
            }
            if let Some(referrer) = http.referrer.as_deref() {
                hit("http.referrer", referrer, self.lookup_url(referrer));
            }
            if let Some(ua) = http.user_agent.as_deref() {
                hit("http.user_agent", ua, self.lookup_user_agent(ua));
            }
        }
        if let Some(file) = &event.file {
            for (field, value) in [("file.md5", &file.md5), ("file.sha1", &file.sha1), ("file.sha256", &file.sha256)] {
                if let Some(h) = value.as_deref() {
                    hit(field, h, self.lookup_hash(h));
                }
            }
        }
        // Sysmon: Hashes="SHA1=…,MD5=…,SHA256=…,IMPHASH=…"
        if let Some(hashes) = event.attrs.get("Hashes") {
            for part in hashes.split(',') {
                let value = part.split_once('=').map_or(part, |(_, v)| v);
                hit("Hashes", value, self.lookup_hash(value));
            }
        }
        matches
    }

    fn record(&self, matches: &mut Vec<Match>, field: &str, value: &str, info: &IocInfo) {
        let rule_id = format!("ioc:{}:{}", info.kind.as_str(), info.value.to_ascii_lowercase());
        if let Some(existing) = matches.iter_mut().find(|m| m.rule_id == rule_id) {
            existing.fields.insert(field.to_string(), value.to_string());
            return;
        }
        let title = match &info.description {
            Some(d) => format!("Known-bad {} {} ({d})", info.kind.as_str(), info.value),
            None => format!("Known-bad {} {} (feed {})", info.kind.as_str(), info.value, info.feed),
        };
        matches.push(Match {
            rule_id,
            title,
            level: self.level.clone(),
            kind: "ioc".into(),
            tags: vec![format!("ioc.{}", info.kind.as_str()), format!("ioc.feed.{}", info.feed)],
            fields: [(field.to_string(), value.to_string())].into_iter().collect(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(lines: &str) -> IocSet {
        let mut b = IocSetBuilder::new();
        b.load_text(Path::new("t.txt"), lines, &Arc::from("t"));
        assert!(b.report.errors.is_empty(), "{:?}", b.report.errors);
        b.build()
    }

    #[test]
    fn kinds_are_classified() {
        assert_eq!(classify("10.0.0.1"), Some(IocKind::Ip));
        assert_eq!(classify("2001:db8::1"), Some(IocKind::Ip));
        assert_eq!(classify("10.0.0.0/8"), Some(IocKind::Cidr));
        assert_eq!(classify("evil.example.com"), Some(IocKind::Domain));
        assert_eq!(classify("http://evil.example.com/x"), Some(IocKind::Url));
        assert_eq!(classify(&"a".repeat(32)), Some(IocKind::Md5));
        assert_eq!(classify(&"b".repeat(40)), Some(IocKind::Sha1));
        assert_eq!(classify(&"c".repeat(64)), Some(IocKind::Sha256));
        assert_eq!(classify("\\\\usbclass\\.sys"), None);
        assert_eq!(classify("localhost"), None);
    }

    #[test]
    fn ips_ranges_domains_urls_hashes() {
        let s = set("1.2.3.4\n10.20.0.0/16;lab range\n2001:db8::/32\nevil.com;c2\nhttp://bad.org/payload.exe\nD41D8CD98F00B204E9800998ECF8427E\n");
        assert!(s.lookup_ip("1.2.3.4").is_some());
        assert!(s.lookup_ip("::ffff:1.2.3.4").is_some());
        assert!(s.lookup_ip("1.2.3.5").is_none());
        assert_eq!(s.lookup_ip("10.20.255.1").and_then(|i| i.description.as_deref()), Some("lab range"));
        assert!(s.lookup_ip("10.21.0.1").is_none());
        assert!(s.lookup_ip("2001:db8:ffff::1").is_some());
        assert!(s.lookup_domain("evil.com").is_some());
        assert!(s.lookup_domain("a.b.EVIL.com.").is_some());
        assert!(s.lookup_domain("notevil.com").is_none());
        assert!(s.lookup_domain("evil.com.au").is_none());
        assert!(s.lookup_url("HTTP://Bad.org/payload.exe").is_some());
        assert!(s.lookup_url("http://bad.org/other").is_none());
        assert!(s.lookup_url("https://x.evil.com:8443/anything").is_some(), "URL host in the domain set");
        assert!(s.lookup_hash("d41d8cd98f00b204e9800998ecf8427e").is_some());
        assert!(s.lookup_hash("d41d8cd98f00b204e9800998ecf8427f").is_none());
    }

    #[test]
    fn csv_and_stix_feeds() {
        let mut b = IocSetBuilder::new();
        let feed: Arc<str> = Arc::from("f");
        b.load_csv(Path::new("f.csv"), "type,value,description\nuser-agent,\"Evil, Bot/1.0\",scanner\ndomain,c2.example.net,\nbogus,x,y\n", &feed);
        let stix = r#"{"type":"bundle","objects":[
            {"type":"indicator","name":"APT C2","pattern_type":"stix","pattern":"[ipv4-addr:value = '198.51.100.7'] OR [domain-name:value = 'apt.example']"},
            {"type":"indicator","pattern":"[file:hashes.'SHA-256' = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa']"},
            {"type":"indicator","pattern":"[file:name = 'x.exe' AND file:size > 10]"},
            {"type":"malware","name":"not an indicator"}]}"#;
        b.load_stix(Path::new("b.json"), stix, &feed);
        assert_eq!(b.report.loaded, 5);
        assert_eq!(b.report.rejected, 2, "{:?}", b.report.errors);
        let s = b.build();
        assert!(s.lookup_user_agent("Evil, Bot/1.0").is_some());
        assert!(s.lookup_domain("www.c2.example.net").is_some());
        assert_eq!(s.lookup_ip("198.51.100.7").and_then(|i| i.description.as_deref()), Some("APT C2"));
        assert!(s.lookup_domain("apt.example").is_some());
        assert!(s.lookup_hash(&"A".repeat(64)).is_some());
    }
}
