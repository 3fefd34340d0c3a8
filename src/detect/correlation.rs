//! Sigma correlation rules over event time, with per-key window state we own.
//!
//! Single events rarely prove an attack; sequences do. This module evaluates the Sigma
//! correlation specification (v2): `event_count`, `value_count`, `temporal`,
//! `temporal_ordered`, plus `value_sum`, `value_avg` and `value_percentile`, with group-by
//! fields (and field aliases), timespans and threshold conditions, referring to detection
//! rules by id or name and to other correlations (chains).
//!
//! Rules are parsed with rsigma-parser. Evaluation is ours, not rsigma-eval's
//! `CorrelationEngine`, because that engine assumes events arrive in time order (window
//! deques are appended and evicted from the front) and keeps one engine-wide state map,
//! while the correlate stage needs event-time windows that accept out-of-order events up to
//! an allowed lateness, and state that is split, checkpointed and restored per partition.
//!
//! # Semantics
//!
//! - Windows slide over **event time**. An event at time `t` completes the windows that end
//!   at `t` and, when it arrived out of order, those ending at later entries of the same key
//!   within one timespan, so a late-but-allowed event gives the same signals it would have
//!   given in order.
//! - After a signal, the same (rule, group) does not signal again for windows ending within
//!   one timespan: one signal per window, however long the burst goes on.
//! - Events older than the partition's watermark (highest event time seen) minus the allowed
//!   lateness are *late*: they are counted ([`Observed::late`]) and not added to windows; the
//!   stage still forwards them.
//! - An event missing a group-by field does not join that correlation's windows (as a
//!   `stats … by` search drops rows with a null group field).
//! - `temporal` without a condition needs every referenced rule (the specification's
//!   default); `value_percentile` fires when the event's value of `field` makes up a share
//!   of the window's events (in percent) that meets the condition: a rare value.
//!
//! Group keys always include the tenant, so tenants never share a window.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use rsigma_parser::{ConditionExpr, ConditionOperator, CorrelationCondition, CorrelationRule, CorrelationType, Quantifier, SelectorPattern};
use serde::{Deserialize, Serialize};

use super::sigma::{self, SigmaDoc, SigmaRules};
use super::FileError;
use crate::event::{Correlation, Event};
use crate::state::{Checkpointed, RecentResults, TrackedMap};

/// How many contributing event ids a signal lists.
pub const SIGNAL_EVENT_IDS: usize = 20;
/// Chain depth limit (a correlation of a correlation of …).
const MAX_CHAIN_DEPTH: usize = 8;

/// Limits on window state. Defaults suit one instance with a few GiB for state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateLimits {
    /// Allowed lateness: how far behind the partition's newest event time an event may be and
    /// still count. Later ones are counted as late and skip the windows.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: std::time::Duration,
    /// Entries kept per (rule, group) window; the oldest are dropped beyond it (counted).
    pub max_entries_per_key: usize,
    /// (rule, group) windows kept across all partitions of an instance; the least recently
    /// updated are evicted beyond it (counted).
    pub max_keys: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self { allowed_lateness: std::time::Duration::from_secs(60), max_entries_per_key: 10_000, max_keys: 2_000_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    EventCount,
    ValueCount,
    Temporal,
    TemporalOrdered,
    ValueSum,
    ValueAvg,
    ValuePercentile,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::EventCount => "event_count",
            Kind::ValueCount => "value_count",
            Kind::Temporal => "temporal",
            Kind::TemporalOrdered => "temporal_ordered",
            Kind::ValueSum => "value_sum",
            Kind::ValueAvg => "value_avg",
            Kind::ValuePercentile => "value_percentile",
        }
    }
}

/// How a temporal correlation decides on the set of rules seen in a window.
#[derive(Debug, Clone)]
enum TemporalCondition {
    /// Every referenced rule.
    All,
    /// The number of distinct rules seen meets the predicates.
    Count,
    /// A boolean expression over rule references (`rule_a and (rule_b or rule_c)`).
    Expression(ConditionExpr),
}

/// One compiled correlation rule.
#[derive(Debug, Clone)]
struct Rule {
    /// id, else name, else title: what signals carry as `rule_id`.
    rule_id: String,
    title: String,
    level: String,
    kind: Kind,
    /// The references as written (ids or names), one per slot.
    refs: Vec<String>,
    /// Per group-by entry, the field to read for each slot (aliases resolved).
    group_by: Vec<(String, Vec<String>)>,
    /// The field value_count / value_sum / … aggregate.
    field: Option<String>,
    span_us: i64,
    predicates: Vec<(ConditionOperator, f64)>,
    temporal: TemporalCondition,
}

/// What a detection hit or a correlation signal feeds: (correlation index, slot).
type Feeds = Vec<(usize, usize)>;

/// Compiled correlation rules and the detection rules they (may) need.
pub struct CorrelationRules {
    rules: Vec<Rule>,
    /// Detection rule id/title (as matches carry it) → what it feeds.
    by_rule_id: HashMap<String, Feeds>,
    /// Correlation index → what its signals feed (chains).
    parents: Vec<Feeds>,
    /// Detection rules found beside the correlations, evaluated by the correlate stage itself.
    detections: SigmaRules,
}

