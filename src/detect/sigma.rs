//! Sigma detection rules (SigmaHQ YAML, unmodified) evaluated with rsigma.
//!
//! An event meets only the rules of its logsource (product / category / service): without
//! that, "not"-style rules fire on every event of another product. The logsource and the
//! field names Sigma rules use (Sysmon/Windows EventData names such as `Image`,
//! `CommandLine`, `TargetUserName`) are derived from the normalized event by [`document`]
//! and [`logsource`].
//!
//! # Errors
//!
//! Loading never stops at a bad rule: every file or document that does not parse or compile
//! is reported with its path and reason, and the rest are loaded.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rsigma_eval::event::{EventValue, JsonEvent};
use rsigma_eval::Engine;
use rsigma_parser::LogSource;
use serde_json::{Map, Value};

use super::literal_gate::LiteralGate;
use super::FileError;
use crate::event::{Event, EventClass, Match};

/// A rule's logsource as a partition key: (product, category, service), lowercased.
type LogsourceKey = (Option<String>, Option<String>, Option<String>);

fn rule_key(ls: &LogSource) -> LogsourceKey {
    let lower = |v: &Option<String>| v.as_ref().map(|v| v.to_ascii_lowercase());
    (lower(&ls.product), lower(&ls.category), lower(&ls.service))
}

/// Compiled Sigma detection rules, partitioned by logsource.
///
/// One rsigma [`Engine`] per distinct (product, category, service) of the rules. An event
/// only meets the partitions its logsource satisfies (at most eight keys per logsource:
/// each of the three either the event's value or unset), so neither rsigma's candidate
/// index nor its always-evaluated rules see the other products' and categories' rules.
/// rsigma alone indexes every rule together and filters by logsource per candidate.
pub struct SigmaRules {
    partitions: Vec<Engine>,
    by_key: std::collections::HashMap<LogsourceKey, usize>,
    /// Which rules of the routed partitions can match an event at all; only those are
    /// evaluated on normalized events ([`SigmaDoc`]). One gate per route (the partitions
    /// one kind of event meets), built on first use: a Windows process-creation event then
    /// looks only for the literals of the rules it can meet, about a third of all, which
    /// makes the scan's table smaller and its false hits fewer.
    route_gates: std::sync::RwLock<std::collections::HashMap<Vec<usize>, std::sync::Arc<LiteralGate>>>,
    /// One gate over every partition: for events of a route beyond [`MAX_ROUTE_GATES`], and
    /// for [`SigmaRules::gate_stats`]. Built on first use.
    all_gate: std::sync::OnceLock<LiteralGate>,
    /// The route of each logsource set seen, so an event pays one hash lookup for its
    /// partitions and their gate instead of up to eight map lookups with owned keys per
    /// logsource and another for the gate. Bounded by [`MAX_CACHED_ROUTES`]; beyond it
    /// routes are worked out each time.
    route_cache: std::sync::RwLock<crate::FastMap<String, std::sync::Arc<Route>>>,
    /// The routes of non-Windows events, whose logsource follows from their host product
    /// and class alone: one slot per (correlate's or not, product, class), so such an event
    /// finds its route by index, without working out its logsources (allocating) or
    /// building a key (see [`SigmaRules::plain_route`]).
    plain_routes: Box<[std::sync::OnceLock<std::sync::Arc<Route>>]>,
}

/// Slots of [`SigmaRules::plain_routes`]: for quick-scan and for correlate, per host
/// product (none or one of [`HOST_PRODUCTS`]) and event class.
const PLAIN_ROUTES: usize = 2 * (1 + HOST_PRODUCTS.len()) * EventClass::ALL.len();

fn plain_routes() -> Box<[std::sync::OnceLock<std::sync::Arc<Route>>]> {
    (0..PLAIN_ROUTES).map(|_| std::sync::OnceLock::new()).collect()
}

/// The partitions an event of some logsources meets, and the literal gate over them
/// (`None`: beyond [`MAX_ROUTE_GATES`], the gate over every partition serves).
struct Route {
    partitions: Vec<usize>,
    gate: Option<std::sync::Arc<LiteralGate>>,
}

/// Distinct logsource sets whose routes are kept.
const MAX_CACHED_ROUTES: usize = 4096;

/// Distinct routes that get a gate of their own; an event of any further route uses the
/// gate over every partition (same results, slower). Real traffic has a few dozen.
const MAX_ROUTE_GATES: usize = 256;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<FileError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(FileError { path: dir.to_path_buf(), reason: e.to_string() });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out, errors);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

/// Sigma documents parsed from files: detection rules and correlation rules, each with the
/// file it came from, and every file or document that did not parse.
#[derive(Default)]
pub struct ParsedRules {
    pub rules: Vec<(rsigma_parser::SigmaRule, PathBuf)>,
    pub correlations: Vec<(rsigma_parser::CorrelationRule, PathBuf)>,
    pub errors: Vec<FileError>,
}

/// Parses every `.yml`/`.yaml` under each path (files or directories, recursively), in
/// path order.
pub fn parse_paths(paths: &[PathBuf]) -> ParsedRules {
    let mut files = Vec::new();
    let mut parsed = ParsedRules::default();
    for path in paths {
        if path.is_dir() {
            yaml_files(path, &mut files, &mut parsed.errors);
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                parsed.errors.push(FileError { path: file, reason: e.to_string() });
                continue;
            }
        };
        let collection = match rsigma_parser::parse_sigma_yaml(&text) {
            Ok(collection) => collection,
            Err(e) => {
                parsed.errors.push(FileError { path: file, reason: e.to_string() });
                continue;
            }
        };
        for error in &collection.errors {
            parsed.errors.push(FileError { path: file.clone(), reason: error.to_string() });
        }
        parsed.rules.extend(collection.rules.into_iter().map(|rule| (rule, file.clone())));
        parsed.correlations.extend(collection.correlations.into_iter().map(|rule| (rule, file.clone())));
    }
    parsed
}

impl SigmaRules {
    pub fn empty() -> Self {
        Self { partitions: Vec::new(), by_key: Default::default(), route_gates: Default::default(), all_gate: Default::default(), route_cache: Default::default(), plain_routes: plain_routes() }
    }

