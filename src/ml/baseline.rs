//! Per-entity behavioural baselines: what is normal for this user, host or address, learnt
//! from its own events, so "alice logs in at 03:00 from a new network" and "svc-backup
//! reached fifty hosts today" stand out without anyone writing a rule for them.
//!
//! An entity is the event's partition key (tenant + user, else host, else source address):
//! the same key that puts all its events on one partition, so one instance owns its
//! baseline. Each baseline is small and bounded (24 hour-of-day counts, up to
//! [`MAX_PLACES`] source networks, up to [`MAX_PEERS`] peers, today's distinct peers up to
//! [`MAX_DAY_PEERS`]); the per-partition state is checkpointed like correlation windows.
//!
//! Features are computed *before* the event updates its baseline: an event is judged against
//! what was normal up to it.

use serde::{Deserialize, Serialize};

use super::features::slog;
use crate::event::{Event, Score};
use crate::state::{Checkpointed, RecentResults, TrackedMap};

pub const MAX_PLACES: usize = 32;
pub const MAX_PEERS: usize = 128;
pub const MAX_DAY_PEERS: usize = 512;
/// Events an entity needs before its deviations count (a new entity has no normal yet).
pub const MATURE_EVENTS: u64 = 50;
const DAY_US: i64 = 86_400_000_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub events: u64,
    /// Events per UTC hour of day.
    pub hours: [u32; 24],
    /// Source networks (/24 for IPv4, /48 for IPv6) seen, most recent last.
    pub places: Vec<String>,
    /// Peers (destination address, host or domain) seen, most recent last.
    pub peers: Vec<String>,
    /// Day number (UTC) of `day_peers` and `day_events`.
    pub day: i64,
    pub day_events: u32,
    pub day_peers: Vec<String>,
    /// Completed days seen, and the running mean of their distinct peers and events.
    pub days: u32,
    pub mean_day_peers: f64,
    pub mean_day_events: f64,
    /// Event time of the last update (eviction order).
    pub last_seen_us: i64,
}

/// The network an address belongs to, as places are compared.
fn place_of(ip: &str) -> Option<String> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            // Written by hand: `format!` took ~1,300 instructions, twice per event with a
            // user (load/README.md, session 27).
            let mut place = String::with_capacity(18);
            for octet in &v4.octets()[..3] {
                push_decimal(&mut place, *octet);
                place.push('.');
            }
            place.push_str("0/24");
            Some(place)
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
        }
    }
}

/// `n` in decimal, as `{}` writes it.
fn push_decimal(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + n / 10 % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

/// Where the entity acted from: the source network of events with a user (logins, user
/// activity). Events without one (a server receiving internet traffic) say where its
/// clients are, not where it is, and teach no places.
fn acting_place(event: &Event) -> Option<String> {
    event.user()?;
    event.src_ip().and_then(place_of)
}

/// Whom the event reached: destination address, else destination host, else the domain
/// looked up.
fn peer_of(event: &Event) -> Option<String> {
    event
        .dst_ip()
        .map(str::to_string)
        .or_else(|| event.dst.as_ref().and_then(|d| d.hostname.clone()))
        .or_else(|| event.dns.as_ref().and_then(|d| d.query.clone()))
}

fn push_bounded(list: &mut Vec<String>, value: String, max: usize) {
    if let Some(i) = list.iter().position(|v| *v == value) {
        let v = list.remove(i);
        list.push(v);
    } else {
        if list.len() >= max {
            list.remove(0);
        }
        // Room for one at first, not four: most entities are seen once.
        if list.capacity() == 0 {
            list.reserve_exact(1);
        }
        list.push(value);
    }
}

/// How an event deviates from its entity's baseline: the features named `baseline.*`.
/// A struct, not a [`Features`](super::features::Features) map: the ML stage computes one
/// per event, and building and reading eight string-keyed map entries cost more than the
/// arithmetic.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Deviations {
    pub day_events_ratio: f64,
    pub day_peers_ratio: f64,
    pub hour_share: f64,
    pub maturity: f64,
    pub new_peer: f64,
    pub new_place: f64,
    pub new_public_place: f64,
    pub unusual_hour: f64,
}

impl Deviations {
    /// Each deviation as a feature (name, value), in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> {
        let d = self;
        [
            ("baseline.day_events_ratio", d.day_events_ratio),
            ("baseline.day_peers_ratio", d.day_peers_ratio),
            ("baseline.hour_share", d.hour_share),
            ("baseline.maturity", d.maturity),
            ("baseline.new_peer", d.new_peer),
            ("baseline.new_place", d.new_place),
            ("baseline.new_public_place", d.new_public_place),
            ("baseline.unusual_hour", d.unusual_hour),
        ]
        .into_iter()
    }

    /// The deviations as named features, for the models.
    pub fn features(&self) -> impl Iterator<Item = (String, f64)> + '_ {
        self.iter().map(|(name, value)| (name.to_string(), value))
    }
}

