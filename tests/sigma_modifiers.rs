//! Every Sigma value modifier and condition form, each with an event that must match and
//! one that must not, through the same engine and routing the quick-scan stage uses.

use rsigma_parser::LogSource;
use serde_json::{json, Value};
use threatpipe::detect::sigma::SigmaRules;

fn rule(detection: &str) -> SigmaRules {
    let text = format!(
        "title: t\nid: 00000000-0000-0000-0000-000000000001\nlogsource:\n  product: test\nlevel: high\ndetection:\n{detection}"
    );
    let (rules, errors) = SigmaRules::from_yaml(&text);
    assert!(errors.is_empty(), "rule did not load: {errors:?}\n{text}");
    assert_eq!(rules.rule_count(), 1);
    rules
}

fn fires(rules: &SigmaRules, event: Value) -> bool {
    let ls = LogSource { product: Some("test".into()), ..Default::default() };
    !rules.evaluate_document(&event, &ls).is_empty()
}

/// (detection YAML, event that must match, event that must not).
fn check(detection: &str, hit: Value, miss: Value) {
    let rules = rule(detection);
    assert!(fires(&rules, hit.clone()), "must match: {hit}\n{detection}");
    assert!(!fires(&rules, miss.clone()), "must not match: {miss}\n{detection}");
}

#[test]
fn plain_values_are_case_insensitive_equality_with_wildcards() {
    // A backslash before a wildcard escapes it, so a path separator before `*` is doubled.
    check("  sel:\n    Image: 'C:\\Windows\\\\*\\cmd.exe'\n  condition: sel", json!({"Image": "c:\\windows\\system32\\CMD.EXE"}), json!({"Image": "c:\\temp\\cmd.exe"}));
    check("  sel:\n    User: admin?\n  condition: sel", json!({"User": "admin1"}), json!({"User": "admin12"}));
}

#[test]
fn contains_startswith_endswith() {
    check("  sel:\n    CommandLine|contains: mimikatz\n  condition: sel", json!({"CommandLine": "run MimiKatz.exe now"}), json!({"CommandLine": "notepad"}));
    check("  sel:\n    Image|startswith: 'C:\\Temp\\'\n  condition: sel", json!({"Image": "C:\\Temp\\x.exe"}), json!({"Image": "D:\\C:\\Temp\\x.exe"}));
    check("  sel:\n    Image|endswith: '\\rundll32.exe'\n  condition: sel", json!({"Image": "C:\\w\\RUNDLL32.exe"}), json!({"Image": "C:\\w\\rundll32.exe.bak"}));
}

#[test]
fn all_modifier_requires_every_value() {
    check(
        "  sel:\n    CommandLine|contains|all:\n      - ' -nop'\n      - ' -enc'\n  condition: sel",
        json!({"CommandLine": "powershell -nop -enc AAAA"}),
        json!({"CommandLine": "powershell -nop"}),
    );
}

#[test]
fn cased_modifier() {
    check("  sel:\n    Token|cased: SeDebug\n  condition: sel", json!({"Token": "SeDebug"}), json!({"Token": "sedebug"}));
}

#[test]
fn regex_and_its_flags() {
    check("  sel:\n    CommandLine|re: '^cmd\\.exe /c [a-z]+$'\n  condition: sel", json!({"CommandLine": "cmd.exe /c whoami"}), json!({"CommandLine": "cmd.exe /c WHOAMI"}));
    check("  sel:\n    CommandLine|re|i: '^cmd\\.exe /c [a-z]+$'\n  condition: sel", json!({"CommandLine": "CMD.EXE /c WHOAMI"}), json!({"CommandLine": "cmd.exe /k whoami"}));
    check("  sel:\n    Text|re|m: '^second$'\n  condition: sel", json!({"Text": "first\nsecond\nthird"}), json!({"Text": "first second"}));
    check("  sel:\n    Text|re|s: 'a.b'\n  condition: sel", json!({"Text": "a\nb"}), json!({"Text": "a\n\nb"}));
}

#[test]
fn cidr() {
    check("  sel:\n    SourceIp|cidr: 10.0.0.0/8\n  condition: sel", json!({"SourceIp": "10.20.30.40"}), json!({"SourceIp": "11.0.0.1"}));
    check("  sel:\n    SourceIp|cidr: 'fe80::/10'\n  condition: sel", json!({"SourceIp": "fe80::1"}), json!({"SourceIp": "2001:db8::1"}));
}

#[test]
fn base64_and_base64offset() {
    // base64("http://") = "aHR0cDovL"
    check("  sel:\n    CommandLine|base64: 'http://'\n  condition: sel", json!({"CommandLine": "aHR0cDovLw=="}), json!({"CommandLine": "http://"}));
    check("  sel:\n    CommandLine|base64|contains: 'http://'\n  condition: sel", json!({"CommandLine": "x aHR0cDovLw== y"}), json!({"CommandLine": "http://"}));
    check(
        "  sel:\n    CommandLine|base64offset|contains: 'http://'\n  condition: sel",
        json!({"CommandLine": "-e SUVYIChodHRwOi8v"}), // base64("IEX (http://") : offset 1 of 3
        json!({"CommandLine": "-e SUVYIChub3RoaW5n"}),
    );
}