    /// Partitions the rules by logsource and compiles each partition; errors carry the index
    /// of the rule in `rules`.
    fn compile(rules: Vec<rsigma_parser::SigmaRule>) -> (Self, Vec<(usize, String)>) {
        let mut groups: Vec<(LogsourceKey, Vec<usize>)> = Vec::new();
        let mut by_key = std::collections::HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            let key = rule_key(&rule.logsource);
            let slot = *by_key.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(index);
        }
        let mut errors = Vec::new();
        let mut partitions = Vec::with_capacity(groups.len());
        for (_, members) in &groups {
            let mut engine = Engine::new();
            // One add_rules call per engine: the engine rebuilds its candidate index after
            // each call, so adding rule by rule is quadratic.
            for (local, error) in engine.add_rules(members.iter().map(|&i| &rules[i])) {
                errors.push((members[local], error.to_string()));
            }
            partitions.push(engine);
        }
        (Self { partitions, by_key, route_gates: Default::default(), all_gate: Default::default(), route_cache: Default::default(), plain_routes: plain_routes() }, errors)
    }

    /// The partitions whose rules an event of any of `sources` may meet, each once. Every
    /// rule of such a partition satisfies the logsource, so it is evaluated without rsigma's
    /// per-candidate logsource check.
    fn routes(&self, sources: &[LogSource]) -> Vec<usize> {
        let mut routes: Vec<usize> = Vec::with_capacity(8);
        // Each of the three either the event's value or unset (the rule does not ask).
        let options = |v: &Option<String>| [v.clone(), None].into_iter().take(if v.is_some() { 2 } else { 1 });
        for source in sources {
            let (product, category, service) = rule_key(source);
            for p in options(&product) {
                for c in options(&category) {
                    for s in options(&service) {
                        if let Some(&slot) = self.by_key.get(&(p.clone(), c.clone(), s)) {
                            if !routes.contains(&slot) {
                                routes.push(slot);
                            }
                        }
                    }
                }
            }
        }
        routes
    }

    /// The route of `event`. A Windows event's logsources follow from four of its raw
    /// values (provider, channel, event id, Sysmon event type; see [`logsources`]), so its
    /// route is remembered under those, and an event seen before skips working out its
    /// logsources (lower-casing, allocating): ~3% of a scan.
    fn event_route(&self, event: &Event) -> std::sync::Arc<Route> {
        if !is_windows(event) {
            return self.plain_route(event, false);
        }
        let mut key = String::with_capacity(96);
        key.push('\u{3}');
        let attr = |name: &str| event.attrs.get(name).map(String::as_str);
        for part in [event.source.product.as_deref(), attr("Channel"), attr("EventID"), attr("EventType")] {
            // Length-prefixed: no value, whatever its characters, reads as two.
            match part {
                Some(value) => {
                    key.push_str(&value.len().to_string());
                    key.push(':');
                    key.push_str(value);
                }
                None => key.push('-'),
            }
        }
        self.remembered_route(key, || self.route(&logsources(event)))
    }

    /// The route remembered under `key`, or `make`'s, remembered while the cache has room.
    fn remembered_route(&self, key: String, make: impl FnOnce() -> std::sync::Arc<Route>) -> std::sync::Arc<Route> {
        // A poisoned lock only means a panic elsewhere while it was held; the map is whole.
        if let Some(route) = self.route_cache.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return route.clone();
        }
        let route = make();
        let mut cache = self.route_cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() < MAX_CACHED_ROUTES {
            cache.insert(key, route.clone());
        }
        route
    }

    /// The route of an event of `sources`: [`SigmaRules::routes`] and their gate,
    /// remembered per logsource set.
    fn route(&self, sources: &[LogSource]) -> std::sync::Arc<Route> {
        let mut key = String::with_capacity(64);
        for source in sources {
            for part in [&source.product, &source.category, &source.service] {
                match part {
                    Some(value) => {
                        key.push('\u{1}');
                        key.push_str(value);
                    }
                    None => key.push('\u{0}'),
                }
            }
            key.push('\u{2}');
        }
        self.remembered_route(key, || {
            let partitions = self.routes(sources);
            let gate = self.route_gate(&partitions);
            std::sync::Arc::new(Route { partitions, gate })
        })
    }

    /// Loads every rule under each path.
    pub fn load_all(paths: &[PathBuf]) -> (Self, Vec<FileError>) {
        let parsed = parse_paths(paths);
        let mut errors = parsed.errors;
        let (rules, files): (Vec<_>, Vec<_>) = parsed.rules.into_iter().unzip();
        let (compiled, compile_errors) = Self::compile(rules);
        for (index, reason) in compile_errors {
            errors.push(FileError { path: files[index].clone(), reason });
        }
        (compiled, errors)
    }

    /// Loads every `.yml`/`.yaml` under `path` (a file or a directory, recursively).
    pub fn load(path: &Path) -> (Self, Vec<FileError>) {
        Self::load_all(&[path.to_path_buf()])
    }

    /// Compiles already parsed rules; errors name the rule's title.
    pub fn from_rules(rules: Vec<rsigma_parser::SigmaRule>) -> (Self, Vec<String>) {
        let titles: Vec<String> = rules.iter().map(|r| r.title.clone()).collect();
        let (compiled, errors) = Self::compile(rules);
        (compiled, errors.into_iter().map(|(i, e)| format!("{}: {e}", titles[i])).collect())
    }

    /// Rules from YAML text (one or more documents); for tests and `rules test`.
    pub fn from_yaml(text: &str) -> (Self, Vec<String>) {
        match rsigma_parser::parse_sigma_yaml(text) {
            Ok(collection) => {
                let mut errors: Vec<String> = collection.errors.iter().map(ToString::to_string).collect();
                let (rules, compile_errors) = Self::compile(collection.rules);
                errors.extend(compile_errors.into_iter().map(|(_, e)| e));
                (rules, errors)
            }
            Err(e) => (Self::empty(), vec![e.to_string()]),
        }
    }

    /// Ids (or titles) of the rules a raw JSON document matches, under `logsource`.
    pub fn evaluate_document(&self, document: &Value, logsource: &LogSource) -> Vec<String> {
        let json = JsonEvent::borrow(document);
        self.routes(std::slice::from_ref(logsource))
            .into_iter()
            .flat_map(|slot| self.partitions[slot].evaluate(&json))
            .map(rule_name)
            .collect()
    }

    /// Ids (or titles) of the rules a flat document matches with no logsource routing (every
    /// rule runs): what the `rsigma` CLI does, which is never told where an event comes from.
    /// For comparisons with it.
    pub fn evaluate_document_unrouted(&self, document: &Value) -> Vec<String> {
        let json = JsonEvent::borrow(document);
        self.partitions
            .iter()
            .flat_map(|engine| engine.evaluate(&json))
            .map(rule_name)
            .collect()
    }

    pub fn rule_count(&self) -> usize {
        self.partitions.iter().map(Engine::rule_count).sum()
    }

    /// Number of logsource partitions (distinct product/category/service of the rules).
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Every rule of the event's logsource that matches it.
    pub fn evaluate(&self, event: &Event) -> Vec<Match> {
        let route = self.event_route(event);
        if route.partitions.is_empty() {
            return Vec::new();
        }
        self.evaluate_gated(&route, &sigma_fields(event), evaluate_candidate)
    }

    /// Ids (or titles) of the rules that match the event as the correlate stage sees it
    /// (`doc` is [`normalized_fields`] of `event`): rules of the event's logsources and of
    /// `product: threatpipe, category: <class>`.
    pub fn matching_ids_normalized(&self, event: &Event, doc: &SigmaDoc<'_>) -> Vec<Cow<'_, str>> {
        let route = if is_windows(event) {
            self.route(&normalized_logsources(event, logsources(event)))
        } else {
            self.plain_route(event, true)
        };
        // Only the ids: no match built per matching rule (its title, tags and fields copied,
        // ~7 allocations), where correlate's own rules match about a third of all events.
        self.evaluate_gated(&route, doc, candidate_id)
    }

    /// The route of a non-Windows event ([`SigmaRules::event_route`]'s, or with
    /// `normalized` [`SigmaRules::matching_ids_normalized`]'s), remembered per host product
    /// and class, which are all its logsources follow from.
    fn plain_route(&self, event: &Event, normalized: bool) -> std::sync::Arc<Route> {
        let product = host_product(event);
        let product_index = product.and_then(|p| HOST_PRODUCTS.iter().position(|known| *known == p)).map_or(0, |i| i + 1);
        let index = (usize::from(normalized) * (1 + HOST_PRODUCTS.len()) + product_index) * EventClass::ALL.len() + event.class.index();
        let make = || {
            let sources = plain_logsources(product, event.class);
            self.route(&if normalized { normalized_logsources(event, sources) } else { sources })
        };
        match self.plain_routes.get(index) {
            Some(slot) => slot.get_or_init(make).clone(),
            None => make(),
        }
    }

    /// The rules of `route` that pass the literal gate and match, as `decide` reports each
    /// candidate ([`evaluate_candidate`]: its match; [`candidate_id`]: its id): the same as
    /// every routed engine's `evaluate`, at a fraction of the cost.
    fn evaluate_gated<'s, T>(
        &'s self,
        route: &Route,
        doc: &SigmaDoc<'_>,
        decide: impl Fn(&'s rsigma_eval::CompiledRule, &SigmaDoc<'_>) -> Option<T>,
    ) -> Vec<T> {
        let (_, candidates) = self.gate_candidates(route, doc);
        let mut found = Vec::new();
        for (slot, locals) in candidates {
            let rules = self.partitions[slot].rules();
            found.extend(locals.into_iter().filter_map(|local| decide(&rules[local as usize], doc)));
        }
        found
    }

    /// How many rules of the event's logsources pass the literal gate and are evaluated by
    /// rsigma, and how many of those have no gate (the cost the gate leaves); for `rules
    /// bench`.
    pub fn candidate_count(&self, event: &Event) -> (usize, usize) {
        let route = self.route(&logsources(event));
        if route.partitions.is_empty() {
            return (0, 0);
        }
        let (gate, candidates) = self.gate_candidates(&route, &sigma_fields(event));
        (candidates.iter().map(|(_, locals)| locals.len()).sum(), gate.ungated_in(&route.partitions))
    }

    /// The route's gate and the rules of the route it lets through for `doc`.
    fn gate_candidates<'a>(&'a self, route: &'a Route, doc: &SigmaDoc<'_>) -> (&'a LiteralGate, super::literal_gate::Candidates) {
        let gate = route.gate.as_deref().unwrap_or_else(|| self.all_gate());
        let candidates = gate.candidates(&route.partitions, |visit| match gate.named_fields() {
            // Fewer fields to ask for than the event has: ask for those.
            Some(names) if names.len() < doc.len_at_most() => {
                for name in names {
                    if let Some(value) = doc.get(name) {
                        visit(name, &value);
                    }
                }
            }
            _ => doc.visit(&mut |name, value| visit(name, &value)),
        });
        (gate, candidates)
    }

    /// Ids (or titles) of the matching rules of the event's logsources, every routed rule
    /// evaluated by rsigma's engines without the literal gate ([`SigmaRules::evaluate_ungated`]).
    pub fn matching_ids_ungated(&self, event: &Event) -> Vec<String> {
        self.evaluate_ungated(event).into_iter().map(|m| m.rule_id).collect()
    }

    /// The gate of `routes`, built on first use; `None` once [`MAX_ROUTE_GATES`] routes
    /// have theirs.
    fn route_gate(&self, routes: &[usize]) -> Option<std::sync::Arc<LiteralGate>> {
        // A poisoned lock only means a gate build panicked (a bug); the map is still whole.
        if let Some(gate) = self.route_gates.read().unwrap_or_else(|e| e.into_inner()).get(routes) {
            return Some(gate.clone());
        }
        let mut gates = self.route_gates.write().unwrap_or_else(|e| e.into_inner());
        if let Some(gate) = gates.get(routes) {
            return Some(gate.clone());
        }
        if gates.len() >= MAX_ROUTE_GATES {
            return None;
        }
        let rules: Vec<(usize, &[rsigma_eval::CompiledRule])> = routes.iter().map(|&slot| (slot, self.partitions[slot].rules())).collect();
        let gate = std::sync::Arc::new(LiteralGate::build(&rules));
        gates.insert(routes.to_vec(), gate.clone());
        Some(gate)
    }

    fn all_gate(&self) -> &LiteralGate {
        self.all_gate.get_or_init(|| {
            let rules: Vec<(usize, &[rsigma_eval::CompiledRule])> = self.partitions.iter().map(Engine::rules).enumerate().collect();
            LiteralGate::build(&rules)
        })
    }

    /// Literals the gate over every partition looks for, and rules it cannot gate
    /// (evaluated on every event of their logsource).
    pub fn gate_stats(&self) -> (usize, usize) {
        let gate = self.all_gate();
        (gate.literal_count(), gate.ungated_count())
    }

    /// Every rule of the event's logsources that matches it, each evaluated by rsigma's
    /// engines as they stand (no literal gate, rsigma's own matched fields): the reference
    /// quick-scan's results are tested against.
    pub fn evaluate_ungated(&self, event: &Event) -> Vec<Match> {
        let doc = sigma_fields(event);
        self.routes(&logsources(event))
            .into_iter()
            .flat_map(|slot| self.partitions[slot].evaluate(&doc))
            .filter_map(rsigma_match)
            .collect()
    }
}

