//! Literal gate: which Sigma rules can possibly match an event, decided by one pass over
//! the event's values before any rule runs.
//!
//! An evtx process-creation event is routed to ~800 SigmaHQ rules; rsigma's engine picks
//! its candidates with an Aho-Corasick automaton per field and evaluates the rest. This
//! gate derives, from each compiled rule, literals that *must* occur in the event for the
//! rule to match, in conjunctive normal form: every clause is a set of literals of which at
//! least one must be present (see [`Cnf`]). Contains, prefix, suffix and equality matchers
//! give their value; regexes (including wildcard values, which rsigma compiles to regexes)
//! give a literal every match contains ([`required`], from the regex-syntax HIR).
//!
//! A literal is scoped to the field its detection item reads (rsigma reads exactly that
//! field's value), or to any value for keyword detections: `\rundll32.exe` required of
//! `Image` is not satisfied by a `ParentImage` ending in it. Each field has its own table
//! of anchored literals ([`AnchorTable`]; each literal at its rarest 4-byte window: a
//! one-bit pre-screen, then a compact hash table, then a byte comparison), so a value is
//! looked at only for the literals of its own field and the keywords, and a value of a
//! field no rule names, only for keywords. A field item with no literal to look for (a
//! number, a CIDR, a regex without a fixed part) still needs its field to be there: rsigma
//! matches an absent field only with a bare `null`. A rule is evaluated by rsigma,
//! unchanged, only when all its clauses are satisfied. Rules with no clause (negations,
//! `null`, absence tests) are evaluated on every event of their logsource. On SigmaHQ's
//! evtx samples ~7 of ~800 routed rules per event reach rsigma (~19 when literals counted
//! anywhere in the event, ~11 with scopes but without presence and numbers).
//!
//! The derivation is conservative by construction: a rule that matches an event always
//! passes the gate, so the gate changes cost, never results (tests/sigma_regression.rs
//! compares both on every sample). Matching is ASCII-case-insensitive on the value and,
//! for values with non-ASCII characters, also on [`fold`] of it, which is what rsigma
//! compares case-insensitive matchers against.

use rsigma_eval::{CompiledDetection, CompiledMatcher, CompiledRule};
use rsigma_parser::{ConditionExpr, Quantifier};

/// A necessary condition for a matcher, detection or rule to be true of an event: every
/// clause (a set of scoped literal ids) must have at least one literal present in a value
/// of its scope. No clauses: no constraint (always a candidate). A clause with no literal:
/// can never be satisfied (the rule cannot match at all).
#[derive(Debug, Clone, Default, PartialEq)]
struct Cnf(Vec<Vec<u32>>);

/// Largest number of clauses kept for the OR of two necessary conditions (their
/// pairwise unions); beyond it only the unions of each side's two most selective clauses
/// are kept.
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
        // The pairwise unions of each side's two most selective clauses.
        fn best<'c>(cnf: &'c Cnf, weight: &dyn Fn(&[u32]) -> f64) -> Vec<&'c Vec<u32>> {
            let mut clauses: Vec<&Vec<u32>> = cnf.0.iter().collect();
            clauses.sort_by(|x, y| weight(x).total_cmp(&weight(y)));
            clauses.truncate(2);
            clauses
        }
        let mut out = Cnf::always();
        for a in best(&self, weight) {
            for b in best(&other, weight) {
                out = out.and(Cnf(vec![union(a, b)]));
            }
        }
        out
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
/// although 45 more rules become ungated. Looking for 2-3 byte literals only in their own
/// field, by a per-field Aho-Corasick pass, was tried too: rules reaching rsigma fell from
/// 3.89 to 2.62 per event (same hits), but instructions per scanned event rose 0.6-2%
/// (callgrind): the pass costs what the evaluations it avoids cost, as those rules fail fast.
const MIN_LITERAL: usize = 4;

/// The pseudo-literal present when some value has a non-ASCII character: the gate of
/// matchers whose text has no ASCII run long enough to look for.
const NON_ASCII: &str = "\u{0}non-ascii";