#[test]
fn utf16_wide_encodings() {
    // base64(utf16le("ping")) = "cABpAG4AZwA="
    check("  sel:\n    CommandLine|wide|base64offset|contains: 'ping'\n  condition: sel", json!({"CommandLine": "-enc cABpAG4AZwA="}), json!({"CommandLine": "-enc cGluZw=="}));
    check("  sel:\n    CommandLine|utf16le|base64offset|contains: 'ping'\n  condition: sel", json!({"CommandLine": "-enc cABpAG4AZwA="}), json!({"CommandLine": "ping"}));
}

#[test]
fn windash() {
    check("  sel:\n    CommandLine|windash|contains: ' -exec bypass'\n  condition: sel", json!({"CommandLine": "powershell /exec bypass"}), json!({"CommandLine": "powershell exec bypass"}));
    check("  sel:\n    CommandLine|windash|contains: ' -exec bypass'\n  condition: sel", json!({"CommandLine": "powershell \u{2013}exec bypass"}), json!({"CommandLine": "powershell +exec bypass"}));
}

#[test]
fn exists() {
    check("  sel:\n    ParentImage|exists: true\n  condition: sel", json!({"ParentImage": "x"}), json!({"Image": "x"}));
    check("  sel:\n    ParentImage|exists: false\n  condition: sel", json!({"Image": "x"}), json!({"ParentImage": "x"}));
}

#[test]
fn numeric_comparisons() {
    check("  sel:\n    Count|gt: 10\n  condition: sel", json!({"Count": 11}), json!({"Count": 10}));
    check("  sel:\n    Count|gte: 10\n  condition: sel", json!({"Count": 10}), json!({"Count": 9}));
    check("  sel:\n    Count|lt: 10\n  condition: sel", json!({"Count": 9}), json!({"Count": 10}));
    check("  sel:\n    Count|lte: 10\n  condition: sel", json!({"Count": 10}), json!({"Count": 11}));
}

#[test]
fn fieldref() {
    check("  sel:\n    TargetUser|fieldref: SubjectUser\n  condition: sel", json!({"TargetUser": "bob", "SubjectUser": "bob"}), json!({"TargetUser": "bob", "SubjectUser": "eve"}));
}

#[test]
fn expand_placeholders() {
    // Without a pipeline defining %admins%, the placeholder is a literal that matches itself.
    let rules = rule("  sel:\n    User|expand: '%admins%'\n  condition: sel");
    assert!(!fires(&rules, json!({"User": "root"})));
}

#[test]
fn null_values_and_keywords() {
    check("  sel:\n    ParentImage: null\n  condition: sel", json!({"Image": "x"}), json!({"ParentImage": "y"}));
    check("  keywords:\n    - 'evil.exe'\n    - 'bad.dll'\n  condition: keywords", json!({"Message": "loaded BAD.dll"}), json!({"Message": "fine"}));
}

#[test]
fn conditions_and_or_not_parentheses() {
    let d = "  a:\n    A: 1\n  b:\n    B: 1\n  c:\n    C: 1\n";
    check(&format!("{d}  condition: a and b"), json!({"A": "1", "B": "1"}), json!({"A": "1"}));
    check(&format!("{d}  condition: a or b"), json!({"B": "1"}), json!({"C": "1"}));
    check(&format!("{d}  condition: a and not b"), json!({"A": "1"}), json!({"A": "1", "B": "1"}));
    check(&format!("{d}  condition: (a or b) and not c"), json!({"B": "1"}), json!({"B": "1", "C": "1"}));
    check(&format!("{d}  condition: a and (b or c)"), json!({"A": "1", "C": "1"}), json!({"A": "1"}));
}

#[test]
fn quantified_conditions() {
    let d = "  sel_a:\n    A: 1\n  sel_b:\n    B: 1\n  filter:\n    F: 1\n";
    check(&format!("{d}  condition: 1 of sel_*"), json!({"B": "1"}), json!({"F": "1"}));
    check(&format!("{d}  condition: all of sel_*"), json!({"A": "1", "B": "1"}), json!({"A": "1"}));
    check(&format!("{d}  condition: 1 of sel_* and not filter"), json!({"A": "1"}), json!({"A": "1", "F": "1"}));
    check(&format!("{d}  condition: all of them"), json!({"A": "1", "B": "1", "F": "1"}), json!({"A": "1", "B": "1"}));
    check(&format!("{d}  condition: 1 of them"), json!({"F": "1"}), json!({"X": "1"}));
    check(&format!("{d}  condition: 2 of sel_*"), json!({"A": "1", "B": "1"}), json!({"A": "1"}));
}

#[test]
fn list_of_maps_is_or_and_map_is_and() {
    check(
        "  sel:\n    - Image|endswith: '\\a.exe'\n      User: bob\n    - Image|endswith: '\\b.exe'\n  condition: sel",
        json!({"Image": "c:\\b.exe"}),
        json!({"Image": "c:\\a.exe", "User": "eve"}),
    );
}

#[test]
fn logsource_routes_rules() {
    let rules = rule("  sel:\n    A: 1\n  condition: sel");
    let other = LogSource { product: Some("linux".into()), ..Default::default() };
    assert!(rules.evaluate_document(&json!({"A": "1"}), &other).is_empty(), "a rule for product test must not run on linux events");
}