/// How a result names its rule: the rule's id, or its title when it has none.
fn rule_name(result: rsigma_eval::EvaluationResult) -> String {
    let header = result.header;
    header.rule_id.unwrap_or(header.rule_title)
}

/// A match as we record it, from rsigma's result.
fn rsigma_match(result: rsigma_eval::EvaluationResult) -> Option<Match> {
    let detection = result.as_detection()?;
    let fields = detection
        .matched_fields
        .iter()
        .map(|m| (m.field.clone(), m.value.as_str().map(str::to_string).unwrap_or_else(|| m.value.to_string())))
        .collect();
    let header = result.header;
    Some(Match {
        rule_id: header.rule_id.unwrap_or_else(|| header.rule_title.clone()),
        title: header.rule_title,
        level: level_name(header.level).into(),
        kind: "sigma".into(),
        tags: header.tags,
        fields,
    })
}

fn level_name(level: Option<rsigma_parser::Level>) -> &'static str {
    use rsigma_parser::Level;
    match level {
        None | Some(Level::Informational) => "informational",
        Some(Level::Low) => "low",
        Some(Level::Medium) => "medium",
        Some(Level::High) => "high",
        Some(Level::Critical) => "critical",
    }
}

/// One candidate rule on the event, decided and its matched fields named exactly as
/// `rsigma_eval::evaluate_rule` does, in one pass over the rule where rsigma makes three.
///
/// rsigma decides a rule with a boolean pass; for a rule that matches it runs a second
/// pass to name the matched selections (cloning each name), then evaluates every item of
/// those selections again to name the matched fields. On mixed traffic a matching rule
/// cost about three evaluations, and rsigma's evaluation was a third of the scan. Here one
/// walk of the condition ([`condition_matches`], rsigma's detail pass with borrowed names)
/// decides the rule and names its selections, with rsigma's compiled matchers deciding
/// every item; the fields come from what that walk implies: in a selection that matched,
/// every item of a mapping matched (only a list of mappings has its members evaluated
/// again, to know which). Array scopes, which SigmaHQ does not use, take rsigma's own path.
/// `sigma_regression` checks every routed rule of the collection, on its samples and on
/// generator traffic, against rsigma's engines, matched fields included.
fn evaluate_candidate(rule: &rsigma_eval::CompiledRule, doc: &SigmaDoc<'_>) -> Option<Match> {
    let mut fields = crate::event::FieldMap::default();
    match candidate_verdict(rule, doc, &mut fields) {
        Verdict::No => None,
        Verdict::ByRsigma => rsigma_eval::evaluate_rule(rule, doc).and_then(rsigma_match),
        Verdict::Yes => Some(Match {
            rule_id: rule.id.clone().unwrap_or_else(|| rule.title.clone()),
            title: rule.title.clone(),
            level: level_name(rule.level).into(),
            kind: "sigma".into(),
            tags: rule.tags.clone(),
            fields,
        }),
    }
}

/// The rule id of [`evaluate_candidate`]'s match, without building the match.
fn candidate_id<'r>(rule: &'r rsigma_eval::CompiledRule, doc: &SigmaDoc<'_>) -> Option<Cow<'r, str>> {
    match candidate_verdict(rule, doc, &mut NoFields) {
        Verdict::No => None,
        Verdict::ByRsigma => rsigma_eval::evaluate_rule(rule, doc).and_then(rsigma_match).map(|m| Cow::Owned(m.rule_id)),
        Verdict::Yes => Some(Cow::Borrowed(rule.id.as_deref().unwrap_or(&rule.title))),
    }
}

/// How a candidate rule is decided for a document.
enum Verdict {
    No,
    /// Matches; its matched fields went to the caller's [`MatchedFields`].
    Yes,
    /// Beyond this evaluator (an array scope): rsigma decides.
    ByRsigma,
}

/// Whether `rule` matches `doc` (its conditions in turn, as rsigma tries them), reporting
/// the fields of the selections that matched to `fields`.
fn candidate_verdict(rule: &rsigma_eval::CompiledRule, doc: &SigmaDoc<'_>, fields: &mut impl MatchedFields) -> Verdict {
    let mut selections = Vec::new();
    let mut matched = Some(false);
    for condition in &rule.conditions {
        selections.clear();
        matched = condition_matches(condition, &rule.detections, doc, &mut selections);
        if matched != Some(false) {
            break;
        }
    }
    match matched {
        Some(true) => {}
        Some(false) => return Verdict::No,
        None => return Verdict::ByRsigma,
    }
    for name in selections {
        let Some(detection) = rule.detections.get(name) else { continue };
        if matched_fields(detection, doc, fields).is_none() {
            return Verdict::ByRsigma;
        }
    }
    Verdict::Yes
}

