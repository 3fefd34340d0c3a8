//! Literal gate: which Sigma rules can possibly match an event, decided by one pass over
//! the event's values before any rule runs.
//!
//! An evtx process-creation event is routed to ~800 SigmaHQ rules; rsigma's engine picks
//! its candidates with an Aho-Corasick automaton per field and evaluates the rest. This
//! gate derives, from each compiled rule, literals that *must* occur in some value of the
//! event for the rule to match, in conjunctive normal form: every clause is a set of
//! literals of which at least one must be present (see [`Cnf`]). Contains, prefix, suffix
//! and equality matchers give their value; regexes (including wildcard values, which rsigma
//! compiles to regexes) give a literal every match contains ([`required`], from the
//! regex-syntax HIR).
//! One scan of the event's values finds which literals occur (each literal is anchored at
//! its rarest 4-byte window: a one-bit pre-screen, then a compact hash table, then a byte
//! comparison), and a rule is evaluated by rsigma, unchanged, only when all its clauses
//! are satisfied. Rules with no clause (negations, presence tests, numbers, CIDR) are
//! evaluated on every event of their logsource, as before. On SigmaHQ's evtx samples that
//! leaves ~20 of ~800 rules to evaluate per event.
//!
//! The derivation is conservative by construction: a rule that matches an event always
//! passes the gate, so the gate changes cost, never results (tests/sigma_regression.rs
//! compares both on every sample). Matching is ASCII-case-insensitive on the value and,
//! for values with non-ASCII characters, also on [`fold`] of it, which is what rsigma
//! compares case-insensitive matchers against.

use rsigma_eval::{CompiledDetection, CompiledMatcher, CompiledRule};
use rsigma_parser::{ConditionExpr, Quantifier};

/// A necessary condition for a matcher, detection or rule to be true of an event: every
/// clause (a set of literal ids) must have at least one literal present in some value of
/// the event. No clauses: no constraint (always a candidate). A clause with no literal:
/// can never be satisfied (the rule cannot match at all).
#[derive(Debug, Clone, Default, PartialEq)]
struct Cnf(Vec<Vec<u32>>);

/// Largest number of clauses kept for the OR of two necessary conditions (their
/// pairwise unions); beyond it only the pair of most selective clauses is kept.
const MAX_OR_CLAUSES: usize = 4;

impl Cnf {
    fn always() -> Self {
        Cnf(Vec::new())
    }

    fn never() -> Self {
        Cnf(vec![Vec::new()])
    }

    fn literal(id: u32) -> Self {
        Cnf(vec![vec![id]])
    }

    /// Both hold: every clause of each.
    fn and(mut self, other: Cnf) -> Self {
        for clause in other.0 {
            if !self.0.contains(&clause) {
                self.0.push(clause);
            }
        }
        self
    }

    /// At least one holds. (a1 ∧ a2) ∨ (b1 ∧ b2) implies every (ai ∨ bj); the pairwise
    /// unions are kept while few, else the union of each side's most selective clause.
    fn or(self, other: Cnf, weight: &dyn Fn(&[u32]) -> f64) -> Self {
        if self.0.is_empty() || other.0.is_empty() {
            return Cnf::always();
        }
        let union = |a: &[u32], b: &[u32]| {
            let mut clause = a.to_vec();
            for id in b {
                if !clause.contains(id) {
                    clause.push(*id);
                }
            }
            clause.sort_unstable();
            clause
        };
        if self.0.len() * other.0.len() <= MAX_OR_CLAUSES {
            let mut out = Cnf::always();
            for a in &self.0 {
                for b in &other.0 {
                    out = out.and(Cnf(vec![union(a, b)]));
                }
            }
            return out;
        }
        let best = |cnf: &Cnf| cnf.0.iter().min_by(|x, y| weight(x).total_cmp(&weight(y))).cloned().unwrap_or_default();
        Cnf(vec![union(&best(&self), &best(&other))])
    }
}

/// Text as the gate compares it when it has non-ASCII characters: Unicode lowercase (what
/// rsigma compares case-insensitive matchers against) with `ſ` as `s` (the one non-ASCII
/// character, besides the Kelvin sign that lowercase already maps to `k`, that a
/// case-insensitive regex treats as an ASCII letter). ASCII text is compared
/// ASCII-case-insensitively as it is.
fn fold(text: &str) -> String {
    text.to_lowercase().replace('\u{17F}', "s")
}

/// Shortest literal the gate looks for: one 4-byte window. Shorter ones (`cmd`, ` /c`)
/// occur in nearly every Windows event, so they cost a lookup per byte and gate nothing;
/// measured on SigmaHQ's evtx samples, dropping 3-byte literals was faster overall
/// although 45 more rules become ungated.
const MIN_LITERAL: usize = 4;