/// A reference resolved to the id matches carry (`rule_id`), or kept as written.
fn match_id(rule: &rsigma_parser::SigmaRule) -> String {
    rule.id.clone().unwrap_or_else(|| rule.title.clone())
}

fn level_name(level: Option<rsigma_parser::Level>) -> String {
    level.map(|l| format!("{l:?}").to_ascii_lowercase()).unwrap_or_else(|| "medium".into())
}

impl CorrelationRules {
    pub fn empty() -> Self {
        Self { rules: Vec::new(), by_rule_id: HashMap::new(), parents: Vec::new(), detections: SigmaRules::empty() }
    }

    /// Loads every Sigma file under `paths`: correlation rules and the detection rules beside
    /// them. Detection rules referenced but not found here are matched by id against the
    /// matches quick-scan attached.
    pub fn load_all(paths: &[PathBuf]) -> (Self, Vec<FileError>) {
        let parsed = sigma::parse_paths(paths);
        let mut errors = parsed.errors;
        let (detections, files): (Vec<_>, Vec<_>) = parsed.rules.into_iter().unzip();
        let (correlations, correlation_files): (Vec<_>, Vec<_>) = parsed.correlations.into_iter().unzip();
        let (rules, problems) = Self::compile(detections, correlations);
        for (index, reason) in problems {
            let path = match index {
                Source::Detection(i) => files[i].clone(),
                Source::Correlation(i) => correlation_files[i].clone(),
            };
            errors.push(FileError { path, reason });
        }
        (rules, errors)
    }

    /// Rules from YAML text (one or more documents); for tests.
    pub fn from_yaml(text: &str) -> (Self, Vec<String>) {
        match rsigma_parser::parse_sigma_yaml(text) {
            Ok(collection) => {
                let mut errors: Vec<String> = collection.errors.iter().map(ToString::to_string).collect();
                let (rules, problems) = Self::compile(collection.rules, collection.correlations);
                errors.extend(problems.into_iter().map(|(_, e)| e));
                (rules, errors)
            }
            Err(e) => (Self::empty(), vec![e.to_string()]),
        }
    }