/// Where [`matched_fields`] reports the fields of a match: its field map, or nowhere when
/// only whether the rule matched is wanted.
trait MatchedFields {
    fn put(&mut self, field: &str, value: Cow<'_, str>);
}

impl MatchedFields for crate::event::FieldMap<String> {
    fn put(&mut self, field: &str, value: Cow<'_, str>) {
        self.insert(field.to_string(), value.into_owned());
    }
}

/// The fields of a match not wanted.
struct NoFields;

impl MatchedFields for NoFields {
    fn put(&mut self, _field: &str, _value: Cow<'_, str>) {}
}

/// Whether `expr` holds, and the selections that matched on the way, in the order and
/// with the short-circuits of rsigma's `eval_condition` (its detail pass): `and`/`or` stop
/// at the first deciding operand, a `1 of`/`all of` selector evaluates each selection it
/// names. `None` for an array scope.
fn condition_matches<'r>(
    expr: &rsigma_parser::ConditionExpr,
    detections: &'r std::collections::HashMap<String, rsigma_eval::CompiledDetection>,
    doc: &SigmaDoc<'_>,
    selections: &mut Vec<&'r str>,
) -> Option<bool> {
    use rsigma_parser::{ConditionExpr, Quantifier};
    Some(match expr {
        ConditionExpr::Identifier(name) => match detections.get_key_value(name) {
            Some((name, detection)) => {
                let matched = detection_matches(detection, doc)?;
                if matched {
                    selections.push(name);
                }
                matched
            }
            None => false,
        },
        ConditionExpr::And(operands) => {
            for operand in operands {
                if !condition_matches(operand, detections, doc, selections)? {
                    return Some(false);
                }
            }
            true
        }
        ConditionExpr::Or(operands) => {
            for operand in operands {
                if condition_matches(operand, detections, doc, selections)? {
                    return Some(true);
                }
            }
            false
        }
        ConditionExpr::Not(operand) => !condition_matches(operand, detections, doc, selections)?,
        ConditionExpr::Selector { quantifier, pattern } => {
            let (mut named, mut matched) = (0u64, 0u64);
            for (name, detection) in detections.iter().filter(|(name, _)| pattern.matches_detection_name(name)) {
                named += 1;
                if detection_matches(detection, doc)? {
                    matched += 1;
                    selections.push(name);
                }
            }
            match quantifier {
                Quantifier::Any => matched >= 1,
                Quantifier::All => matched == named,
                Quantifier::Count(n) => matched >= *n,
            }
        }
    })
}

/// The (field, value) pairs rsigma reports for `detection`, which matched the event
/// (rsigma's `collect_detection_fields` without match details: the fields present of each
/// matched mapping's items; keyword and absence matches are not reported). `None` for an
/// array scope, which this does not walk.
fn matched_fields(detection: &rsigma_eval::CompiledDetection, doc: &SigmaDoc<'_>, out: &mut impl MatchedFields) -> Option<()> {
    use rsigma_eval::CompiledDetection;
    match detection {
        CompiledDetection::AllOf(items) => {
            for item in items {
                let Some(field) = &item.field else { continue };
                let Some(value) = doc.get(field) else { continue };
                // The mapping matched, so every item did; an `exists` item matched on
                // presence, and rsigma reports it only where its matcher takes the value.
                if item.exists.is_some() && !item.matcher.matches(&EventValue::Str(Cow::Borrowed(&value)), doc) {
                    continue;
                }
                out.put(field, value);
            }
        }
        CompiledDetection::AnyOf(members) => {
            for member in members {
                if detection_matches(member, doc)? {
                    matched_fields(member, doc, out)?;
                }
            }
        }
        // Every part of a matched conjunction matched.
        CompiledDetection::And(parts) => {
            for part in parts {
                matched_fields(part, doc, out)?;
            }
        }
        CompiledDetection::Keywords(_) => {}
        CompiledDetection::ArrayMatch { .. } | CompiledDetection::Conditional { .. } => return None,
    }
    Some(())
}

/// Whether `detection` matches the event, as rsigma decides it (`eval_detection` with no
/// bloom filter); `None` for an array scope.
fn detection_matches(detection: &rsigma_eval::CompiledDetection, doc: &SigmaDoc<'_>) -> Option<bool> {
    use rsigma_eval::{CompiledDetection, CompiledMatcher};
    Some(match detection {
        CompiledDetection::AllOf(items) => items.iter().all(|item| match (&item.field, item.exists) {
            // A document value is never null.
            (Some(field), Some(exists)) => doc.get(field).is_some() == exists,
            (None, Some(exists)) => !exists,
            (Some(field), None) => match doc.get(field) {
                Some(value) => item.matcher.matches(&EventValue::Str(value), doc),
                None => matches!(item.matcher, CompiledMatcher::Null),
            },
            (None, None) => item.matcher.matches_keyword(doc),
        }),
        CompiledDetection::AnyOf(members) => {
            for member in members {
                if detection_matches(member, doc)? {
                    return Some(true);
                }
            }
            false
        }
        CompiledDetection::And(parts) => {
            for part in parts {
                if !detection_matches(part, doc)? {
                    return Some(false);
                }
            }
            true
        }
        CompiledDetection::Keywords(matcher) => matcher.matches_keyword(doc),
        CompiledDetection::ArrayMatch { .. } | CompiledDetection::Conditional { .. } => return None,
    })
}

/// Sysmon event id (and, for registry object events, EventType) → Sigma logsource
/// categories, most specific first (pySigma's Sysmon pipeline).
fn sysmon_categories(event_id: u32, event_type: Option<&str>) -> &'static [&'static str] {
    match event_id {
        1 => &["process_creation"],
        2 => &["file_change"],
        3 => &["network_connection"],
        4 | 16 => &["sysmon_status"],
        5 => &["process_termination"],
        6 => &["driver_load"],
        7 => &["image_load"],
        8 => &["create_remote_thread"],
        9 => &["raw_access_thread"],
        10 => &["process_access"],
        11 => &["file_event"],
        12 => match event_type.map(str::to_ascii_lowercase).as_deref() {
            Some(t) if t.contains("delete") => &["registry_delete", "registry_event"],
            _ => &["registry_add", "registry_event"],
        },
        13 => &["registry_set", "registry_event"],
        14 => &["registry_rename", "registry_event"],
        15 => &["create_stream_hash"],
        17 | 18 => &["pipe_created"],
        19..=21 => &["wmi_event"],
        22 => &["dns_query"],
        23 => &["file_delete"],
        24 => &["clipboard_capture"],
        25 => &["process_tampering"],
        26 => &["file_delete_detected", "file_delete"],
        27 => &["file_block_executable"],
        28 => &["file_block_shredding"],
        29 => &["file_executable_detected"],
        _ => &[],
    }
}

/// Windows event log channel → Sigma `service` (pySigma's Windows pipeline), for the
/// services whose name is not simply the channel's provider part.
fn windows_service(channel: &str) -> String {
    let lower = channel.to_ascii_lowercase();
    let known = match lower.as_str() {
        "security" => Some("security"),
        "system" => Some("system"),
        "application" => Some("application"),
        "windows powershell" => Some("powershell-classic"),
        "microsoft-windows-powershell/operational" | "powershellcore/operational" => Some("powershell"),
        "microsoft-windows-wmi-activity/operational" => Some("wmi"),
        "dns server" => Some("dns-server"),
        "microsoft-windows-dns client events/operational" | "microsoft-windows-dns-client/operational" => Some("dns-client"),
        "microsoft-windows-driverframeworks-usermode/operational" => Some("driver-framework"),
        "microsoft-windows-windows defender/operational" => Some("windefend"),
        "microsoft-windows-windows firewall with advanced security/firewall" => Some("firewall-as"),
        "microsoft-windows-codeintegrity/operational" => Some("codeintegrity-operational"),
        "microsoft-windows-appxdeploymentserver/operational" => Some("appxdeployment-server"),
        "msexchange management" => Some("msexchange-management"),
        "microsoft-iis-configuration/operational" => Some("iis-configuration"),
        "microsoft-windows-smbclient/security" => Some("smbclient-security"),
        "microsoft-windows-smbserver/connectivity" => Some("smbserver-connectivity"),
        "openssh/operational" => Some("openssh"),
        "microsoft-windows-ldap-client/debug" => Some("ldap"),
        "microsoft-windows-lsa/operational" => Some("lsa-server"),
        "microsoft-windows-appmodel-runtime/admin" => Some("appmodel-runtime"),
        "microsoft-windows-appxpackaging/operational" => Some("appxpackaging-om"),
        _ => None,
    };
    if let Some(service) = known {
        return service.to_string();
    }
    if lower.starts_with("microsoft-windows-applocker/") {
        return "applocker".into();
    }
    if lower.starts_with("microsoft-windows-security-mitigations/") {
        return "security-mitigations".into();
    }
    let provider = lower.split('/').next().unwrap_or(&lower);
    provider.strip_prefix("microsoft-windows-").unwrap_or(provider).to_string()
}

/// The host products [`host_product`] recognises.
const HOST_PRODUCTS: [&str; 3] = ["windows", "linux", "macos"];

/// The operating system a non-Windows-log event comes from, as Sigma names it, when the
/// event shows it: an explicit `os` attribute, or the shape of its process and file paths.
fn host_product(event: &Event) -> Option<&'static str> {
    for os in os_attributes(&event.attrs).into_iter().flatten() {
        for product in HOST_PRODUCTS {
            if contains_ignore_case(os, product) || (product == "macos" && (contains_ignore_case(os, "darwin") || contains_ignore_case(os, "mac"))) {
                return Some(product);
            }
        }
    }
    let process = event.process.as_ref();
    let paths = [
        process.and_then(|p| p.path.as_deref()),
        process.and_then(|p| p.name.as_deref()),
        process.and_then(|p| p.command_line.as_deref()),
        event.file.as_ref().and_then(|f| f.path.as_deref()),
    ];
    for path in paths.into_iter().flatten() {
        let first = path.split_whitespace().next().unwrap_or_default().trim_matches('"');
        if ends_with_ignore_case(first, ".exe") || first.contains('\\') || path.get(1..3) == Some(":\\") {
            return Some("windows");
        }
        if ["/applications/", "/system/", "/library/"].iter().any(|prefix| starts_with_ignore_case(first, prefix)) {
            return Some("macos");
        }
        if first.starts_with('/') {
            return Some("linux");
        }
    }
    None
}

/// The producer attributes that may name the operating system, in order of precedence.
const OS_ATTRIBUTES: [&str; 5] = ["host.os.type", "host.os.family", "os", "os.type", "platform"];