/// The pseudo-literal present when some value has a non-ASCII character: the gate of
/// matchers whose text has no ASCII run long enough to look for.
const NON_ASCII: &str = "\u{0}non-ascii";

/// The text a regex node always matches, folded (see [`fold`]), if it is fixed: a literal,
/// a class of case variants of one character (what `(?i)` makes of a letter), or a
/// sequence of those.
fn fixed(hir: &regex_syntax::hir::Hir) -> Option<String> {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Literal(literal) => std::str::from_utf8(&literal.0).ok().map(fold),
        HirKind::Class(Class::Unicode(class)) => {
            let mut folded: Option<String> = None;
            let mut count = 0u32;
            for range in class.ranges() {
                count += u32::from(range.end()) - u32::from(range.start()) + 1;
                if count > 4 {
                    return None;
                }
                for c in range.start()..=range.end() {
                    let f = fold(c.encode_utf8(&mut [0; 4]));
                    match &folded {
                        Some(seen) if *seen != f => return None,
                        Some(_) => {}
                        None => folded = Some(f),
                    }
                }
            }
            folded
        }
        HirKind::Class(Class::Bytes(class)) => {
            let mut folded: Option<u8> = None;
            for range in class.ranges() {
                for b in range.start()..=range.end() {
                    let f = b.to_ascii_lowercase();
                    if !f.is_ascii() || folded.is_some_and(|seen| seen != f) {
                        return None;
                    }
                    folded = Some(f);
                }
            }
            folded.map(|b| char::from(b).to_string())
        }
        HirKind::Capture(capture) => fixed(&capture.sub),
        HirKind::Concat(children) => children.iter().map(fixed).collect(),
        _ => None,
    }
}

/// How well a clause of folded literals gates: the shortest ASCII run among them.
fn clause_strength(clause: &[String]) -> usize {
    clause
        .iter()
        .map(|l| l.split(|c: char| !c.is_ascii()).map(str::len).max().unwrap_or(0))
        .min()
        .unwrap_or(0)
}

/// Folded literals one of which every match of a regex node contains, when there are such:
/// the longest fixed run of a sequence, a literal of each alternative, or what a repeated
/// (at least once) or captured node requires.
fn required(hir: &regex_syntax::hir::Hir) -> Option<Vec<String>> {
    use regex_syntax::hir::HirKind;
    if let Some(text) = fixed(hir) {
        return (!text.is_empty()).then(|| vec![text]);
    }
    match hir.kind() {
        HirKind::Capture(capture) => required(&capture.sub),
        HirKind::Repetition(repetition) if repetition.min >= 1 => required(&repetition.sub),
        HirKind::Alternation(branches) => {
            let mut clause = Vec::new();
            for branch in branches {
                clause.extend(required(branch)?);
            }
            Some(clause)
        }
        HirKind::Concat(children) => {
            let mut options: Vec<Vec<String>> = Vec::new();
            let mut run = String::new();
            for child in children {
                match fixed(child) {
                    Some(text) => run.push_str(&text),
                    None => {
                        if !run.is_empty() {
                            options.push(vec![std::mem::take(&mut run)]);
                        }
                        options.extend(required(child));
                    }
                }
            }
            if !run.is_empty() {
                options.push(vec![run]);
            }
            options.into_iter().max_by_key(|clause| clause_strength(clause))
        }
        _ => None,
    }
}

/// A literal's scope: the field whose value must contain it, or [`ANY_FIELD`] (keyword
/// detections, which rsigma matches against every value).
const ANY_FIELD: u32 = u32::MAX;

/// Builds the literal table while rules are analysed. Clauses name *scoped* literals: a
/// text (lowercased, interned once) in a scope. A detection item reads one field of the
/// event (`get_field` of its name), so its literals must occur in that field's value, not
/// just somewhere in the event: `\cmd.exe` required of `Image` is not satisfied by a
/// `ParentImage` that ends with it.
#[derive(Default)]
struct Literals {
    texts: Vec<String>,
    ids: ahash::AHashMap<String, u32>,
    fields: Vec<String>,
    field_ids: ahash::AHashMap<String, u32>,
    /// Scoped literal id → (text id, field id or [`ANY_FIELD`]).
    scoped: Vec<(u32, u32)>,
    scoped_ids: ahash::AHashMap<(u32, u32), u32>,
    /// The scope of the matcher being analysed.
    scope: u32,
}