/// Where an event came from and whom it reached, as a baseline compares and learns them:
/// worked out once per event for both ([`BaselineState::observe`]), not once by each.
struct Sighting {
    place: Option<String>,
    peer: Option<String>,
}

impl Sighting {
    fn of(event: &Event) -> Self {
        Self { place: acting_place(event), peer: peer_of(event) }
    }
}

impl Baseline {
    /// How this event deviates from the baseline (the features named `baseline.*`).
    pub fn deviations(&self, event: &Event) -> Deviations {
        self.deviations_of(event, &Sighting::of(event))
    }

    fn deviations_of(&self, event: &Event, sighting: &Sighting) -> Deviations {
        let mature = self.events >= MATURE_EVENTS;
        let hour = ((event.time_us / 3_600_000_000).rem_euclid(24)) as usize;
        let share = if self.events > 0 { f64::from(self.hours[hour]) / self.events as f64 } else { 0.0 };
        let new_place = mature && !self.places.is_empty() && sighting.place.as_ref().is_some_and(|p| !self.places.contains(p));
        // A new public network is worth more than a new internal subnet (DHCP, Wi-Fi, VPN
        // pools move people between internal /24s all day).
        let public = event.src_ip().and_then(|ip| ip.parse::<std::net::IpAddr>().ok()).is_some_and(|ip| match ip {
            std::net::IpAddr::V4(v4) => !(v4.is_private() || v4.is_loopback() || v4.is_link_local()),
            std::net::IpAddr::V6(v6) => !(v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00),
        });
        let new_peer = mature && !self.peers.is_empty() && sighting.peer.as_ref().is_some_and(|p| !self.peers.contains(p));
        let today = event.time_us.div_euclid(DAY_US);
        let (day_peers, day_events) = if today == self.day { (self.day_peers.len(), self.day_events) } else { (0, 0) };
        // Distinct peers today against the usual day (at least 1, so a quiet entity that
        // suddenly reaches many hosts stands out).
        let usual_peers = self.mean_day_peers.max(1.0);
        let peer_ratio = if self.days >= 3 { (day_peers as f64 + 1.0) / usual_peers } else { 1.0 };
        let usual_events = self.mean_day_events.max(1.0);
        let event_ratio = if self.days >= 3 { (f64::from(day_events) + 1.0) / usual_events } else { 1.0 };
        let flag = |b: bool| f64::from(u8::from(b));
        Deviations {
            day_events_ratio: slog(event_ratio),
            day_peers_ratio: slog(peer_ratio),
            hour_share: share,
            maturity: slog(self.events as f64),
            new_peer: flag(new_peer),
            new_place: flag(new_place),
            new_public_place: flag(new_place && public),
            unusual_hour: flag(mature && share < 0.01),
        }
    }

    /// Learns from one event.
    pub fn update(&mut self, event: &Event) {
        self.learn(event, Sighting::of(event));
    }

    fn learn(&mut self, event: &Event, sighting: Sighting) {
        let today = event.time_us.div_euclid(DAY_US);
        if self.events == 0 {
            self.day = today;
        } else if today > self.day {
            // Close the day (and count skipped quiet days as days with nothing).
            let closed = (today - self.day).min(30) as u32;
            for i in 0..closed {
                let (peers, events) = if i == 0 { (self.day_peers.len() as f64, f64::from(self.day_events)) } else { (0.0, 0.0) };
                self.days += 1;
                let n = f64::from(self.days.min(30));
                self.mean_day_peers += (peers - self.mean_day_peers) / n;
                self.mean_day_events += (events - self.mean_day_events) / n;
            }
            self.day = today;
            self.day_peers.clear();
            self.day_events = 0;
        }
        // An event from an earlier day (late) still teaches hours, places and peers.
        self.events += 1;
        let hour = ((event.time_us / 3_600_000_000).rem_euclid(24)) as usize;
        self.hours[hour] = self.hours[hour].saturating_add(1);
        if let Some(place) = sighting.place {
            push_bounded(&mut self.places, place, MAX_PLACES);
        }
        if let Some(peer) = sighting.peer {
            if today == self.day && !self.day_peers.contains(&peer) && self.day_peers.len() < MAX_DAY_PEERS {
                self.day_peers.push(peer.clone());
            }
            push_bounded(&mut self.peers, peer, MAX_PEERS);
        }
        if today == self.day {
            self.day_events = self.day_events.saturating_add(1);
        }
        self.last_seen_us = self.last_seen_us.max(event.time_us);
    }