/// The values `attrs` holds for [`OS_ATTRIBUTES`], in that order. An event with no more
/// attributes than that is read in one pass over its entries (a length and a comparison
/// each); five hashed lookups were most of [`host_product`]'s ~460 instructions, which
/// quick-scan and correlate each spend on every event.
fn os_attributes(attrs: &crate::event::FieldMap<String>) -> [Option<&str>; OS_ATTRIBUTES.len()] {
    let mut found = [None; OS_ATTRIBUTES.len()];
    if attrs.len() <= OS_ATTRIBUTES.len() {
        for (key, value) in attrs {
            if let Some(at) = OS_ATTRIBUTES.iter().position(|name| name == key) {
                found[at] = Some(value.as_str());
            }
        }
    } else {
        for (slot, name) in found.iter_mut().zip(OS_ATTRIBUTES) {
            *slot = attrs.get(name).map(String::as_str);
        }
    }
    found
}

/// Whether `text` contains `lower` (lower-case ASCII) in any case.
fn contains_ignore_case(text: &str, lower: &str) -> bool {
    text.as_bytes().windows(lower.len()).any(|window| window.eq_ignore_ascii_case(lower.as_bytes()))
}

fn starts_with_ignore_case(text: &str, lower: &str) -> bool {
    text.as_bytes().get(..lower.len()).is_some_and(|head| head.eq_ignore_ascii_case(lower.as_bytes()))
}

fn ends_with_ignore_case(text: &str, lower: &str) -> bool {
    text.len() >= lower.len() && text.as_bytes()[text.len() - lower.len()..].eq_ignore_ascii_case(lower.as_bytes())
}

/// The logsource of a non-Windows event of host product `product` and class `class`.
fn plain_logsources(product: Option<&str>, class: EventClass) -> Vec<LogSource> {
    let category = match class {
        EventClass::ProcessActivity => Some("process_creation"),
        EventClass::NetworkActivity => Some("network_connection"),
        EventClass::DnsActivity => Some("dns"),
        EventClass::HttpActivity => Some("webserver"),
        EventClass::FileActivity => Some("file_event"),
        _ => None,
    };
    vec![LogSource { product: product.map(Into::into), category: category.map(Into::into), ..LogSource::default() }]
}

/// `sources` and the logsource correlate-side rules of the event's class are written
/// under: `product: threatpipe, category: <class>`.
fn normalized_logsources(event: &Event, mut sources: Vec<LogSource>) -> Vec<LogSource> {
    sources.push(LogSource { product: Some("threatpipe".into()), category: Some(event.class.as_str().into()), ..LogSource::default() });
    sources
}

/// The Sigma logsources of a normalized event: usually one; Sysmon registry and
/// file-delete events also belong to their umbrella category (`registry_event`).
pub fn logsources(event: &Event) -> Vec<LogSource> {
    let mut ls = LogSource::default();
    // Only the provider, the Channel, EventID and EventType attributes decide a Windows
    // event's logsources ([`SigmaRules::event_route`] relies on it).
    if is_windows(event) {
        ls.product = Some("windows".into());
        let provider = event.source.product.as_deref().unwrap_or_default().to_ascii_lowercase();
        let channel = event.attrs.get("Channel").map(String::as_str);
        let event_id: Option<u32> = event.attrs.get("EventID").and_then(|v| v.parse().ok());
        let service = match channel {
            Some(channel) => windows_service(channel),
            None if provider.contains("sysmon") => "sysmon".into(),
            None if provider.contains("security-auditing") => "security".into(),
            None if provider.contains("powershell") => "powershell".into(),
            None => "system".into(),
        };
        let categories: &[&str] = match (service.as_str(), event_id) {
            ("sysmon", Some(id)) => sysmon_categories(id, event.attrs.get("EventType").map(String::as_str)),
            ("security", Some(4688)) => &["process_creation"],
            ("powershell", Some(4103)) => &["ps_module"],
            ("powershell", Some(4104)) => &["ps_script"],
            ("powershell-classic", Some(400 | 403 | 600 | 800)) => &["ps_classic_start"],
            _ => &[],
        };
        ls.service = Some(service);
        if categories.is_empty() {
            return vec![ls];
        }
        return categories
            .iter()
            .map(|c| LogSource { category: Some((*c).to_string()), ..ls.clone() })
            .collect();
    }
    plain_logsources(host_product(event), event.class)
}

/// Whether `event` is a Windows event, whose logsources come from its provider and channel.
fn is_windows(event: &Event) -> bool {
    event.source.format == "evtx" || event.source.vendor.as_deref() == Some("microsoft")
}

/// How a derived field is worked out from the event.
type Derive = for<'e> fn(&'e Event) -> Option<Cow<'e, str>>;

/// The fields worked out from the canonical event, by name, and how: Sigma's names for them
/// (the first [`SIGMA_DERIVED`]), then our normalized names. No name appears twice, and a
/// producer field (`attrs`) of the same name takes precedence over any of them.
const DERIVED: [(&str, Derive); 34] = [
    ("CommandLine", |e| borrowed(e.process.as_ref()?.command_line.as_deref())),
    ("Image", |e| e.process.as_ref().and_then(|p| borrowed(p.path.as_deref().or(p.name.as_deref())))),
    ("ParentImage", |e| borrowed(e.process.as_ref()?.parent_name.as_deref())),
    ("ParentCommandLine", |e| borrowed(e.process.as_ref()?.parent_command_line.as_deref())),
    ("ProcessId", |e| e.process.as_ref()?.pid.map(|pid| Cow::Owned(pid.to_string()))),
    ("User", |e| borrowed(e.user())),
    ("Computer", |e| borrowed(e.host.as_deref())),
    ("SourceIp", |e| borrowed(e.src_ip())),
    ("SourceHostname", |e| borrowed(e.src.as_ref()?.hostname.as_deref())),
    ("SourcePort", |e| e.src.as_ref()?.port.map(|port| Cow::Owned(port.to_string()))),
    ("DestinationIp", |e| borrowed(e.dst_ip())),
    ("DestinationHostname", |e| borrowed(e.dst.as_ref()?.hostname.as_deref())),
    ("DestinationPort", dst_port),
    ("QueryName", |e| borrowed(e.dns.as_ref()?.query.as_deref())),
    ("TargetFilename", |e| borrowed(e.file.as_ref()?.path.as_deref())),
    ("cs-method", |e| borrowed(e.http.as_ref()?.method.as_deref())),
    ("cs-uri-query", url),
    ("cs-user-agent", |e| borrowed(e.http.as_ref()?.user_agent.as_deref())),
    ("tenant", |e| Some(Cow::Borrowed(e.tenant.as_str()))),
    ("class", |e| Some(Cow::Borrowed(e.class.as_str()))),
    ("action", |e| borrowed(e.action.as_deref())),
    ("outcome", |e| borrowed(e.outcome.as_deref())),
    ("user", |e| borrowed(e.user())),
    ("host", |e| borrowed(e.host.as_deref())),
    ("src_ip", |e| borrowed(e.src_ip())),
    ("dst_ip", |e| borrowed(e.dst_ip())),
    ("dst_port", dst_port),
    ("session_id", |e| borrowed(e.llm.as_ref().and_then(|l| l.session_id.as_deref()).or_else(|| e.actor.as_ref().and_then(|a| a.session_id.as_deref())))),
    ("prompt", |e| borrowed(e.llm.as_ref()?.prompt.as_deref())),
    ("model", |e| borrowed(e.llm.as_ref()?.model.as_deref())),
    ("url", url),
    ("status", |e| e.http.as_ref()?.status.map(|status| Cow::Owned(status.to_string()))),
    // The login's country, where the producer (an identity provider) gave it.
    ("src_country", |e| {
        let keys = ["src_country", "geo.country", "client.geographicalContext.country", "location.countryOrRegion", "source.geo.country_iso_code"];
        keys.iter().find_map(|k| e.attrs.get(*k)).map(|v| Cow::Borrowed(v.as_str()))
    }),
    // The ids of quick-scan's matches, space-separated.
    ("match_ids", |e| (!e.matches.is_empty()).then(|| Cow::Owned(e.matches.iter().map(|m| m.rule_id.as_str()).collect::<Vec<_>>().join(" ")))),
];

fn borrowed(value: Option<&str>) -> Option<Cow<'_, str>> {
    value.map(Cow::Borrowed)
}

fn dst_port(event: &Event) -> Option<Cow<'_, str>> {
    event.dst.as_ref()?.port.map(|port| Cow::Owned(port.to_string()))
}

fn url(event: &Event) -> Option<Cow<'_, str>> {
    borrowed(event.http.as_ref()?.url.as_deref())
}

/// How many of [`DERIVED`] are Sigma's names (what quick-scan's SigmaHQ rules see).
const SIGMA_DERIVED: usize = 18;