/// The pseudo-literal present in its field's scope when the event has that field at all:
/// the gate of a field item with no literal to look for (a regex with none, a CIDR, a
/// number), which rsigma never matches on an event without the field.
const PRESENT: &str = "\u{0}present";

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
    ids: crate::FastMap<String, u32>,
    fields: Vec<String>,
    field_ids: crate::FastMap<String, u32>,
    /// Scoped literal id → (text id, field id or [`ANY_FIELD`]).
    scoped: Vec<(u32, u32)>,
    scoped_ids: crate::FastMap<(u32, u32), u32>,
    /// The scope of the matcher being analysed.
    scope: u32,
    /// Text id of a numeric pseudo-literal → the number a field's value must equal.
    numbers: crate::FastMap<u32, f64>,
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
                let text_id = self.scoped[id as usize].0;
                let text = &self.texts[text_id as usize];
                if text == NON_ASCII {
                    return 0.25;
                }
                // Most events of a logsource have most of its fields: the weakest gate.
                if text == PRESENT {
                    return 2.0;
                }
                // A number (an event id) is about as selective as a short literal.
                if self.numbers.contains_key(&text_id) {
                    return 0.1;
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
            // `EventID: 1`: the field's value must parse as that number (keywords: no gate).
            M::NumericEq(n) if self.scope != ANY_FIELD && n.is_finite() => {
                let id = self.literal(&format!("\u{0}={n:?}"));
                let text = self.scoped[id as usize].0;
                self.numbers.insert(text, *n);
                Cnf::literal(id)
            }
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
                let cnf = match (item.field.as_deref(), item.exists) {
                    // `|exists: true` asks for the field; `false` or a keyword presence
                    // test, for nothing a value can show.
                    (Some(field), Some(true)) => self.scoped(Some(field), |l| Cnf::literal(l.literal(PRESENT))),
                    (_, Some(_)) => Cnf::always(),
                    (None, None) => self.scoped(None, |l| l.matcher(&item.matcher)),
                    (Some(field), None) => self.scoped(Some(field), |l| {
                        let cnf = l.matcher(&item.matcher);
                        // rsigma matches an absent field only with a bare `null`; any other
                        // matcher needs the field. Its literals already imply that.
                        if cnf.0.is_empty() && !matches!(item.matcher, CompiledMatcher::Null) {
                            Cnf::literal(l.literal(PRESENT))
                        } else {
                            cnf
                        }
                    }),
                };
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

/// Most bits in a table's gram pre-screen: 2^18 bits (32 KiB) stay in L1 while a value
/// is scanned. Smaller tables get smaller screens, ~32 bits per anchor.
const MAX_SCREEN_BITS: u32 = 18;
const MIN_SCREEN_BITS: u32 = 9;

/// Set in every byte of a gram to make its key ([`gram4`]).
const GRAM_FOLD: u32 = 0x2020_2020;

/// The key of a 4-byte window: its bytes as loaded, with bit 5 of each set. ASCII
/// lowering only changes bit 5 (`A`-`Z` to `a`-`z`), so a text's window and the lowered
/// literal it equals case-insensitively have one key, with no lowering per scanned
/// position; windows that differ only in bit 5 elsewhere (`\` and `|`, `@` and `` ` ``)
/// share a key too, and the byte comparison that follows every lookup tells them apart.
/// Never 0 (the empty table slot).
fn gram4(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes) | GRAM_FOLD
}

fn table_slot(key: u32, capacity: usize) -> usize {
    (key.wrapping_mul(0x85EB_CA6B).rotate_right(13).wrapping_mul(0xC2B2_AE35) as usize) & (capacity - 1)
}

/// Where a literal is looked for: its rarest 4-byte window among the table's literals
/// (`.exe` and `\\win` are in thousands), as (gram key, offset in the literal).
fn anchor(text: &[u8], counts: &crate::FastMap<u32, u32>) -> (u32, usize) {
    text.windows(4)
        .enumerate()
        .map(|(offset, w)| (gram4([w[0], w[1], w[2], w[3]]), offset))
        .min_by_key(|(key, _)| counts.get(key).copied().unwrap_or(0))
        .unwrap_or((0, 0))
}

/// The text ids of the pseudo-literals, where rules use them.
#[derive(Clone, Copy)]
struct Pseudo<'a> {
    non_ascii: Option<u32>,
    present: Option<u32>,
    numbers: &'a crate::FastMap<u32, f64>,
}