    fn compile(detections: Vec<rsigma_parser::SigmaRule>, correlations: Vec<CorrelationRule>) -> (Self, Vec<(Source, String)>) {
        let mut problems = Vec::new();
        // Name or id → the id matches carry.
        let mut detection_ids: HashMap<String, String> = HashMap::new();
        for rule in &detections {
            let id = match_id(rule);
            if let Some(name) = &rule.name {
                detection_ids.insert(name.clone(), id.clone());
            }
            if let Some(rid) = &rule.id {
                detection_ids.insert(rid.clone(), id.clone());
            }
            detection_ids.insert(rule.title.clone(), id);
        }
        let (detection_rules, detection_errors) = SigmaRules::from_rules(detections);
        problems.extend(detection_errors.into_iter().map(|e| (Source::Detection(0), e)));

        // Correlation name or id → its index.
        let mut correlation_ids: HashMap<String, usize> = HashMap::new();
        for (index, rule) in correlations.iter().enumerate() {
            for key in [&rule.id, &rule.name].into_iter().flatten() {
                correlation_ids.insert(key.clone(), index);
            }
        }
        let mut compiled: Vec<Option<Rule>> = Vec::with_capacity(correlations.len());
        for (index, rule) in correlations.iter().enumerate() {
            match compile_rule(rule) {
                Ok(rule) => compiled.push(Some(rule)),
                Err(reason) => {
                    problems.push((Source::Correlation(index), format!("correlation \"{}\": {reason}", rule.title)));
                    compiled.push(None);
                }
            }
        }
        // Chains must not loop: a correlation referring to itself, directly or not, would
        // feed itself forever.
        for index in 0..correlations.len() {
            if compiled[index].is_some() && reaches(index, index, &correlations, &correlation_ids, &mut HashSet::new()) {
                problems.push((Source::Correlation(index), format!("correlation \"{}\": its references loop back to it", correlations[index].title)));
                compiled[index] = None;
            }
        }
        // Keep the valid ones, renumbered.
        let mut new_index = vec![usize::MAX; compiled.len()];
        let mut rules = Vec::new();
        for (index, rule) in compiled.into_iter().enumerate() {
            if let Some(rule) = rule {
                new_index[index] = rules.len();
                rules.push(rule);
            }
        }
        let mut by_rule_id: HashMap<String, Feeds> = HashMap::new();
        let mut parents: Vec<Feeds> = vec![Vec::new(); rules.len()];
        for (index, rule) in correlations.iter().enumerate() {
            let own = new_index[index];
            if own == usize::MAX {
                continue;
            }
            for (slot, reference) in rule.rules.iter().enumerate() {
                match correlation_ids.get(reference) {
                    Some(&child) if new_index[child] != usize::MAX => parents[new_index[child]].push((own, slot)),
                    Some(_) => problems.push((
                        Source::Correlation(index),
                        format!("correlation \"{}\": refers to \"{reference}\", which did not load", rule.title),
                    )),
                    None => {
                        let id = detection_ids.get(reference).cloned().unwrap_or_else(|| reference.clone());
                        by_rule_id.entry(id).or_default().push((own, slot));
                    }
                }
            }
        }
        (Self { rules, by_rule_id, parents, detections: detection_rules }, problems)
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn detection_rule_count(&self) -> usize {
        self.detections.rule_count()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Feeds one event into `state` and returns the signals it completes.
    ///
    /// Detection hits are quick-scan's matches on the event (Sigma rule, IoC and pattern
    /// ids) plus the detection rules loaded beside the correlations.
    pub fn observe(&self, state: &mut PartitionState, event: &Event, limits: &StateLimits) -> Observed {
        let mut observed = Observed::default();
        if self.rules.is_empty() {
            return observed;
        }
        let t = event.time_us;
        let lateness = i64::try_from(limits.allowed_lateness.as_micros()).unwrap_or(i64::MAX);
        if state.watermark_us != i64::MIN && t < state.watermark_us.saturating_sub(lateness) {
            observed.late = true;
            return observed;
        }
        state.watermark_us = state.watermark_us.max(t);

        // Hits: every quick-scan match (Sigma, IoC or pattern id) and the correlate-side
        // detection rules.
        let doc = sigma::normalized_fields(event);
        let own = if self.detections.rule_count() > 0 { self.detections.matching_ids_normalized(event, &doc) } else { Vec::new() };
        let mut hits: Vec<&str> = event.matches.iter().map(|m| m.rule_id.as_str()).chain(own.iter().map(|id| id.as_ref())).collect();
        hits.sort_unstable();
        hits.dedup();

        let fields = EventFields { event, doc: &doc };
        // (correlation, slot, time, contributing id, depth) still to apply; chains append to
        // it. The event's own id is borrowed, not copied per rule it feeds.
        let mut work: Vec<(usize, usize, i64, Cow<'_, str>, usize)> = Vec::new();
        for hit in hits {
            if let Some(feeds) = self.by_rule_id.get(hit) {
                work.extend(feeds.iter().map(|&(c, s)| (c, s, t, Cow::Borrowed(event.id.as_str()), 0)));
            }
        }
        let mut next = 0;
        while next < work.len() {
            let (index, slot, time, depth) = (work[next].0, work[next].1, work[next].2, work[next].4);
            let contributor = std::mem::take(&mut work[next].3);
            next += 1;
            let rule = &self.rules[index];
            let Some(signal) = self.apply(rule, slot, time, &contributor, &fields, state, limits, &mut observed) else {
                continue;
            };
            if depth < MAX_CHAIN_DEPTH {
                let id = signal_id(&signal, &event.tenant);
                for &(parent, parent_slot) in &self.parents[index] {
                    work.push((parent, parent_slot, signal.window_end_us, Cow::Owned(id.clone()), depth + 1));
                }
            }
            observed.signals.push(signal);
        }
        observed
    }

    /// Adds one entry to the rule's window for the event's group and evaluates the windows
    /// it completes. Returns the signal, if one fired.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        rule: &Rule,
        slot: usize,
        time: i64,
        contributor: &str,
        fields: &EventFields<'_>,
        state: &mut PartitionState,
        limits: &StateLimits,
        observed: &mut Observed,
    ) -> Option<Correlation> {
        let mut key = String::with_capacity(64);
        key.push_str(&rule.rule_id);
        key.push('\u{1f}');
        key.push_str(&fields.event.tenant);
        for (name, per_slot) in &rule.group_by {
            let field = per_slot.get(slot).map(String::as_str).unwrap_or(name);
            let value = fields.get(field)?;
            key.push('\u{1f}');
            key.push_str(&value);
        }
        let value = match rule.kind {
            Kind::ValueCount | Kind::ValuePercentile => Some(EntryValue::Text(fields.get(rule.field.as_deref()?)?.into_owned())),
            Kind::ValueSum | Kind::ValueAvg => Some(EntryValue::Number(fields.get(rule.field.as_deref()?)?.trim().parse::<f64>().ok()?)),
            _ => None,
        };
        let entry = Entry { ts: time, slot: slot as u16, value, event: contributor.into() };
        let lateness = i64::try_from(limits.allowed_lateness.as_micros()).unwrap_or(i64::MAX);
        let horizon = state.watermark_us.saturating_sub(lateness).saturating_sub(rule.span_us);
        let window = state.window_mut(&key, fields.event.ingest_time_us, time);
        window.insert(entry);
        window.evict_before(horizon);
        if window.entries.len() > limits.max_entries_per_key {
            let excess = window.entries.len() - limits.max_entries_per_key;
            window.entries.drain(..excess);
            observed.truncated_entries += excess as u64;
        }
        // Windows ending at this entry and, for an out-of-order entry, at later ones it
        // now belongs to: the entries from `time` to `time` + span, in time order as the
        // window keeps them.
        let last = time.saturating_add(rule.span_us);
        let mut fired = None;
        let mut last_end = None;
        for at in window.entries.partition_point(|e| e.ts < time)..window.entries.len() {
            let end = window.entries[at].ts;
            if end > last {
                break;
            }
            if last_end == Some(end) || end < window.suppressed_until_us {
                continue;
            }
            last_end = Some(end);
            if let Some(range) = rule.evaluate(&window.entries, end) {
                let entries = &window.entries;
                let count = (range.end - range.start) as i64;
                let event_ids = entries.range(range.clone()).rev().take(SIGNAL_EVENT_IDS).map(|e| e.event.to_string()).collect();
                fired = Some(Correlation {
                    rule_id: rule.rule_id.clone(),
                    title: rule.title.clone(),
                    level: rule.level.clone(),
                    kind: rule.kind.as_str().into(),
                    group_key: rule.group_display(slot, fields),
                    window_start_us: entries[range.start].ts,
                    window_end_us: end,
                    count,
                    event_ids,
                });
                window.suppressed_until_us = end.saturating_add(rule.span_us);
                break;
            }
        }
        fired
    }
}

/// Where a load problem came from (to name its file).
enum Source {
    Detection(usize),
    Correlation(usize),
}

fn reaches(from: usize, target: usize, all: &[CorrelationRule], ids: &HashMap<String, usize>, seen: &mut HashSet<usize>) -> bool {
    for reference in &all[from].rules {
        if let Some(&child) = ids.get(reference) {
            if child == target {
                return true;
            }
            if seen.insert(child) && reaches(child, target, all, ids, seen) {
                return true;
            }
        }
    }
    false
}

fn compile_rule(rule: &CorrelationRule) -> Result<Rule, String> {
    let kind = match rule.correlation_type {
        CorrelationType::EventCount => Kind::EventCount,
        CorrelationType::ValueCount => Kind::ValueCount,
        CorrelationType::Temporal => Kind::Temporal,
        CorrelationType::TemporalOrdered => Kind::TemporalOrdered,
        CorrelationType::ValueSum => Kind::ValueSum,
        CorrelationType::ValueAvg => Kind::ValueAvg,
        CorrelationType::ValuePercentile => Kind::ValuePercentile,
        CorrelationType::ValueMedian => return Err("value_median is not part of the Sigma correlation specification; not supported".into()),
    };
    if rule.window != rsigma_parser::WindowMode::Sliding {
        return Err(format!("window mode `{}` is not supported (sliding windows only)", rule.window.as_str()));
    }
    if rule.rules.is_empty() {
        return Err("`rules` is empty".into());
    }
    if rule.rules.len() > u16::MAX as usize {
        return Err("too many referenced rules".into());
    }
    let span_us = i64::try_from(rule.timespan.seconds).ok().and_then(|s| s.checked_mul(1_000_000)).filter(|&s| s > 0).ok_or("timespan must be positive")?;
    let (predicates, field, temporal) = match &rule.condition {
        CorrelationCondition::Threshold { predicates, field, .. } => {
            let predicates: Vec<(ConditionOperator, f64)> = predicates.iter().map(|(op, v)| (*op, *v as f64)).collect();
            let temporal = match kind {
                // The parser fills a missing condition with `gte: 1`; for temporal rules the
                // specification's default is "all referenced rules".
                Kind::Temporal | Kind::TemporalOrdered if field.is_none() && predicates.len() == 1 && predicates[0] == (ConditionOperator::Gte, 1.0) => {
                    TemporalCondition::All
                }
                _ => TemporalCondition::Count,
            };
            let field = match field.as_deref() {
                Some([one]) => Some(one.clone()),
                Some([]) | None => None,
                Some(_) => return Err("several condition fields are not supported".into()),
            };
            (predicates, field, temporal)
        }
        CorrelationCondition::Extended(expr) => match kind {
            Kind::Temporal | Kind::TemporalOrdered => (Vec::new(), None, TemporalCondition::Expression(expr.clone())),
            _ => return Err("a condition expression is only valid for temporal rules".into()),
        },
    };
    if matches!(kind, Kind::ValueCount | Kind::ValueSum | Kind::ValueAvg | Kind::ValuePercentile) && field.is_none() {
        return Err(format!("{} needs `field` in its condition", kind.as_str()));
    }
    if predicates.is_empty() && !matches!(temporal, TemporalCondition::Expression(_)) {
        return Err("condition has no comparison (gt, gte, lt, lte, eq, neq)".into());
    }
    let group_by = rule
        .group_by
        .iter()
        .map(|name| {
            let per_slot = match rule.aliases.iter().find(|a| &a.alias == name) {
                Some(alias) => rule.rules.iter().map(|r| alias.mapping.get(r).cloned().unwrap_or_else(|| name.clone())).collect(),
                None => Vec::new(),
            };
            (name.clone(), per_slot)
        })
        .collect();
    Ok(Rule {
        rule_id: rule.id.clone().or_else(|| rule.name.clone()).unwrap_or_else(|| rule.title.clone()),
        title: rule.title.clone(),
        level: level_name(rule.level),
        kind,
        refs: rule.rules.clone(),
        group_by,
        field,
        span_us,
        predicates,
        temporal,
    })
}

fn compare(op: ConditionOperator, left: f64, right: f64) -> bool {
    match op {
        ConditionOperator::Lt => left < right,
        ConditionOperator::Lte => left <= right,
        ConditionOperator::Gt => left > right,
        ConditionOperator::Gte => left >= right,
        ConditionOperator::Eq => left == right,
        ConditionOperator::Neq => left != right,
    }
}

impl Rule {
    /// `name=value, …` of the group-by fields, for signals (values known to be present).
    fn group_display(&self, slot: usize, fields: &EventFields<'_>) -> String {
        let parts: Vec<String> = self
            .group_by
            .iter()
            .map(|(name, per_slot)| {
                let field = per_slot.get(slot).map(String::as_str).unwrap_or(name);
                format!("{name}={}", fields.get(field).unwrap_or_default())
            })
            .collect();
        parts.join(", ")
    }

    fn holds(&self, value: f64) -> bool {
        self.predicates.iter().all(|&(op, threshold)| compare(op, value, threshold))
    }

    /// Whether the window ending at `end` meets the condition; the entries it spans.
    fn evaluate(&self, entries: &VecDeque<Entry>, end: i64) -> Option<std::ops::Range<usize>> {
        let start = end.saturating_sub(self.span_us);
        let lo = entries.partition_point(|e| e.ts < start);
        let hi = entries.partition_point(|e| e.ts <= end);
        if lo >= hi {
            return None;
        }
        let window = entries.range(lo..hi);
        let ok = match self.kind {
            Kind::EventCount => self.holds((hi - lo) as f64),
            Kind::ValueCount => {
                let distinct: HashSet<&str> = window.filter_map(|e| e.value.as_ref().and_then(EntryValue::text)).collect();
                self.holds(distinct.len() as f64)
            }
            Kind::ValueSum | Kind::ValueAvg => {
                let values: Vec<f64> = window.filter_map(|e| e.value.as_ref().and_then(EntryValue::number)).collect();
                let sum: f64 = values.iter().sum();
                let value = if self.kind == Kind::ValueSum { sum } else { sum / values.len().max(1) as f64 };
                !values.is_empty() && self.holds(value)
            }
            Kind::ValuePercentile => {
                // The share of the window's events with the value of the event ending it.
                let last = entries[hi - 1].value.as_ref().and_then(EntryValue::text);
                let same = window.filter(|e| e.value.as_ref().and_then(EntryValue::text) == last).count();
                self.holds(100.0 * same as f64 / (hi - lo) as f64)
            }
            Kind::Temporal => {
                let mut seen = vec![false; self.refs.len()];
                for e in window {
                    if let Some(s) = seen.get_mut(e.slot as usize) {
                        *s = true;
                    }
                }
                self.temporal_holds(&seen)
            }
            Kind::TemporalOrdered => {
                // Greedy: the earliest hit of each rule after the previous one's.
                let mut need = 0;
                for e in window {
                    if e.slot as usize == need {
                        need += 1;
                        if need == self.refs.len() {
                            break;
                        }
                    }
                }
                let mut seen = vec![false; self.refs.len()];
                seen.iter_mut().take(need).for_each(|s| *s = true);
                self.temporal_holds(&seen) && (need == self.refs.len() || !matches!(self.temporal, TemporalCondition::All))
            }
        };
        ok.then_some(lo..hi)
    }

    fn temporal_holds(&self, seen: &[bool]) -> bool {
        match &self.temporal {
            TemporalCondition::All => seen.iter().all(|&s| s),
            TemporalCondition::Count => self.holds(seen.iter().filter(|&&s| s).count() as f64),
            TemporalCondition::Expression(expr) => self.expression_holds(expr, seen),
        }
    }

    fn expression_holds(&self, expr: &ConditionExpr, seen: &[bool]) -> bool {
        let named = |name: &str| self.refs.iter().position(|r| r == name).is_some_and(|i| seen[i]);
        match expr {
            ConditionExpr::And(parts) => parts.iter().all(|p| self.expression_holds(p, seen)),
            ConditionExpr::Or(parts) => parts.iter().any(|p| self.expression_holds(p, seen)),
            ConditionExpr::Not(inner) => !self.expression_holds(inner, seen),
            ConditionExpr::Identifier(name) => named(name),
            ConditionExpr::Selector { quantifier, pattern } => {
                let matching: Vec<bool> = self
                    .refs
                    .iter()
                    .zip(seen)
                    .filter(|(r, _)| match pattern {
                        SelectorPattern::Them => true,
                        SelectorPattern::Pattern(p) => wildcard(p, r),
                    })
                    .map(|(_, &s)| s)
                    .collect();
                let hits = matching.iter().filter(|&&s| s).count();
                match quantifier {
                    Quantifier::Any => hits >= 1,
                    Quantifier::All => hits == matching.len(),
                    Quantifier::Count(n) => hits as u64 >= *n,
                }
            }
        }
    }
}

/// `*` wildcard match (selector patterns such as `recon_*`).
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(tail) = text.strip_prefix(prefix) else { return false };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| wildcard(rest, &tail[i..]))
        }
    }
}