/// Longest name in [`DERIVED`].
const DERIVED_MAX_LEN: usize = {
    let mut longest = 0;
    let mut index = 0;
    while index < DERIVED.len() {
        if DERIVED[index].0.len() > longest {
            longest = DERIVED[index].0.len();
        }
        index += 1;
    }
    longest
};

/// Most names of one length in [`DERIVED`] (six of six letters); a seventh fails the build.
const DERIVED_PER_LEN: usize = 6;

/// [`DERIVED`]'s indices by name length, `u8::MAX` for none: a name is compared with the
/// few names of its length, not with all 34 (a lookup of a name that is not there was
/// ~200 instructions).
const DERIVED_BY_LEN: [[u8; DERIVED_PER_LEN]; DERIVED_MAX_LEN + 1] = {
    let mut table = [[u8::MAX; DERIVED_PER_LEN]; DERIVED_MAX_LEN + 1];
    let mut index = 0;
    while index < DERIVED.len() {
        let row = &mut table[DERIVED[index].0.len()];
        let mut slot = 0;
        while row[slot] != u8::MAX {
            slot += 1;
        }
        row[slot] = index as u8;
        index += 1;
    }
    table
};

/// The index of `name` in [`DERIVED`].
fn derived_index(name: &str) -> Option<usize> {
    let row = DERIVED_BY_LEN.get(name.len())?;
    row.iter().take_while(|&&index| index != u8::MAX).map(|&index| usize::from(index)).find(|&index| DERIVED[index].0 == name)
}

/// The value [`DERIVED`] works out for `name` (`user`, `SourceIp`, `dst_port` …), whatever
/// the event's producer fields say: for names that stand for a derived field under another
/// name (correlate's group-by aliases).
#[inline]
pub fn derived_field<'e>(event: &'e Event, name: &str) -> Option<Cow<'e, str>> {
    DERIVED[derived_index(name)?].1(event)
}

/// The event's fields as Sigma sees them: producer fields by their own names (Windows
/// EventData names come through `attrs` unchanged), plus the canonical fields under the
/// names SigmaHQ rules use for them, where the producer did not already use that name.
/// Built up front: quick-scan's SigmaHQ rules read many fields of every event.
pub fn sigma_fields(event: &Event) -> SigmaDoc<'_> {
    let mut fields = crate::FastMap::with_capacity_and_hasher(event.attrs.len() + 12, Default::default());
    for (k, v) in &event.attrs {
        fields.insert(Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()));
    }
    for (name, derive) in &DERIVED[..SIGMA_DERIVED] {
        if let Some(value) = derive(event) {
            fields.entry(Cow::Borrowed(*name)).or_insert(value);
        }
    }
    SigmaDoc { fields: DocFields::Built(fields) }
}

/// Sigma's view of the event ([`sigma_fields`]) plus our normalized fields under lower-case
/// names, whatever format the event came in: `tenant`, `class`, `action`, `outcome`, `user`,
/// `host`, `src_ip`, `dst_ip`, `dst_port`, `session_id`, `prompt`, `model`, `url`, `status`,
/// `src_country`, and `match_ids` (the ids of quick-scan's matches, space-separated). What the correlate
/// stage's own detection rules and group-by fields see.
///
/// Worked out field by field when asked, not up front: correlate's rules and group-by read
/// a few fields of each event, and building all ~50 into a map cost more than its rules
/// (2.4k instructions per event).
pub fn normalized_fields(event: &Event) -> SigmaDoc<'_> {
    SigmaDoc { fields: DocFields::OnRequest(event) }
}

/// The event as a flat JSON object of strings, as Sigma sees it (see [`sigma_fields`]): for
/// `rules bench --documents` and for other engines.
pub fn document(event: &Event) -> Value {
    rsigma_eval::Event::to_json(&sigma_fields(event))
}

/// A normalized event as rsigma evaluates it: flat string fields borrowed from the event.
/// Evaluates exactly as rsigma's `JsonEvent` over [`document`] (a flat object of strings,
/// where a dotted path can only be an exact key) without building that object per event:
/// no per-field string copies, no ordered-map lookups.
pub struct SigmaDoc<'e> {
    fields: DocFields<'e>,
}

enum DocFields<'e> {
    /// Every field in a hash map, for rules that read many.
    Built(crate::FastMap<Cow<'e, str>, Cow<'e, str>>),
    /// The event's `attrs`, then [`DERIVED`] fields the attrs do not name, each worked out
    /// when asked for.
    OnRequest(&'e Event),
}

impl SigmaDoc<'_> {
    /// The value of a field as Sigma names it (`User`, `SourceIp`, an EventData name …).
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match &self.fields {
            DocFields::Built(fields) => fields.get(name).map(|v| Cow::Borrowed(v.as_ref())),
            DocFields::OnRequest(event) => match event.attrs.get(name) {
                Some(value) => Some(Cow::Borrowed(value.as_str())),
                None => derived_field(event, name),
            },
        }
    }

    /// How many fields the document has, at most: whether asking for a few fields by name
    /// is cheaper than visiting all of them.
    fn len_at_most(&self) -> usize {
        match &self.fields {
            DocFields::Built(fields) => fields.len(),
            DocFields::OnRequest(event) => event.attrs.len() + DERIVED.len(),
        }
    }

    /// Every field once, in no particular order.
    fn visit<'s>(&'s self, visit: &mut dyn FnMut(&'s str, Cow<'s, str>)) {
        match &self.fields {
            DocFields::Built(fields) => {
                for (k, v) in fields {
                    visit(k, Cow::Borrowed(v.as_ref()));
                }
            }
            DocFields::OnRequest(event) => {
                for (k, v) in &event.attrs {
                    visit(k, Cow::Borrowed(v.as_str()));
                }
                for (name, derive) in &DERIVED {
                    if !event.attrs.contains_key(*name) {
                        if let Some(value) = derive(event) {
                            visit(name, value);
                        }
                    }
                }
            }
        }
    }
}