impl Literals {
    /// The literal a value must contain, or `None` when it cannot gate. Values are folded
    /// as the scanned text is ([`fold`]); a value with non-ASCII characters gates by its
    /// longest ASCII run, which any text containing the value also contains. Runs shorter
    /// than [`MIN_LITERAL`] bytes occur almost anywhere and do not gate.
    fn intern(&mut self, value: &str, case_insensitive: bool) -> Option<u32> {
        let folded;
        let text = if value.is_ascii() {
            value
        } else {
            folded = if case_insensitive { fold(value) } else { value.to_string() };
            let run = folded.split(|c: char| !c.is_ascii()).max_by_key(|run| run.len()).unwrap_or_default();
            // Only non-ASCII text (emoji, homoglyphs, bidi controls) can contain it.
            if run.len() < MIN_LITERAL && !folded.is_ascii() {
                return Some(self.literal(NON_ASCII));
            }
            run
        };
        if text.len() < MIN_LITERAL {
            return None;
        }
        Some(self.literal(&text.to_ascii_lowercase()))
    }

    /// The scoped literal for `lower` in the current scope.
    fn literal(&mut self, lower: &str) -> u32 {
        let text = match self.ids.get(lower) {
            Some(&id) => id,
            None => {
                let id = self.texts.len() as u32;
                self.texts.push(lower.to_string());
                self.ids.insert(lower.to_string(), id);
                id
            }
        };
        let key = (text, self.scope);
        if let Some(&id) = self.scoped_ids.get(&key) {
            return id;
        }
        let id = self.scoped.len() as u32;
        self.scoped.push(key);
        self.scoped_ids.insert(key, id);
        id
    }

    /// Analyses `f` with its literals scoped to `field` (`None`: any value).
    fn scoped<T>(&mut self, field: Option<&str>, f: impl FnOnce(&mut Self) -> T) -> T {
        let scope = match field {
            None => ANY_FIELD,
            Some(name) => match self.field_ids.get(name) {
                Some(&id) => id,
                None => {
                    let id = self.fields.len() as u32;
                    self.fields.push(name.to_string());
                    self.field_ids.insert(name.to_string(), id);
                    id
                }
            },
        };
        let outer = std::mem::replace(&mut self.scope, scope);
        let out = f(self);
        self.scope = outer;
        out
    }