/// A deterministic id for a signal: the same signal replayed after a crash gets the same id,
/// so downstream deduplication sees one.
pub fn signal_id(signal: &Correlation, tenant: &str) -> String {
    let key = format!("{}|{}|{}|{}", tenant, signal.rule_id, signal.group_key, signal.window_end_us);
    crate::hex_id("corr-", xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
}

/// Field lookup for group-by and value fields: the event's document ([`sigma::normalized_fields`]:
/// producer fields, Sigma's names, our canonical names), then a few other names producers
/// and rules use for the same fields.
struct EventFields<'a> {
    event: &'a Event,
    doc: &'a SigmaDoc<'a>,
}

impl EventFields<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(v) = self.doc.get(name) {
            return Some(v);
        }
        // The document has answered for the producer fields and every derived name; what
        // is left are aliases of derived fields, byte counts and numeric features.
        let e = self.event;
        fn owned(v: Option<impl ToString>) -> Option<Cow<'static, str>> {
            v.map(|v| Cow::Owned(v.to_string()))
        }
        let derived = match name {
            "TargetUserName" => "user",
            "ComputerName" | "hostname" => "host",
            "SourceIP" | "source.ip" | "IpAddress" => "src_ip",
            "DestinationIP" | "destination.ip" => "dst_ip",
            "destination.port" => "dst_port",
            "llm.session_id" => "session_id",
            "bytes_sent" | "bytes_out" | "BytesOut" => return owned(e.http.as_ref().and_then(|h| h.bytes_out)),
            "bytes_received" | "bytes_in" | "BytesIn" => return owned(e.http.as_ref().and_then(|h| h.bytes_in)),
            other => return owned(other.strip_prefix("features.").and_then(|feature| e.features.get(feature))),
        };
        sigma::derived_field(e, derived)
    }
}