    /// A direct 0–100 risk from the deviations, for the score's `baseline` part: strong
    /// deviations (a new public network at an hour never used, ten times the usual peers)
    /// are worth an analyst's look even before a model is trained; one weak deviation alone
    /// (a new internal subnet, a new peer) stays well below the alerting bands.
    pub fn risk(deviations: &Deviations) -> f64 {
        let d = deviations;
        let mut z = 0.0;
        z += 1.2 * d.unusual_hour;
        z += 0.2 * d.new_place;
        z += 0.8 * d.new_public_place;
        z += 0.2 * d.new_peer;
        // slog(ratio): ln(1 + ratio); ratio 10 → 2.4.
        z += (d.day_peers_ratio - 1.5).max(0.0) * 1.5;
        z += (d.day_events_ratio - 2.0).max(0.0);
        ((1.0 - (-z).exp()) * 10_000.0).round() / 100.0
    }
}

/// One partition's baselines.
#[derive(Debug, Clone, Default)]
pub struct BaselineState {
    pub applied_offset: Option<i64>,
    /// Boxed: a baseline is ~220 bytes, and unboxed every slot of the map was that size,
    /// so each doubling of the map (fresh pages, dear on this kind of host) moved and
    /// allocated twice the baselines' bytes; boxed, a slot is a key and a pointer.
    baselines: TrackedMap<Box<Baseline>>,
    /// Scores given per input offset until committed (replays get the same score).
    recent_scores: RecentResults<Score>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineMeta {
    pub version: u32,
    pub applied_offset: Option<i64>,
    #[serde(default)]
    pub recent_scores: RecentResults<Score>,
}

impl BaselineState {
    /// Deviations of `event` from its entity's baseline, then the baseline learns it.
    pub fn observe(&mut self, entity: &str, event: &Event) -> Deviations {
        let baseline = self.baselines.entry_mut(entity);
        let sighting = Sighting::of(event);
        let deviations = baseline.deviations_of(event, &sighting);
        baseline.learn(event, sighting);
        deviations
    }

    /// Deviations without learning (scoring a replay or a what-if).
    pub fn deviations(&self, entity: &str, event: &Event) -> Deviations {
        self.baselines.get(entity).map(|b| b.deviations(event)).unwrap_or_else(|| Baseline::default().deviations(event))
    }

    pub fn baseline(&self, entity: &str) -> Option<&Baseline> {
        self.baselines.get(entity).map(|b| &**b)
    }

    pub fn remember_score(&mut self, offset: i64, score: &Score) {
        self.recent_scores.remember(offset, score.clone());
    }

    pub fn recalled_score(&self, offset: i64) -> Option<Score> {
        self.recent_scores.recall(offset)
    }

    /// Evicts the `count` least recently seen entities.
    pub fn evict_oldest(&mut self, count: usize) -> usize {
        self.baselines.evict_oldest(count, |b| b.last_seen_us)
    }
}

impl Checkpointed for BaselineState {
    type Meta = BaselineMeta;
    type Entry = Box<Baseline>;
    const VERSION: u32 = 1;

    fn meta(&self) -> BaselineMeta {
        BaselineMeta { version: Self::VERSION, applied_offset: self.applied_offset, recent_scores: self.recent_scores.clone() }
    }

    fn meta_version(meta: &BaselineMeta) -> u32 {
        meta.version
    }

    fn applied_offset(&self) -> Option<i64> {
        self.applied_offset
    }

    fn entries(&self) -> &TrackedMap<Box<Baseline>> {
        &self.baselines
    }

    fn entries_mut(&mut self) -> &mut TrackedMap<Box<Baseline>> {
        &mut self.baselines
    }

    fn restore(meta: BaselineMeta, baselines: TrackedMap<Box<Baseline>>) -> Self {
        Self { applied_offset: meta.applied_offset, baselines, recent_scores: meta.recent_scores }
    }

    fn committed_before(&mut self, offset: i64) {
        self.recent_scores.forget_before(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_written_as_format_writes_it() {
        for a in 0..=255u8 {
            let ip = format!("{a}.{}.{}.77", 255 - a, a / 3);
            assert_eq!(place_of(&ip).as_deref(), Some(format!("{a}.{}.{}.0/24", 255 - a, a / 3).as_str()));
        }
        assert_eq!(place_of("2001:db8:ab::1").as_deref(), Some("2001:db8:ab::/48"));
        assert_eq!(place_of("not an address"), None);
    }
}