/// A literal as a table looks for it.
#[derive(Clone, Copy)]
struct Anchored {
    /// The scoped literal it stands for.
    scoped: u32,
    /// Its text id, and the offset of its anchor gram in that text.
    text: u32,
    offset: u32,
}

/// The literals of one scope (one field, or keywords), anchored by gram: a one-bit
/// pre-screen, then a compact open-addressing table (cache misses, not hashing, are the
/// cost of a lookup), then a byte comparison.
struct AnchorTable {
    /// Slot → gram key (0 = empty) and its run in `anchored`.
    slot_keys: Vec<u32>,
    slot_runs: Vec<(u32, u32)>,
    anchored: Vec<Anchored>,
    /// A clear bit means no anchor hashes there; `screen_shift` takes a key's hash to a bit.
    screen: Vec<u64>,
    screen_shift: u32,
    /// Scoped literals satisfied by any non-ASCII value in this scope ([`NON_ASCII`]).
    non_ascii: Vec<u32>,
    /// Scoped literals satisfied by the field being there at all ([`PRESENT`]).
    present: Vec<u32>,
    /// Scoped literals satisfied by a value that parses as this number (as rsigma's
    /// `NumericEq` parses it).
    numbers: Vec<(f64, u32)>,
}

impl AnchorTable {
    /// The table of `entries` (scoped id, text id); `None` when there are none. Its
    /// pre-screen also covers the anchors of `screen_also`, so one screen check per
    /// position serves a value scanned with both tables.
    fn build(entries: &[(u32, u32)], texts: &[String], pseudo: Pseudo, screen_also: Option<&AnchorTable>) -> Option<Self> {
        if entries.is_empty() {
            return None;
        }
        // How many of the table's literals share each 4-byte window: common windows make
        // poor anchors.
        let mut counts: crate::FastMap<u32, u32> = Default::default();
        for &(_, text) in entries {
            let mut windows: Vec<u32> = texts[text as usize].as_bytes().windows(4).map(|w| gram4([w[0], w[1], w[2], w[3]])).collect();
            windows.sort_unstable();
            windows.dedup();
            for key in windows {
                *counts.entry(key).or_default() += 1;
            }
        }
        let mut anchors: std::collections::BTreeMap<u32, Vec<Anchored>> = Default::default();
        let (mut non_ascii, mut present, mut numbers) = (Vec::new(), Vec::new(), Vec::new());
        for &(scoped, text) in entries {
            if let Some(&n) = pseudo.numbers.get(&text) {
                numbers.push((n, scoped));
                continue;
            }
            if Some(text) == pseudo.non_ascii {
                non_ascii.push(scoped);
                continue;
            }
            if Some(text) == pseudo.present {
                present.push(scoped);
                continue;
            }
            let (key, offset) = anchor(texts[text as usize].as_bytes(), &counts);
            anchors.entry(key).or_default().push(Anchored { scoped, text, offset: offset as u32 });
        }
        let also = screen_also.map(AnchorTable::keys).into_iter().flatten();
        let (screen, screen_shift) = Self::screen_of(anchors.keys().copied().chain(also));
        let capacity = (anchors.len() * 2).next_power_of_two().max(16);
        let (mut slot_keys, mut slot_runs, mut anchored) = (vec![0u32; capacity], vec![(0u32, 0u32); capacity], Vec::new());
        for (key, entries) in anchors {
            let mut slot = table_slot(key, capacity);
            while slot_keys[slot] != 0 {
                slot = (slot + 1) & (capacity - 1);
            }
            slot_keys[slot] = key;
            slot_runs[slot] = (anchored.len() as u32, entries.len() as u32);
            anchored.extend(entries);
        }
        Some(Self { slot_keys, slot_runs, anchored, screen, screen_shift, non_ascii, present, numbers })
    }

    /// A pre-screen of gram keys, ~32 bits per key, and its shift.
    fn screen_of(keys: impl Iterator<Item = u32> + Clone) -> (Vec<u64>, u32) {
        let count = keys.clone().count();
        let bits = ((count * 32).next_power_of_two().trailing_zeros()).clamp(MIN_SCREEN_BITS, MAX_SCREEN_BITS);
        let shift = 32 - bits;
        let mut screen = vec![0u64; 1 << (bits - 6)];
        for key in keys {
            let (word, bit) = Self::screen_slot(key, shift);
            screen[word] |= bit;
        }
        (screen, shift)
    }