/// The result of observing one event.
#[derive(Debug, Default)]
pub struct Observed {
    pub signals: Vec<Correlation>,
    /// The event was later than the allowed lateness and did not join any window.
    pub late: bool,
    /// Oldest window entries dropped by the per-key cap.
    pub truncated_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum EntryValue {
    Text(String),
    Number(f64),
}

impl EntryValue {
    fn text(&self) -> Option<&str> {
        match self {
            EntryValue::Text(t) => Some(t),
            EntryValue::Number(_) => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            EntryValue::Number(n) => Some(*n),
            EntryValue::Text(_) => None,
        }
    }
}

/// One hit in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    ts: i64,
    slot: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<EntryValue>,
    /// The contributing event (or child signal) id.
    event: Box<str>,
}

/// The entries of one (rule, group), in event-time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    entries: VecDeque<Entry>,
    /// No signal for windows ending before this (one signal per window).
    suppressed_until_us: i64,
    /// Processing time of the last update, for eviction order under the key budget.
    touched_us: i64,
}

impl Window {
    fn insert(&mut self, entry: Entry) {
        // Most windows never get a second entry (an address seen once): room for one, not
        // the four a first push reserves (~190 bytes less per window, ~27 MB at 143,724
        // windows, each fresh page costly to the process that first touches it).
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(1);
        }
        // Almost always the newest: search from the back.
        let at = self.entries.iter().rposition(|e| e.ts <= entry.ts).map_or(0, |i| i + 1);
        self.entries.insert(at, entry);
    }

    fn evict_before(&mut self, horizon: i64) {
        while self.entries.front().is_some_and(|e| e.ts < horizon) {
            self.entries.pop_front();
        }
    }

    fn newest(&self) -> Option<i64> {
        self.entries.back().map(|e| e.ts)
    }
}