    /// A clause for a regex: literals one of which every match contains ([`required`]).
    fn regex(&mut self, pattern: &str) -> Cnf {
        let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
            return Cnf::always();
        };
        match required(&hir) {
            // Case-insensitive regexes match Unicode case variants; the literals are folded.
            Some(literals) => self.clause(&literals, true),
            None => Cnf::always(),
        }
    }

    /// One of `values` must occur: a clause, or no constraint when any of them cannot gate.
    fn clause(&mut self, values: &[impl AsRef<str>], case_insensitive: bool) -> Cnf {
        let mut clause = Vec::with_capacity(values.len());
        for value in values {
            match self.intern(value.as_ref(), case_insensitive) {
                Some(id) => clause.push(id),
                None => return Cnf::always(),
            }
        }
        clause.sort_unstable();
        clause.dedup();
        Cnf(vec![clause])
    }

    /// Estimated chance that a clause is satisfied by chance: short literals occur in
    /// almost any value, long ones rarely. Lower is more selective.
    fn clause_weight(&self, clause: &[u32]) -> f64 {
        clause
            .iter()
            .map(|&id| {
                let text = &self.texts[self.scoped[id as usize].0 as usize];
                if text == NON_ASCII {
                    return 0.25;
                }
                let len = text.len() as f64;
                1.0 / (len * len)
            })
            .sum()
    }

    fn or(&self, a: Cnf, b: Cnf) -> Cnf {
        a.or(b, &|clause| self.clause_weight(clause))
    }

    /// At least one of `parts` holds (none: never).
    fn any(&self, parts: impl IntoIterator<Item = Cnf>) -> Cnf {
        parts.into_iter().reduce(|acc, cnf| self.or(acc, cnf)).unwrap_or_else(Cnf::never)
    }

    fn matcher(&mut self, matcher: &CompiledMatcher) -> Cnf {
        use CompiledMatcher as M;
        match matcher {
            M::Exact { value, case_insensitive }
            | M::Contains { value, case_insensitive }
            | M::StartsWith { value, case_insensitive }
            | M::EndsWith { value, case_insensitive } => self.intern(value, *case_insensitive).map_or_else(Cnf::always, Cnf::literal),
            M::Regex(regex) => self.regex(regex.as_str()),
            M::RegexSetMatch { set, mode } => {
                let parts: Vec<Cnf> = set.patterns().iter().map(|p| self.regex(p)).collect();
                match mode {
                    rsigma_eval::matcher::GroupMode::Any => self.any(parts),
                    rsigma_eval::matcher::GroupMode::All => parts.into_iter().fold(Cnf::always(), Cnf::and),
                }
            }
            M::AhoCorasickSet { needles, case_insensitive, .. } => self.clause(needles, *case_insensitive),
            M::AnyOf(children) => self.any_of(children),
            M::AllOf(children) => self.all_of(children),
            M::CaseInsensitiveGroup { children, mode } => match mode {
                rsigma_eval::matcher::GroupMode::Any => self.any_of(children),
                rsigma_eval::matcher::GroupMode::All => self.all_of(children),
            },
            // Negations, CIDR, numbers, presence, field references, templates,
            // timestamps: no literal is necessary.
            _ => Cnf::always(),
        }
    }

    fn any_of(&mut self, children: &[CompiledMatcher]) -> Cnf {
        let parts: Vec<Cnf> = children.iter().map(|child| self.matcher(child)).collect();
        self.any(parts)
    }

    fn all_of(&mut self, children: &[CompiledMatcher]) -> Cnf {
        children.iter().fold(Cnf::always(), |acc, child| {
            let cnf = self.matcher(child);
            acc.and(cnf)
        })
    }

    fn detection(&mut self, detection: &CompiledDetection) -> Cnf {
        match detection {
            CompiledDetection::AllOf(items) => items.iter().fold(Cnf::always(), |acc, item| {
                // An item with a presence test matches without any literal; any other reads
                // the value of its field (a keyword item: every value).
                let cnf = if item.exists.is_some() { Cnf::always() } else { self.scoped(item.field.as_deref(), |l| l.matcher(&item.matcher)) };
                acc.and(cnf)
            }),
            CompiledDetection::AnyOf(children) => {
                let parts: Vec<Cnf> = children.iter().map(|child| self.detection(child)).collect();
                self.any(parts)
            }
            CompiledDetection::Keywords(matcher) => self.scoped(None, |l| l.matcher(matcher)),
            CompiledDetection::And(children) => children.iter().fold(Cnf::always(), |acc, child| {
                let cnf = self.detection(child);
                acc.and(cnf)
            }),
            // Array members and element-scoped conditions: not analysed.
            CompiledDetection::ArrayMatch { .. } | CompiledDetection::Conditional { .. } => Cnf::always(),
        }
    }

    fn condition(&mut self, expr: &ConditionExpr, rule: &CompiledRule) -> Cnf {
        match expr {
            ConditionExpr::Identifier(name) => match rule.detections.get(name) {
                Some(detection) => self.detection(detection),
                None => Cnf::never(),
            },
            ConditionExpr::And(children) => children.iter().fold(Cnf::always(), |acc, child| {
                let cnf = self.condition(child, rule);
                acc.and(cnf)
            }),
            ConditionExpr::Or(children) => {
                let parts: Vec<Cnf> = children.iter().map(|child| self.condition(child, rule)).collect();
                self.any(parts)
            }
            ConditionExpr::Not(_) => Cnf::always(),
            ConditionExpr::Selector { quantifier, pattern } => {
                let mut names: Vec<&String> = rule.detections.keys().filter(|name| pattern.matches_detection_name(name)).collect();
                names.sort();
                let parts: Vec<Cnf> = names.iter().map(|name| self.detection(&rule.detections[*name])).collect();
                match quantifier {
                    // All of none is vacuously true.
                    Quantifier::All => parts.into_iter().fold(Cnf::always(), Cnf::and),
                    Quantifier::Count(0) => Cnf::always(),
                    // At least one of them.
                    Quantifier::Any | Quantifier::Count(_) => self.any(parts),
                }
            }
        }
    }

    /// The rule's necessary condition: it matches when any of its conditions does.
    fn rule(&mut self, rule: &CompiledRule) -> Cnf {
        let parts: Vec<Cnf> = rule.conditions.iter().map(|condition| self.condition(condition, rule)).collect();
        self.any(parts)
    }
}

/// A gated rule: where it lives and the clauses checked after its primary clause fired.
struct GatedRule {
    /// The caller's id of its partition.
    partition: u32,
    local: u32,
    other_clauses: Vec<Vec<u32>>,
}

/// Bits in the gram pre-screen: 2^18 bits (32 KiB) stay in L1 while a value is scanned.
const SCREEN_BITS: u32 = 18;