    /// The gram keys of the table's anchors.
    fn keys(&self) -> impl Iterator<Item = u32> + Clone + '_ {
        self.slot_keys.iter().copied().filter(|&k| k != 0)
    }

    /// Whether a value has to be scanned for this table: it has literals or takes note of
    /// non-ASCII values.
    fn has_text(&self) -> bool {
        !self.anchored.is_empty() || !self.non_ascii.is_empty()
    }

    fn screen_slot(key: u32, shift: u32) -> (usize, u64) {
        let hash = key.wrapping_mul(0x9E37_79B1) >> shift;
        ((hash / 64) as usize, 1u64 << (hash % 64))
    }

    /// The first window at or after byte `from` of `bytes` that the pre-screen lets
    /// through, as (its start, its key). One unaligned load, a multiply and a bit test per
    /// position: the whole per-byte cost of the gate on text with nothing to find.
    #[inline]
    fn next_screened(&self, bytes: &[u8], from: usize) -> Option<(usize, u32)> {
        let (screen, shift) = (self.screen.as_slice(), self.screen_shift);
        let mut key = 0;
        let offset = bytes.get(from..)?.windows(4).position(|window| {
            // A window is four bytes: the conversion cannot fail, and compiles to one load.
            key = gram4(<[u8; 4]>::try_from(window).unwrap_or_default());
            let (word, bit) = Self::screen_slot(key, shift);
            screen.get(word).is_some_and(|word| word & bit != 0)
        })?;
        Some((from + offset, key))
    }

    /// The literals anchored at gram `key`.
    #[inline]
    fn lookup(&self, key: u32) -> &[Anchored] {
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
}

/// The gate over every rule of a set of logsource partitions (see the module docs).
pub struct LiteralGate {
    /// Every literal's text (ASCII-lowercased), back to back; `spans[id]` is (start, len).
    text: Vec<u8>,
    spans: Vec<(u32, u32)>,
    /// Field name → its table: the literals scoped to that field. A value is scanned with
    /// its field's table and the keyword table; a value of a field no literal names, with
    /// the keyword table alone, and not at all when there are no keywords.
    field_tables: crate::FastMap<Box<str>, AnchorTable>,
    keyword_table: Option<AnchorTable>,
    /// Distinct literal texts looked for.
    texts_used: usize,
    /// Scoped literals in all: the size of an event's set of found literals.
    scoped_count: usize,
    /// Scoped literal id → gated rules whose primary (most selective) clause contains it.
    by_literal: Vec<Vec<u32>>,
    gated: Vec<GatedRule>,
    /// Per partition (the caller's id): local indexes of the rules with no gate.
    ungated: Vec<(usize, Vec<u32>)>,
}

/// A set of small ids (literals, rules) as bits, for one event.
#[derive(Default)]
struct IdSet(Vec<u64>);