/// The correlation state of one input partition: what a checkpoint saves and restores.
#[derive(Debug, Clone)]
pub struct PartitionState {
    /// Highest event time seen (µs); `i64::MIN` before the first event.
    pub watermark_us: i64,
    /// Input offset through which this state includes every event (set by the stage).
    pub applied_offset: Option<i64>,
    windows: TrackedMap<Window>,
    /// Signals fired per input offset not yet known to be committed, so a replayed record
    /// (offset ≤ `applied_offset`) carries the same signals it carried the first time.
    recent_signals: RecentResults<Vec<Correlation>>,
    /// Window keys by the newest entry time their window had when queued, oldest first: a
    /// sweep visits only the windows that may have expired, not every window held (a scan
    /// of all of them every 4,096 events cost in proportion to the windows held: 2.4% of
    /// the pipeline instance's time in a 600,000-event run, with `max_keys` allowing two
    /// million).
    /// A window's newest entry only ever moves later, so its queued time is never after
    /// its real one; a window found still in use is queued again at its newest. A key can
    /// be queued twice (evicted under the key budget, then opened again): the stale copy
    /// finds the window newer and re-queues it, and the queue is rebuilt once such copies
    /// outnumber the windows.
    expiry: BinaryHeap<Reverse<(i64, Box<str>)>>,
}

impl Default for PartitionState {
    fn default() -> Self {
        Self {
            watermark_us: i64::MIN,
            applied_offset: None,
            windows: TrackedMap::default(),
            recent_signals: RecentResults::default(),
            expiry: BinaryHeap::new(),
        }
    }
}

/// Queue entries beyond the windows held after which the expiry queue is rebuilt.
const EXPIRY_SLACK: usize = 1024;

impl PartitionState {
    /// The window of `key`, created (and queued for expiry at `entry_ts`, the time of the
    /// entry about to go in) if absent.
    fn window_mut(&mut self, key: &str, now_us: i64, entry_ts: i64) -> &mut Window {
        let (window, created) = self.windows.entry_mut_created(key);
        if created {
            self.expiry.push(Reverse((entry_ts, key.into())));
        }
        window.touched_us = window.touched_us.max(now_us);
        window
    }

    /// Every window queued at its newest entry (an empty one first in line).
    fn rebuild_expiry(&mut self) {
        self.expiry = self.windows.iter().map(|(key, w)| Reverse((w.newest().unwrap_or(i64::MIN), key.as_str().into()))).collect();
    }

    pub fn key_count(&self) -> usize {
        self.windows.len()
    }

    pub fn entry_count(&self) -> usize {
        self.windows.values().map(|w| w.entries.len()).sum()
    }