/// The key of a 4-byte window, already ASCII-lowercased (never 0: literals are text).
fn gram4(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

fn table_slot(key: u32, capacity: usize) -> usize {
    (key.wrapping_mul(0x85EB_CA6B).rotate_right(13).wrapping_mul(0xC2B2_AE35) as usize) & (capacity - 1)
}

fn screen_slot(key: u32) -> (usize, u64) {
    let hash = key.wrapping_mul(0x9E37_79B1) >> (32 - SCREEN_BITS);
    ((hash / 64) as usize, 1u64 << (hash % 64))
}

/// Where a literal is looked for: its rarest 4-byte window (fewest literals share it;
/// `.exe` and `\\win` are in thousands), as (gram key, offset in the literal).
fn anchor(text: &[u8], counts: &ahash::AHashMap<u32, u32>) -> (u32, usize) {
    text.windows(4)
        .enumerate()
        .map(|(offset, w)| (gram4([w[0], w[1], w[2], w[3]]), offset))
        .min_by_key(|(key, _)| counts.get(key).copied().unwrap_or(0))
        .unwrap_or((0, 0))
}

/// The gate over every rule of a set of logsource partitions (see the module docs).
pub struct LiteralGate {
    /// Every literal's text (ASCII-lowercased), back to back; `spans[id]` is (start, len).
    text: Vec<u8>,
    spans: Vec<(u32, u32)>,
    /// The anchors as a compact open-addressing table (cache misses, not hashing, are the
    /// cost of a lookup): slot → gram key (0 = empty) and its run in `anchored`.
    slot_keys: Vec<u32>,
    slot_runs: Vec<(u32, u32)>,
    /// (text id, offset of the anchor in the text), grouped by anchor.
    anchored: Vec<(u32, u32)>,
    /// Pre-screen of the gram keys: a clear bit means no anchor hashes there.
    screen: Vec<u64>,
    /// The text id of the [`NON_ASCII`] pseudo-literal, when some rule needs it.
    non_ascii: Option<u32>,
    /// Text id → its scoped literals, as (field id or [`ANY_FIELD`], scoped id): a run of
    /// `scopes` from `scope_starts[id]` to `scope_starts[id + 1]`.
    scope_starts: Vec<u32>,
    scopes: Vec<(u32, u32)>,
    /// Field name → field id, for the fields scoped literals name.
    field_ids: ahash::AHashMap<Box<str>, u32>,
    /// Whether some literal is scoped to any value (a keyword detection): without one, a
    /// value of a field no literal names is not scanned at all.
    any_scoped: bool,
    /// Scoped literal id → gated rules whose primary (most selective) clause contains it.
    by_literal: Vec<Vec<u32>>,
    gated: Vec<GatedRule>,
    /// Per partition (the caller's id): local indexes of the rules with no gate.
    ungated: Vec<(usize, Vec<u32>)>,
}

/// A set of small ids (literals, rules) as bits, for one event.
struct IdSet(Vec<u64>);

impl IdSet {
    fn with_capacity(ids: usize) -> Self {
        IdSet(vec![0; ids.div_ceil(64)])
    }

    /// Adds `id`; false if it was already there.
    fn insert(&mut self, id: u32) -> bool {
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }

    fn contains(&self, id: u32) -> bool {
        self.0[(id / 64) as usize] & (1u64 << (id % 64)) != 0
    }

    fn remove(&mut self, id: u32) {
        self.0[(id / 64) as usize] &= !(1u64 << (id % 64));
    }
}

/// Per-partition candidates of one event: local rule indexes, ascending.
pub type Candidates = Vec<(usize, Vec<u32>)>;

/// What one event's scan has found so far.
struct Found {
    /// Texts found in the value being scanned (cleared after each value).
    texts: IdSet,
    value_texts: Vec<u32>,
    /// Scoped literals found in the event, as a set and in order found.
    scoped: IdSet,
    scoped_order: Vec<u32>,
}

impl LiteralGate {
    /// Analyses every rule of every partition, given as (the caller's id for the
    /// partition, its rules); [`LiteralGate::candidates`] answers in those ids.
    pub fn build(partitions: &[(usize, &[CompiledRule])]) -> Self {
        let mut literals = Literals { scope: ANY_FIELD, ..Literals::default() };
        let mut cnfs = Vec::new();
        for (_, rules) in partitions {
            cnfs.push(rules.iter().map(|rule| literals.rule(rule)).collect::<Vec<_>>());
        }
        // How many literals share each 4-byte window: common windows make poor anchors.
        let mut counts: ahash::AHashMap<u32, u32> = Default::default();
        for text in &literals.texts {
            let mut windows: Vec<u32> = text.as_bytes().windows(4).map(|w| gram4([w[0], w[1], w[2], w[3]])).collect();
            windows.sort_unstable();
            windows.dedup();
            for key in windows {
                *counts.entry(key).or_default() += 1;
            }
        }
        let mut anchors: std::collections::BTreeMap<u32, Vec<(u32, u32)>> = Default::default();
        let non_ascii = literals.ids.get(NON_ASCII).copied();
        // Scoped literals no clause kept (a sibling made their clause void) are not looked
        // for, nor are texts none of whose scoped literals is kept.
        let mut used = vec![false; literals.scoped.len()];
        for cnf in cnfs.iter().flatten() {
            for &id in cnf.0.iter().flatten() {
                used[id as usize] = true;
            }
        }
        let mut text_scopes: Vec<Vec<(u32, u32)>> = vec![Vec::new(); literals.texts.len()];
        for (id, &(text, field)) in literals.scoped.iter().enumerate() {
            if used[id] {
                text_scopes[text as usize].push((field, id as u32));
            }
        }
        for (id, text) in literals.texts.iter().enumerate() {
            if !text_scopes[id].is_empty() && Some(id as u32) != non_ascii {
                let (key, offset) = anchor(text.as_bytes(), &counts);
                anchors.entry(key).or_default().push((id as u32, offset as u32));
            }
        }
        let mut scope_starts = Vec::with_capacity(text_scopes.len() + 1);
        let mut scopes = Vec::new();
        for run in &text_scopes {
            scope_starts.push(scopes.len() as u32);
            scopes.extend_from_slice(run);
        }
        scope_starts.push(scopes.len() as u32);
        let any_scoped = scopes.iter().any(|&(field, _)| field == ANY_FIELD);
        let field_ids = literals.field_ids.iter().map(|(name, &id)| (Box::from(name.as_str()), id)).collect();

        let mut gated = Vec::new();
        let mut by_literal = vec![Vec::new(); literals.scoped.len()];
        let mut ungated: Vec<(usize, Vec<u32>)> = partitions.iter().map(|&(id, _)| (id, Vec::new())).collect();
        for ((partition, _), rules) in partitions.iter().zip(cnfs) {
            for (local, mut cnf) in rules.into_iter().enumerate() {
                if cnf.0.is_empty() {
                    if let Some((_, locals)) = ungated.iter_mut().find(|(id, _)| id == partition) {
                        locals.push(local as u32);
                    }
                    continue;
                }
                let primary = (0..cnf.0.len())
                    .min_by(|&a, &b| literals.clause_weight(&cnf.0[a]).total_cmp(&literals.clause_weight(&cnf.0[b])))
                    .unwrap_or(0);
                let primary = cnf.0.swap_remove(primary);
                let rule = gated.len() as u32;
                for &literal in &primary {
                    by_literal[literal as usize].push(rule);
                }
                gated.push(GatedRule { partition: *partition as u32, local: local as u32, other_clauses: cnf.0 });
            }
        }
        let mut screen = vec![0u64; 1 << (SCREEN_BITS - 6)];
        let capacity = (anchors.len() * 2).next_power_of_two().max(16);
        let (mut slot_keys, mut slot_runs, mut anchored) = (vec![0u32; capacity], vec![(0u32, 0u32); capacity], Vec::new());
        for (key, entries) in anchors {
            let (word, bit) = screen_slot(key);
            screen[word] |= bit;
            let mut slot = table_slot(key, capacity);
            while slot_keys[slot] != 0 {
                slot = (slot + 1) & (capacity - 1);
            }
            slot_keys[slot] = key;
            slot_runs[slot] = (anchored.len() as u32, entries.len() as u32);
            anchored.extend(entries);
        }
        let mut text = Vec::new();
        let spans = literals
            .texts
            .iter()
            .map(|t| {
                text.extend_from_slice(t.as_bytes());
                ((text.len() - t.len()) as u32, t.len() as u32)
            })
            .collect();
        Self { text, spans, slot_keys, slot_runs, anchored, screen, non_ascii, scope_starts, scopes, field_ids, any_scoped, by_literal, gated, ungated }
    }

    /// Distinct literal texts the gate looks for.
    pub fn literal_count(&self) -> usize {
        self.anchored.len() + usize::from(self.non_ascii.is_some())
    }

    /// The literals anchored at gram `key`.
    fn anchored(&self, key: u32) -> &[(u32, u32)] {
        let mask = self.slot_keys.len() - 1;
        let mut slot = table_slot(key, self.slot_keys.len());
        loop {
            match self.slot_keys[slot] {
                0 => return &[],
                k if k == key => {
                    let (start, len) = self.slot_runs[slot];
                    return &self.anchored[start as usize..(start + len) as usize];
                }
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Rules evaluated on every event of their partition.
    pub fn ungated_count(&self) -> usize {
        self.ungated.iter().map(|(_, locals)| locals.len()).sum()
    }

    /// Marks every literal text that occurs in `text` (ASCII-case-insensitively) in
    /// `found.texts`: each position whose gram is an anchor (pre-screened by one bit) is
    /// checked against the texts anchored there.
    fn scan(&self, text: &str, found: &mut Found) {
        let bytes = text.as_bytes();
        let mut check = |key: u32, gram_start: usize| {
            let (word, bit) = screen_slot(key);
            if self.screen[word] & bit == 0 {
                return;
            }
            for &(literal, offset) in self.anchored(key) {
                if found.texts.contains(literal) {
                    continue;
                }
                let (start, len) = self.spans[literal as usize];
                let needle = &self.text[start as usize..(start + len) as usize];
                let Some(start) = gram_start.checked_sub(offset as usize) else { continue };
                if bytes.get(start..start + needle.len()).is_some_and(|window| window.eq_ignore_ascii_case(needle)) {
                    found.texts.insert(literal);
                    found.value_texts.push(literal);
                }
            }
        };
        let mut window = 0u32;
        for (i, &byte) in bytes.iter().enumerate() {
            window = (window >> 8) | (u32::from(byte.to_ascii_lowercase()) << 24);
            if i >= 3 {
                check(window, i - 3);
            }
        }
    }

    /// The rules of `routes` (partition ids as given to [`LiteralGate::build`]) that can
    /// match an event whose (field name, string value) pairs `visit` yields, per partition
    /// in `routes` order.
    pub fn candidates(&self, routes: &[usize], visit: impl FnOnce(&mut dyn FnMut(&str, &str))) -> Candidates {
        let ungated = |p: usize| self.ungated.iter().find(|(id, _)| *id == p).map(|(_, locals)| locals.clone()).unwrap_or_default();
        let mut out: Candidates = routes.iter().map(|&p| (p, ungated(p))).collect();
        if self.spans.is_empty() {
            return out;
        }
        let mut found = Found {
            texts: IdSet::with_capacity(self.spans.len()),
            value_texts: Vec::new(),
            scoped: IdSet::with_capacity(self.by_literal.len()),
            scoped_order: Vec::new(),
        };
        visit(&mut |name: &str, value: &str| {
            let field = match self.field_ids.get(name) {
                Some(&id) => id,
                // No literal is scoped to this field: only keyword literals can be in it.
                None if !self.any_scoped => return,
                None => ANY_FIELD,
            };
            self.scan(value, &mut found);
            if !value.is_ascii() {
                self.scan(&fold(value), &mut found);
                if let Some(id) = self.non_ascii.filter(|&id| found.texts.insert(id)) {
                    found.value_texts.push(id);
                }
            }
            // The value's texts, in this field's scope and in any value's.
            let Found { texts, value_texts, scoped, scoped_order } = &mut found;
            for &text in value_texts.iter() {
                texts.remove(text);
                let run = self.scope_starts[text as usize] as usize..self.scope_starts[text as usize + 1] as usize;
                for &(scope, id) in &self.scopes[run] {
                    if (scope == ANY_FIELD || scope == field) && scoped.insert(id) {
                        scoped_order.push(id);
                    }
                }
            }
            value_texts.clear();
        });
        let mut seen = IdSet::with_capacity(self.gated.len());
        for id in found.scoped_order {
            for &rule in &self.by_literal[id as usize] {
                if !seen.insert(rule) {
                    continue;
                }
                let gated = &self.gated[rule as usize];
                let Some(slot) = out.iter_mut().find(|(p, _)| *p == gated.partition as usize) else {
                    continue;
                };
                if gated.other_clauses.iter().all(|clause| clause.iter().any(|&l| found.scoped.contains(l))) {
                    slot.1.push(gated.local);
                }
            }
        }
        for (_, locals) in &mut out {
            locals.sort_unstable();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(yaml: &str) -> (LiteralGate, Vec<CompiledRule>) {
        let collection = rsigma_parser::parse_sigma_yaml(yaml).expect("rule parses");
        let rules: Vec<CompiledRule> = collection.rules.iter().map(|r| rsigma_eval::compile_rule(r).expect("compiles")).collect();
        (LiteralGate::build(&[(0, &rules)]), rules)
    }

    /// Candidates for an event of (field, value) pairs.
    fn candidates(gate: &LiteralGate, fields: &[(&str, &str)]) -> Vec<u32> {
        let mut out = gate.candidates(&[0], |visit| {
            for (name, value) in fields {
                visit(name, value);
            }
        });
        out.pop().map(|(_, c)| c).unwrap_or_default()
    }

    const RULE: &str = r#"
title: t
logsource: {product: windows, category: process_creation}
detection:
  img: {Image|endswith: '\certutil.exe'}
  cmd: {CommandLine|contains: ['-urlcache', '-decode']}
  filter: {CommandLine|re: 'x+'}
  condition: img and cmd and not filter
"#;

    #[test]
    fn conjunctions_need_every_selection() {
        let (gate, _) = gate(RULE);
        assert_eq!(gate.ungated_count(), 0);
        assert_eq!(candidates(&gate, &[("Image", "C:\\Windows\\CERTUTIL.exe"), ("CommandLine", "certutil -URLcache -f")]), vec![0]);
        assert!(candidates(&gate, &[("Image", "C:\\Windows\\certutil.exe"), ("CommandLine", "certutil -f")]).is_empty());
        assert!(candidates(&gate, &[("Image", "cmd.exe"), ("CommandLine", "-decode")]).is_empty());
    }

    #[test]
    fn negations_and_regexes_stay_ungated() {
        let (gate, _) = gate(
            r#"
title: t
logsource: {product: windows}
detection:
  a: {CommandLine|re: 'abc'}
  b: {Image: 'x.exe'}
  condition: a or not b
"#,
        );
        assert_eq!(gate.ungated_count(), 1);
        assert_eq!(candidates(&gate, &[("CommandLine", "nothing")]), vec![0]);
    }

    #[test]
    fn one_of_needs_any_selection_and_non_ascii_values_are_lowered() {
        let (gate, _) = gate(
            r#"
title: t
logsource: {product: windows}
detection:
  sel_a: {CommandLine|contains: 'mimikatz'}
  sel_b: {Image|endswith: '\procdump.exe'}
  condition: 1 of sel_*
"#,
        );
        assert_eq!(candidates(&gate, &[("CommandLine", "run MIMIKATZ é")]), vec![0]);
        assert_eq!(candidates(&gate, &[("Image", "c:\\é\\ProcDump.exe")]), vec![0]);
        assert!(candidates(&gate, &[("Image", "c:\\é\\other.exe")]).is_empty());
    }

    #[test]
    fn regexes_gate_by_their_prefixes_and_non_ascii_needles_by_non_ascii_text() {
        let (gate, _) = gate(
            r#"
title: t
logsource: {product: windows}
detection:
  re: {CommandLine|re: '(?i)werfaultsecure\.exe\s+\d+'}
  wild: {CommandLine: '*\\procdump*.exe -ma*'}
  emoji: {CommandLine|contains: '😀'}
  condition: re or wild or emoji
"#,
        );
        assert_eq!(gate.ungated_count(), 0);
        assert_eq!(candidates(&gate, &[("CommandLine", "C:\\X\\WerFaultSecure.EXE 1234")]), vec![0]);
        assert_eq!(candidates(&gate, &[("CommandLine", "C:\\Tools\\ProcDump64.exe -ma lsass")]), vec![0]);
        assert_eq!(candidates(&gate, &[("CommandLine", "echo 😀")]), vec![0]);
        assert!(candidates(&gate, &[("CommandLine", "notepad.exe readme.txt")]).is_empty());
    }
    #[test]
    fn literals_count_only_in_the_field_that_names_them_and_keywords_in_any() {
        let (gate, _) = gate(
            r#"
title: t
logsource: {product: windows}
detection:
  img: {Image|endswith: '\rundll32.exe'}
  cmd: {CommandLine|contains: 'javascript:'}
  condition: img and cmd
---
title: k
logsource: {product: windows}
detection:
  words: ['mimikatz']
  condition: words
"#,
        );
        let both = [("Image", "C:\\Windows\\rundll32.exe"), ("CommandLine", "rundll32 javascript:x")];
        assert_eq!(candidates(&gate, &both), vec![0]);
        // The image literal in another field (the parent) does not count for `Image`.
        let parent = [("ParentImage", "C:\\Windows\\rundll32.exe"), ("CommandLine", "rundll32 javascript:x")];
        assert!(candidates(&gate, &parent).is_empty());
        // A keyword is looked for in every value, whatever its field.
        assert_eq!(candidates(&gate, &[("Whatever", "run Mimikatz now")]), vec![1]);
        // The same text in the right field serves a rule; in another field only keywords.
        let swapped = [("Image", "javascript:"), ("CommandLine", "c:\\x\\rundll32.exe")];
        assert!(candidates(&gate, &swapped).is_empty());
    }
}