impl IdSet {
    /// Empties the set and makes room for ids below `ids`, in its own buffer.
    fn reset(&mut self, ids: usize) {
        self.0.clear();
        self.0.resize(ids.div_ceil(64), 0);
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
}

/// Per-partition candidates of one event: local rule indexes, ascending.
pub type Candidates = Vec<(usize, Vec<u32>)>;

/// The working sets of [`LiteralGate::candidates`], kept per thread between calls: quick-scan
/// and correlate ask for every event, and building them afresh was four allocations an
/// event (two zeroed bit sets a call), each on memory the thread had not touched lately.
#[derive(Default)]
struct GateScratch {
    found: IdSet,
    seen: IdSet,
    order: Vec<u32>,
}

thread_local! {
    static GATE_SCRATCH: std::cell::Cell<GateScratch> = std::cell::Cell::default();
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
        // Scoped literals no clause kept (a sibling made their clause void) are not looked
        // for.
        let mut used = vec![false; literals.scoped.len()];
        for cnf in cnfs.iter().flatten() {
            for &id in cnf.0.iter().flatten() {
                used[id as usize] = true;
            }
        }
        let mut per_field: Vec<Vec<(u32, u32)>> = vec![Vec::new(); literals.fields.len()];
        let mut keywords = Vec::new();
        let mut texts_used = std::collections::BTreeSet::new();
        for (id, &(text, field)) in literals.scoped.iter().enumerate() {
            if !used[id] {
                continue;
            }
            texts_used.insert(text);
            match field {
                ANY_FIELD => keywords.push((id as u32, text)),
                field => per_field[field as usize].push((id as u32, text)),
            }
        }
        let pseudo = Pseudo { non_ascii: literals.ids.get(NON_ASCII).copied(), present: literals.ids.get(PRESENT).copied(), numbers: &literals.numbers };
        let keyword_table = AnchorTable::build(&keywords, &literals.texts, pseudo, None);
        let field_tables = literals
            .fields
            .iter()
            .zip(&per_field)
            .filter_map(|(name, entries)| Some((Box::from(name.as_str()), AnchorTable::build(entries, &literals.texts, pseudo, keyword_table.as_ref())?)))
            .collect();

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
        let mut text = Vec::new();
        let spans = literals
            .texts
            .iter()
            .map(|t| {
                text.extend_from_slice(t.as_bytes());
                ((text.len() - t.len()) as u32, t.len() as u32)
            })
            .collect();
        Self {
            text,
            spans,
            field_tables,
            keyword_table,
            texts_used: texts_used.len(),
            scoped_count: literals.scoped.len(),
            by_literal,
            gated,
            ungated,
        }
    }

    /// Distinct literal texts the gate looks for.
    pub fn literal_count(&self) -> usize {
        self.texts_used
    }

    /// Rules evaluated on every event of their partition.
    pub fn ungated_count(&self) -> usize {
        self.ungated.iter().map(|(_, locals)| locals.len()).sum()
    }

    /// Rules of `routes` evaluated on every event (no clause).
    pub fn ungated_in(&self, routes: &[usize]) -> usize {
        self.ungated.iter().filter(|(id, _)| routes.contains(id)).map(|(_, locals)| locals.len()).sum()
    }

    /// Marks in `found` every literal of `tables` that occurs in `text`
    /// (ASCII-case-insensitively): each position whose gram passes the first table's
    /// pre-screen (which covers the anchors of all `tables`) is checked against the
    /// literals anchored there.
    fn scan(&self, text: &str, tables: &[&AnchorTable], found: &mut IdSet, order: &mut Vec<u32>) {
        let Some(screen) = tables.first() else { return };
        let bytes = text.as_bytes();
        let mut from = 0;
        while let Some((gram_start, key)) = screen.next_screened(bytes, from) {
            from = gram_start + 1;
            for table in tables {
                for anchored in table.lookup(key) {
                    if found.contains(anchored.scoped) {
                        continue;
                    }
                    let (start, len) = self.spans[anchored.text as usize];
                    let needle = &self.text[start as usize..(start + len) as usize];
                    let Some(start) = gram_start.checked_sub(anchored.offset as usize) else { continue };
                    if bytes.get(start..start + needle.len()).is_some_and(|window| window.eq_ignore_ascii_case(needle)) {
                        found.insert(anchored.scoped);
                        order.push(anchored.scoped);
                    }
                }
            }
        }
    }