    /// Drops windows no event can complete any more (newest entry older than watermark −
    /// lateness − `max_span_us`). Visits only the windows queued before that horizon, so
    /// a call that finds nothing expired costs a comparison. Returns how many went.
    pub fn sweep(&mut self, limits: &StateLimits, max_span_us: i64) -> usize {
        let lateness = i64::try_from(limits.allowed_lateness.as_micros()).unwrap_or(i64::MAX);
        let horizon = self.watermark_us.saturating_sub(lateness).saturating_sub(max_span_us);
        let mut gone = 0;
        while self.expiry.peek().is_some_and(|Reverse((queued, _))| *queued < horizon) {
            let Some(Reverse((_, key))) = self.expiry.pop() else { break };
            match self.windows.get(&key).map(Window::newest) {
                // Already gone: evicted under the key budget, or a stale copy.
                None => {}
                Some(Some(newest)) if newest >= horizon => self.expiry.push(Reverse((newest, key))),
                Some(_) => {
                    self.windows.remove(&key);
                    gone += 1;
                }
            }
        }
        if self.expiry.len() > self.windows.len().saturating_mul(2).saturating_add(EXPIRY_SLACK) {
            self.rebuild_expiry();
        }
        gone
    }

    /// Evicts the `count` least recently updated windows (the key budget).
    pub fn evict_oldest(&mut self, count: usize) -> usize {
        self.windows.evict_oldest(count, |w| w.touched_us)
    }

    /// Remembers the signals the record at `offset` produced (see `recent_signals`).
    pub fn remember_signals(&mut self, offset: i64, signals: &[Correlation]) {
        if !signals.is_empty() {
            self.recent_signals.remember(offset, signals.to_vec());
        }
    }

    /// The signals the record at `offset` produced when it was first observed.
    pub fn recalled_signals(&self, offset: i64) -> Vec<Correlation> {
        self.recent_signals.recall(offset).unwrap_or_default()
    }

    /// Window keys (rule, tenant, group values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.windows.keys()
    }

    pub fn window(&self, key: &str) -> Option<&Window> {
        self.windows.get(key)
    }
}

/// A partition state's checkpoint metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    pub version: u32,
    pub watermark_us: i64,
    pub applied_offset: Option<i64>,
    #[serde(default)]
    pub recent_signals: RecentResults<Vec<Correlation>>,
}

impl Checkpointed for PartitionState {
    type Meta = StateMeta;
    type Entry = Window;
    const VERSION: u32 = 1;

    fn meta(&self) -> StateMeta {
        StateMeta {
            version: Self::VERSION,
            watermark_us: self.watermark_us,
            applied_offset: self.applied_offset,
            recent_signals: self.recent_signals.clone(),
        }
    }

    fn meta_version(meta: &StateMeta) -> u32 {
        meta.version
    }

    fn applied_offset(&self) -> Option<i64> {
        self.applied_offset
    }

    fn entries(&self) -> &TrackedMap<Window> {
        &self.windows
    }

    fn entries_mut(&mut self) -> &mut TrackedMap<Window> {
        &mut self.windows
    }

    fn restore(meta: StateMeta, windows: TrackedMap<Window>) -> Self {
        let mut state = Self {
            watermark_us: meta.watermark_us,
            applied_offset: meta.applied_offset,
            windows,
            recent_signals: meta.recent_signals,
            expiry: BinaryHeap::new(),
        };
        state.rebuild_expiry();
        state
    }

    fn committed_before(&mut self, offset: i64) {
        self.recent_signals.forget_before(offset);
    }
}