impl rsigma_eval::Event for SigmaDoc<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        self.get(path).map(EventValue::Str)
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        if let DocFields::Built(fields) = &self.fields {
            return fields.values().any(|v| pred(v));
        }
        let mut any = false;
        self.visit(&mut |_, v| any = any || pred(&v));
        any
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        let mut values = Vec::new();
        self.visit(&mut |_, v| values.push(v));
        values
    }

    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        self.visit(&mut |_, v| visit(&v));
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        self.visit(&mut |k, v| {
            map.insert(k.to_string(), Value::String(v.into_owned()));
        });
        Value::Object(map)
    }

    fn field_keys(&self) -> Vec<Cow<'_, str>> {
        let mut keys = Vec::new();
        self.visit(&mut |k, _| keys.push(Cow::Borrowed(k)));
        keys
    }

    fn top_level_keys(&self) -> Option<Vec<Cow<'_, str>>> {
        Some(self.field_keys())
    }

    fn visit_top_level_keys(&self, visit: &mut dyn FnMut(&str)) -> bool {
        self.visit(&mut |k, _| visit(k));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sysmon registry events: one EventID, two EventTypes, two logsources.
    const RULES: &str = r#"
title: key created
id: 00000000-0000-0000-0000-000000000001
logsource: {product: windows, category: registry_add}
detection:
  sel: {TargetObject|contains: '\Run\'}
  condition: sel
---
title: key deleted
id: 00000000-0000-0000-0000-000000000002
logsource: {product: windows, category: registry_delete}
detection:
  sel: {TargetObject|contains: '\Run\'}
  condition: sel
"#;

    fn sysmon(event_type: &str, provider: &str) -> Event {
        let mut event = Event::default();
        event.source.format = "evtx".into();
        event.source.product = Some(provider.into());
        for (name, value) in [("Channel", "Microsoft-Windows-Sysmon/Operational"), ("EventID", "12"), ("EventType", event_type), ("TargetObject", "HKLM\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\x")] {
            event.attrs.insert(name.into(), value.into());
        }
        event
    }

    #[test]
    fn a_non_windows_events_route_by_index_is_the_route_of_its_logsources() {
        let rules_yaml = [
            ("linux", "process_creation"),
            ("macos", "process_creation"),
            ("windows", "process_creation"),
            ("", "webserver"),
            ("", "dns"),
            ("threatpipe", "authentication"),
            ("threatpipe", "http_activity"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (product, category))| {
            let product = if product.is_empty() { String::new() } else { format!("product: {product}, ") };
            format!("title: r{i}\nid: 00000000-0000-0000-0000-0000000001{i:02}\nlogsource: {{{product}category: {category}}}\ndetection:\n  sel: {{CommandLine|contains: x}}\n  condition: sel\n")
        })
        .collect::<Vec<_>>()
        .join("---\n");
        let (rules, errors) = SigmaRules::from_yaml(&rules_yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let event = |class: EventClass, os: Option<&str>, path: Option<&str>| {
            let mut event = Event { class, ..Event::default() };
            if let Some(os) = os {
                event.attrs.insert("os".into(), os.into());
            }
            event.process = path.map(|p| crate::event::Process { path: Some(p.into()), ..Default::default() });
            event
        };
        let with_attrs = |attrs: &[(&str, &str)]| {
            let mut event = Event { class: EventClass::Authentication, ..Event::default() };
            event.attrs.extend(attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            event
        };
        let cases = [
            (event(EventClass::ProcessActivity, Some("Ubuntu Linux 22.04"), None), Some("linux")),
            (event(EventClass::ProcessActivity, Some("Darwin"), None), Some("macos")),
            (event(EventClass::ProcessActivity, None, Some("C:\\Tools\\X.EXE")), Some("windows")),
            (event(EventClass::ProcessActivity, None, Some("\"/Applications/Safari.app/x\" -a")), Some("macos")),
            (event(EventClass::ProcessActivity, None, Some("/usr/bin/curl")), Some("linux")),
            (event(EventClass::HttpActivity, None, None), None),
            (event(EventClass::DnsActivity, Some("WINDOWS"), None), Some("windows")),
            (event(EventClass::Authentication, None, None), None),
            (event(EventClass::Other, None, Some("relative")), None),
            // Precedence among the attributes, read in one pass (few attributes) and by
            // lookup (many): the first that names a product wins over a later one, and one
            // that names none gives way to the next.
            (with_attrs(&[("platform", "linux"), ("host.os.type", "windows")]), Some("windows")),
            (with_attrs(&[("os", "unknown"), ("platform", "Mac OS X"), ("user", "x")]), Some("macos")),
            (with_attrs(&[("platform", "linux"), ("host.os.type", "windows"), ("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]), Some("windows")),
            (with_attrs(&[("os", "unknown"), ("platform", "Mac OS X"), ("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]), Some("macos")),
            (with_attrs(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5"), ("OS", "linux")]), None),
        ];
        // Twice each: the second answer comes from the remembered slot.
        for _ in 0..2 {
            for (event, product) in &cases {
                assert_eq!(host_product(event), *product, "{:?}", event.attrs);
                let sources = logsources(event);
                assert_eq!(rules.event_route(event).partitions, rules.route(&sources).partitions, "{:?} {product:?}", event.class);
                let normalized = rules.plain_route(event, true);
                assert_eq!(normalized.partitions, rules.route(&normalized_logsources(event, sources)).partitions, "{:?} {product:?}", event.class);
            }
        }
        // The routes do differ, so the comparison above could fail.
        let linux = rules.event_route(&cases[0].0).partitions.clone();
        assert_ne!(linux, rules.event_route(&cases[1].0).partitions);
        assert_ne!(rules.plain_route(&cases[7].0, true).partitions, rules.plain_route(&cases[5].0, true).partitions);
    }

    /// A gate that reads a few named fields asks the event for those instead of walking all
    /// of its fields; the candidates, and so the matches, must be the same as every routed
    /// rule evaluated by rsigma. The rules here have no keyword, so the gate names its
    /// fields; the events have more fields than it names, so it asks for them.
    #[test]
    fn a_gate_asking_for_its_fields_matches_as_rsigma_does() {
        let (rules, errors) = SigmaRules::from_yaml(
            r#"
title: admin group
id: 00000000-0000-0000-0000-000000000301
logsource: {product: threatpipe}
detection:
  windows: {EventID: [4728, 4732]}
  command: {CommandLine|contains: ['localgroup administrators', 'usermod -aG sudo']}
  condition: windows or command
---
title: failed login
id: 00000000-0000-0000-0000-000000000302
logsource: {product: threatpipe, category: authentication}
detection:
  sel: {outcome: failure}
  filter: {user|startswith: 'svc-'}
  condition: sel and not filter
---
title: has a country
id: 00000000-0000-0000-0000-000000000303
logsource: {product: threatpipe, category: authentication}
detection:
  sel: {src_country|exists: true}
  condition: sel
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let event = |class: EventClass, outcome: Option<&str>, user: &str, command: Option<&str>, extra: &[(&str, &str)]| {
            let mut event = Event { class, outcome: outcome.map(str::to_string), host: Some("web-1".into()), ..Event::default() };
            event.actor = Some(crate::event::Actor { user: Some(user.into()), ..Default::default() });
            event.process = command.map(|c| crate::event::Process { command_line: Some(c.into()), ..Default::default() });
            for i in 0..20 {
                event.attrs.insert(format!("extra_{i}"), "localgroup administrators failure".into());
            }
            for (name, value) in extra {
                event.attrs.insert((*name).into(), (*value).into());
            }
            event
        };
        let cases = [
            (event(EventClass::Authentication, Some("failure"), "alice", None, &[]), vec!["00000000-0000-0000-0000-000000000302"]),
            (event(EventClass::Authentication, Some("failure"), "svc-backup", None, &[("src_country", "NL")]), vec!["00000000-0000-0000-0000-000000000303"]),
            (event(EventClass::Authentication, Some("success"), "alice", None, &[("EventID", "4732")]), vec!["00000000-0000-0000-0000-000000000301"]),
            (event(EventClass::ProcessActivity, None, "bob", Some("net LOCALGROUP Administrators eve /add"), &[]), vec!["00000000-0000-0000-0000-000000000301"]),
            (event(EventClass::ProcessActivity, None, "bob", Some("whoami"), &[]), vec![]),
        ];
        for (event, expected) in &cases {
            let doc = normalized_fields(event);
            let route = rules.plain_route(event, true);
            let gate = route.gate.as_deref().expect("a route gate");
            assert!(gate.named_fields().is_some_and(|names| names.len() < doc.len_at_most()), "the gate asks for its fields");
            let mut gated: Vec<String> = rules.matching_ids_normalized(event, &doc).into_iter().map(Cow::into_owned).collect();
            gated.sort();
            let mut reference: Vec<String> = route.partitions.iter().flat_map(|&slot| rules.partitions[slot].evaluate(&doc)).map(rule_name).collect();
            reference.sort();
            assert_eq!(gated, reference, "{:?} {:?}", event.class, event.process);
            assert_eq!(gated, *expected);
        }
    }

    #[test]
    fn a_remembered_windows_route_is_the_route_of_the_events_logsources() {
        let (rules, errors) = SigmaRules::from_yaml(RULES);
        assert!(errors.is_empty(), "{errors:?}");
        let ids = |event: &Event| rules.evaluate(event).into_iter().map(|m| m.title).collect::<Vec<_>>();
        // Each twice: the second answer comes from the remembered route.
        for _ in 0..2 {
            assert_eq!(ids(&sysmon("CreateKey", "Microsoft-Windows-Sysmon")), vec!["key created"]);
            assert_eq!(ids(&sysmon("DeleteKey", "Microsoft-Windows-Sysmon")), vec!["key deleted"]);
        }
        for event_type in ["CreateKey", "DeleteKey", "RenameKey"] {
            let event = sysmon(event_type, "Microsoft-Windows-Sysmon");
            assert_eq!(rules.event_route(&event).partitions, rules.route(&logsources(&event)).partitions, "{event_type}");
        }
        // Values that would run together without the lengths do not share a route.
        let mut a = sysmon("DeleteKey", "p");
        a.attrs.remove("Channel");
        let mut b = sysmon("DeleteKey", "p");
        b.source.product = None;
        b.attrs.insert("Channel".into(), "p".into());
        for event in [&a, &b] {
            assert_eq!(rules.event_route(event).partitions, rules.route(&logsources(event)).partitions);
        }
    }

    /// The document as correlate built it up front before it was worked out on request
    /// (the code of the time, verbatim): the reference [`normalized_fields`] is checked
    /// against.
    fn normalized_fields_built_up_front<'e>(event: &'e Event) -> crate::FastMap<Cow<'e, str>, Cow<'e, str>> {
        type Fields<'e> = crate::FastMap<Cow<'e, str>, Cow<'e, str>>;
        fn put<'e>(fields: &mut Fields<'e>, name: &'static str, value: Option<Cow<'e, str>>) {
            if let Some(v) = value {
                fields.entry(Cow::Borrowed(name)).or_insert(v);
            }
        }
        fn b(v: Option<&str>) -> Option<Cow<'_, str>> {
            v.map(Cow::Borrowed)
        }
        fn o(v: Option<String>) -> Option<Cow<'static, str>> {
            v.map(Cow::Owned)
        }
        let mut fields = Fields::default();
        for (k, v) in &event.attrs {
            fields.insert(Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()));
        }
        if let Some(p) = &event.process {
            put(&mut fields, "CommandLine", b(p.command_line.as_deref()));
            put(&mut fields, "Image", b(p.path.as_deref().or(p.name.as_deref())));
            put(&mut fields, "ParentImage", b(p.parent_name.as_deref()));
            put(&mut fields, "ParentCommandLine", b(p.parent_command_line.as_deref()));
            put(&mut fields, "ProcessId", o(p.pid.map(|pid| pid.to_string())));
        }
        put(&mut fields, "User", b(event.user()));
        put(&mut fields, "Computer", b(event.host.as_deref()));
        if let Some(src) = &event.src {
            put(&mut fields, "SourceIp", b(src.ip.as_deref()));
            put(&mut fields, "SourceHostname", b(src.hostname.as_deref()));
            put(&mut fields, "SourcePort", o(src.port.map(|port| port.to_string())));
        }
        if let Some(dst) = &event.dst {
            put(&mut fields, "DestinationIp", b(dst.ip.as_deref()));
            put(&mut fields, "DestinationHostname", b(dst.hostname.as_deref()));
            put(&mut fields, "DestinationPort", o(dst.port.map(|port| port.to_string())));
        }
        if let Some(dns) = &event.dns {
            put(&mut fields, "QueryName", b(dns.query.as_deref()));
        }
        if let Some(file) = &event.file {
            put(&mut fields, "TargetFilename", b(file.path.as_deref()));
        }
        if let Some(http) = &event.http {
            put(&mut fields, "cs-method", b(http.method.as_deref()));
            put(&mut fields, "cs-uri-query", b(http.url.as_deref()));
            put(&mut fields, "cs-user-agent", b(http.user_agent.as_deref()));
        }
        put(&mut fields, "tenant", b(Some(event.tenant.as_str())));
        put(&mut fields, "class", b(Some(event.class.as_str())));
        put(&mut fields, "action", b(event.action.as_deref()));
        put(&mut fields, "outcome", b(event.outcome.as_deref()));
        put(&mut fields, "user", b(event.user()));
        put(&mut fields, "host", b(event.host.as_deref()));
        put(&mut fields, "src_ip", b(event.src_ip()));
        put(&mut fields, "dst_ip", b(event.dst_ip()));
        put(&mut fields, "dst_port", o(event.dst.as_ref().and_then(|d| d.port).map(|p| p.to_string())));
        let session = event.llm.as_ref().and_then(|l| l.session_id.as_deref()).or_else(|| event.actor.as_ref().and_then(|a| a.session_id.as_deref()));
        put(&mut fields, "session_id", b(session));
        if let Some(llm) = &event.llm {
            put(&mut fields, "prompt", b(llm.prompt.as_deref()));
            put(&mut fields, "model", b(llm.model.as_deref()));
        }
        if let Some(http) = &event.http {
            put(&mut fields, "url", b(http.url.as_deref()));
            put(&mut fields, "status", o(http.status.map(|s| s.to_string())));
        }
        let country = ["src_country", "geo.country", "client.geographicalContext.country", "location.countryOrRegion", "source.geo.country_iso_code"]
            .iter()
            .find_map(|k| event.attrs.get(*k));
        put(&mut fields, "src_country", b(country.map(String::as_str)));
        if !event.matches.is_empty() {
            let ids: Vec<&str> = event.matches.iter().map(|m| m.rule_id.as_str()).collect();
            put(&mut fields, "match_ids", o(Some(ids.join(" "))));
        }
        fields
    }

    /// Generator traffic as correlate reads it (quick-scan's matches on some events), and
    /// events whose producer fields use names the document also works out.
    fn correlate_inputs() -> Vec<Event> {
        use crate::event::{Actor, Dns, Endpoint, File, Http, Llm, Process};
        let mut events = Vec::new();
        let mut generator = crate::generator::EventGenerator::new(crate::generator::GeneratorConfig::default());
        let normalizer = crate::normalize::Normalizer::new(crate::normalize::NormalizeConfig::default(), "default");
        for n in 0..600 {
            let record = generator.next_record(1_700_000_000_000_000 + n);
            let record = crate::bus::Record { topic: "events.raw".into(), partition: 0, offset: n, key: None, payload: record.payload, timestamp_ms: None };
            if let Ok(mut event) = normalizer.normalize(&record, 1_700_000_000_000_000 + n) {
                for id in 0..n % 3 {
                    event.matches.push(Match { rule_id: format!("rule-{id}"), ..Match::default() });
                }
                events.push(event);
            }
        }
        let full = Event {
            tenant: "acme".into(),
            class: EventClass::HttpActivity,
            action: Some("get".into()),
            outcome: Some("success".into()),
            host: Some("web-1".into()),
            actor: Some(Actor { user: Some("alice".into()), domain: None, session_id: Some("s-1".into()) }),
            src: Some(Endpoint { ip: Some("10.0.0.5".into()), port: Some(51234), hostname: Some("laptop".into()) }),
            dst: Some(Endpoint { ip: Some("10.0.0.1".into()), port: Some(443), hostname: Some("web".into()) }),
            process: Some(Process { pid: Some(4242), name: Some("nginx".into()), command_line: Some("nginx -g".into()), parent_name: Some("init".into()), parent_command_line: Some("/sbin/init".into()), ..Default::default() }),
            http: Some(Http { method: Some("GET".into()), url: Some("/index.html?q=1".into()), status: Some(200), user_agent: Some("curl".into()), ..Default::default() }),
            dns: Some(Dns { query: Some("example.com".into()), ..Default::default() }),
            file: Some(File { path: Some("/tmp/x".into()), ..Default::default() }),
            llm: Some(Llm { prompt: Some("hello".into()), model: Some("m".into()), session_id: Some("llm-1".into()), ..Default::default() }),
            matches: vec![Match { rule_id: "r1".into(), ..Match::default() }, Match { rule_id: "r2".into(), ..Match::default() }],
            ..Event::default()
        };
        events.push(full.clone());
        // Producer fields named as derived ones take precedence; the country comes from the
        // first attribute that has one.
        let mut shadowed = full;
        for (k, v) in [("User", "EVE"), ("user", "eve"), ("tenant", "other"), ("ProcessId", "1"), ("match_ids", "none"), ("geo.country", "NL"), ("k", "v")] {
            shadowed.attrs.insert(k.into(), v.into());
        }
        events.push(shadowed.clone());
        shadowed.attrs.insert("src_country".into(), "DE".into());
        events.push(shadowed);
        events.push(Event::default());
        events
    }

    #[test]
    fn the_document_worked_out_on_request_is_the_document_built_up_front() {
        use rsigma_eval::Event as _;
        let sorted = |mut pairs: Vec<(String, String)>| {
            pairs.sort();
            pairs
        };
        let absent = ["", "nope", "Image2", "users", "process.name", "cs-uri-stem", "DestinationHostnameX"];
        let events = correlate_inputs();
        assert!(events.len() > 500);
        for event in &events {
            let reference = normalized_fields_built_up_front(event);
            let doc = normalized_fields(event);
            for name in reference.keys().map(|k| k.as_ref()).chain(DERIVED.map(|(name, _)| name)).chain(absent) {
                assert_eq!(doc.get(name).as_deref(), reference.get(name).map(|v| v.as_ref()), "field {name} of {event:?}");
                let field = doc.get_field(name).map(|v| v.as_str().map(Cow::into_owned));
                assert_eq!(field, reference.get(name).map(|v| Some(v.to_string())), "get_field {name}");
            }
            let expected = sorted(reference.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            let mut visited = Vec::new();
            doc.visit(&mut |k, v| visited.push((k.to_string(), v.into_owned())));
            assert_eq!(sorted(visited), expected, "every field once: {event:?}");
            let mut keys: Vec<String> = doc.field_keys().iter().map(|k| k.to_string()).collect();
            keys.sort();
            assert_eq!(keys, expected.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
            let mut values: Vec<String> = doc.all_string_values().iter().map(|v| v.to_string()).collect();
            values.sort();
            let mut expected_values: Vec<String> = expected.iter().map(|(_, v)| v.clone()).collect();
            expected_values.sort();
            assert_eq!(values, expected_values);
            assert!(doc.len_at_most() >= expected.len());
            assert_eq!(doc.to_json(), Value::Object(expected.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()));
            for value in expected.iter().map(|(_, v)| v.as_str()).chain(["no such value"]) {
                assert_eq!(doc.any_string_value(&|v| v == value), expected.iter().any(|(_, v)| v == value));
            }
        }
    }

    #[test]
    fn every_derived_name_is_found_by_its_length() {
        for (index, (name, _)) in DERIVED.iter().enumerate() {
            assert_eq!(derived_index(name), Some(index), "{name}");
            assert_eq!(DERIVED.iter().filter(|(other, _)| other == name).count(), 1, "{name} twice");
        }
        for name in ["", "x", "Users", "CommandLinE", "a-name-longer-than-any-derived-one"] {
            assert_eq!(derived_index(name), None, "{name}");
        }
    }
}