    /// The fields this gate reads, when those are all it reads (no keyword literal is looked
    /// for in every value): then an event's other fields cannot change its candidates, and
    /// a caller that can look fields up by name may offer only these to
    /// [`LiteralGate::candidates`] and get the same answer. A route with a handful of rules
    /// (correlate's own detections) names two or three fields, where walking the event
    /// visits thirty (load/README.md, session 27).
    pub fn named_fields(&self) -> Option<impl ExactSizeIterator<Item = &str> + '_> {
        self.keyword_table.is_none().then(|| self.field_tables.keys().map(|name| &**name))
    }

    /// The rules of `routes` (partition ids as given to [`LiteralGate::build`]) that can
    /// match an event whose (field name, string value) pairs `visit` yields, per partition
    /// in `routes` order.
    pub fn candidates(&self, routes: &[usize], visit: impl FnOnce(&mut dyn FnMut(&str, &str))) -> Candidates {
        let ungated = |p: usize| self.ungated.iter().find(|(id, _)| *id == p).map(|(_, locals)| locals.clone()).unwrap_or_default();
        let mut out: Candidates = routes.iter().map(|&p| (p, ungated(p))).collect();
        if self.scoped_count == 0 {
            return out;
        }
        // Taken out of the thread's slot for the call (a nested call would start afresh).
        let GateScratch { mut found, mut seen, mut order } = GATE_SCRATCH.take();
        found.reset(self.scoped_count);
        seen.reset(self.gated.len());
        order.clear();
        let scan_value = |value: &str, tables: &[&AnchorTable], found: &mut IdSet, order: &mut Vec<u32>| {
            self.scan(value, tables, found, order);
            if !value.is_ascii() {
                self.scan(&fold(value), tables, found, order);
                for &id in tables.iter().flat_map(|table| &table.non_ascii) {
                    if found.insert(id) {
                        order.push(id);
                    }
                }
            }
        };
        visit(&mut |name: &str, value: &str| {
            let field = self.field_tables.get(name);
            if let Some(table) = field {
                let number = if table.numbers.is_empty() { None } else { value.parse::<f64>().ok() };
                let numbers = table.numbers.iter().filter(|(n, _)| number.is_some_and(|v| (v - n).abs() < f64::EPSILON));
                for id in table.present.iter().copied().chain(numbers.map(|&(_, id)| id)) {
                    if found.insert(id) {
                        order.push(id);
                    }
                }
            }
            // Tables with no literal to look for (only presence) are not scanned.
            match (field.filter(|t| t.has_text()), self.keyword_table.as_ref()) {
                (Some(field), Some(keywords)) => scan_value(value, &[field, keywords], &mut found, &mut order),
                (Some(table), None) | (None, Some(table)) => scan_value(value, &[table], &mut found, &mut order),
                // No literal is looked for in this field.
                (None, None) => {}
            }
        });
        for &id in &order {
            for &rule in &self.by_literal[id as usize] {
                if !seen.insert(rule) {
                    continue;
                }
                let gated = &self.gated[rule as usize];
                let Some(slot) = out.iter_mut().find(|(p, _)| *p == gated.partition as usize) else {
                    continue;
                };
                if gated.other_clauses.iter().all(|clause| clause.iter().any(|&l| found.contains(l))) {
                    slot.1.push(gated.local);
                }
            }
        }
        for (_, locals) in &mut out {
            locals.sort_unstable();
        }
        GATE_SCRATCH.set(GateScratch { found, seen, order });
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

    #[test]
    fn field_items_without_literals_need_their_field() {
        let (gate, _) = gate(
            r#"
title: t
logsource: {product: windows}
detection:
  sel: {CommandLine|re: '\d+'}
  condition: sel
---
title: e
logsource: {product: windows}
detection:
  sel: {Hashes|exists: true}
  condition: sel
---
title: n
logsource: {product: windows}
detection:
  sel: {CommandLine: null}
  condition: sel
"#,
        );
        // Only the `null` rule matches an event without the field.
        assert_eq!(gate.ungated_count(), 1);
        assert_eq!(candidates(&gate, &[("Image", "x.exe")]), vec![2]);
        assert_eq!(candidates(&gate, &[("CommandLine", "")]), vec![0, 2]);
        assert_eq!(candidates(&gate, &[("Hashes", "MD5=1"), ("CommandLine", "a 1")]), vec![0, 1, 2]);
    }

    #[test]
    fn numbers_gate_by_the_value_parsed_as_rsigma_parses_it() {
        let (gate, rules) = gate(
            r#"
title: t
logsource: {product: windows, service: sysmon}
detection:
  sel: {EventID: 28}
  condition: sel
"#,
        );
        assert_eq!(gate.ungated_count(), 0);
        for (value, expected) in [("28", true), ("28.0", true), ("1", false), ("x28", false), ("", false)] {
            assert_eq!(candidates(&gate, &[("EventID", value)]).len() == 1, expected, "{value:?}");
            let doc = serde_json::json!({ "EventID": value });
            assert_eq!(rsigma_eval::evaluate_rule(&rules[0], &rsigma_eval::event::JsonEvent::borrow(&doc)).is_some(), expected, "rsigma on {value:?}");
        }
        assert!(candidates(&gate, &[("Other", "28")]).is_empty());
    }
}