impl CorrelationRules {
    /// The longest timespan of any rule (how long a window can matter).
    pub fn max_span_us(&self) -> i64 {
        self.rules.iter().map(|r| r.span_us).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    /// Every name group-by and value fields may use, and what it reads: producer fields
    /// first, then the document's names, then their aliases, byte counts and features.
    #[test]
    fn group_by_fields_read_the_document_then_aliases() {
        use crate::event::{Actor, Endpoint, Http, Llm};
        let mut event = Event {
            tenant: "acme".into(),
            host: Some("dc1".into()),
            actor: Some(Actor { user: Some("alice".into()), domain: None, session_id: Some("s-actor".into()) }),
            src: Some(Endpoint { ip: Some("10.0.0.5".into()), port: Some(51234), hostname: None }),
            dst: Some(Endpoint { ip: Some("10.0.0.1".into()), port: Some(443), hostname: None }),
            http: Some(Http { bytes_in: Some(12), bytes_out: Some(3400), ..Default::default() }),
            llm: Some(Llm { session_id: Some("s-llm".into()), ..Default::default() }),
            ..Event::default()
        };
        event.features.insert("duration".into(), 1.5);
        event.attrs.insert("WorkstationName".into(), "ws7".into());
        let expected = [
            (&["tenant"][..], Some("acme")),
            (&["user", "User", "TargetUserName"][..], Some("alice")),
            (&["host", "Computer", "ComputerName", "hostname"][..], Some("dc1")),
            (&["src_ip", "SourceIp", "SourceIP", "source.ip", "IpAddress"][..], Some("10.0.0.5")),
            (&["dst_ip", "DestinationIp", "DestinationIP", "destination.ip"][..], Some("10.0.0.1")),
            (&["dst_port", "DestinationPort", "destination.port"][..], Some("443")),
            (&["session_id", "llm.session_id"][..], Some("s-llm")),
            (&["bytes_sent", "bytes_out", "BytesOut"][..], Some("3400")),
            (&["bytes_received", "bytes_in", "BytesIn"][..], Some("12")),
            (&["features.duration"][..], Some("1.5")),
            (&["WorkstationName"][..], Some("ws7")),
            (&["features.nope", "nope", "SourceHostname"][..], None),
        ];
        let doc = sigma::normalized_fields(&event);
        let fields = EventFields { event: &event, doc: &doc };
        for (names, value) in expected {
            for name in names {
                assert_eq!(fields.get(name).as_deref(), value, "{name}");
            }
        }
        // A producer field named as an alias is the producer's.
        event.attrs.insert("hostname".into(), "from-producer".into());
        let doc = sigma::normalized_fields(&event);
        let fields = EventFields { event: &event, doc: &doc };
        assert_eq!(fields.get("hostname").as_deref(), Some("from-producer"));
        assert_eq!(fields.get("ComputerName").as_deref(), Some("dc1"));
    }

    /// Opens (or adds to) window `key` with an entry at `ts`, as `apply` does.
    fn add(state: &mut PartitionState, key: &str, ts: i64) {
        state.watermark_us = state.watermark_us.max(ts);
        state.window_mut(key, 0, ts).insert(Entry { ts, slot: 0, value: None, event: "e".into() });
    }

    fn keys(state: &PartitionState) -> Vec<&str> {
        let mut keys: Vec<&str> = state.keys().collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_sweep_drops_exactly_the_windows_whose_newest_entry_is_past_the_horizon() {
        let limits = StateLimits { allowed_lateness: std::time::Duration::from_secs(10), ..StateLimits::default() };
        let span = 5 * SEC;
        let mut state = PartitionState::default();
        add(&mut state, "a", 100 * SEC);
        add(&mut state, "b", 101 * SEC);
        add(&mut state, "c", 102 * SEC);
        // "a" was queued at 100 s but is still in use: its newest entry is at 130 s.
        add(&mut state, "a", 130 * SEC);
        // Watermark 130 s: horizon 130 - 10 - 5 = 115 s. "b" and "c" are past it.
        assert_eq!(state.sweep(&limits, span), 2);
        assert_eq!(keys(&state), ["a"]);
        // Nothing more has expired: nothing goes, whatever the number of calls.
        for _ in 0..3 {
            assert_eq!(state.sweep(&limits, span), 0);
        }
        // A window exactly at the horizon stays; one microsecond before it goes.
        add(&mut state, "d", 140 * SEC);
        add(&mut state, "e", 140 * SEC - 1);
        state.watermark_us = 155 * SEC;
        assert_eq!(state.sweep(&limits, span), 2, "a (130 s) and e go, d (140 s = the horizon) stays");
        assert_eq!(keys(&state), ["d"]);
        // The removals reach the checkpoint like any other.
        let (_, removed) = state.windows.take_changes();
        assert_eq!(removed.len(), 4);
    }

    #[test]
    fn windows_reopened_after_an_eviction_expire_once_and_the_queue_stays_bounded() {
        let limits = StateLimits { allowed_lateness: std::time::Duration::ZERO, ..StateLimits::default() };
        let mut state = PartitionState::default();
        // Each round: 100 windows, all evicted under the key budget, then reopened later:
        // every reopening queues its key again next to the stale copy.
        for round in 0..50i64 {
            for k in 0..100 {
                add(&mut state, &format!("k{k}"), (round * 10 + 1) * SEC);
            }
            assert_eq!(state.evict_oldest(100), 100);
            for k in 0..100 {
                add(&mut state, &format!("k{k}"), (round * 10 + 2) * SEC);
            }
            state.sweep(&limits, SEC);
            assert!(state.expiry.len() <= 2 * state.key_count() + EXPIRY_SLACK, "queue {} for {} windows", state.expiry.len(), state.key_count());
        }
        assert_eq!(state.key_count(), 100);
        // Time moves past every window: each goes exactly once, and the queue empties.
        state.watermark_us = 10_000 * SEC;
        assert_eq!(state.sweep(&limits, SEC), 100);
        assert_eq!(state.key_count(), 0);
        assert!(state.expiry.is_empty());
    }

    #[test]
    fn restored_windows_are_queued_for_expiry() {
        let limits = StateLimits { allowed_lateness: std::time::Duration::ZERO, ..StateLimits::default() };
        let mut state = PartitionState::default();
        add(&mut state, "old", 10 * SEC);
        add(&mut state, "new", 58 * SEC);
        let windows = TrackedMap::from_entries(state.windows.iter().map(|(k, w)| (k.clone(), w.clone())));
        let mut restored = PartitionState::restore(state.meta(), windows);
        assert_eq!(restored.expiry.len(), 2);
        restored.watermark_us = 60 * SEC;
        assert_eq!(restored.sweep(&limits, 5 * SEC), 1);
        assert_eq!(keys(&restored), ["new"]);
    }

    #[test]
    fn wildcard_matches_selector_patterns() {
        assert!(wildcard("recon_*", "recon_cmd_a"));
        assert!(wildcard("*_a", "recon_cmd_a"));
        assert!(!wildcard("recon_*", "other"));
        assert!(wildcard("exact", "exact"));
    }
}
