//! Syslog connectors against a real rsyslog (Debian's, installed by scripts/services.sh; the
//! test starts its own daemon on free loopback ports): CEF over TCP with octet counting,
//! LEEF over UDP and JSON over TCP. rsyslog parses each message as RFC 5424 and writes what
//! it understood; every field is compared with the alert it came from, through the CEF and
//! LEEF unescaping rules, for alerts full of the characters those formats must escape.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{create_topics, free_port, produce_all, unique};
use threatpipe::event::{avro, Alert, Severity};

struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    udp: u16,
    tcp: u16,
}

impl Rsyslog {
    /// rsyslogd with plain UDP and TCP inputs.
    fn start() -> Self {
        Self::start_with(|_dir, udp, tcp| {
            format!(
                "module(load=\"imudp\")\nmodule(load=\"imtcp\")\n\
                 input(type=\"imudp\" port=\"{udp}\" address=\"127.0.0.1\")\n\
                 input(type=\"imtcp\" port=\"{tcp}\" address=\"127.0.0.1\")\n"
            )
        })
    }

    /// rsyslogd with a TLS input (gtls, server certificate signed by the test's CA) on `tcp`.
    fn start_tls() -> Self {
        Self::start_with(|dir, _udp, tcp| {
            support::make_certificates(dir);
            let d = dir.display();
            format!(
                "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                 DefaultNetstreamDriverCertFile=\"{d}/server.pem\" DefaultNetstreamDriverKeyFile=\"{d}/server.key\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
                 input(type=\"imtcp\" port=\"{tcp}\" address=\"127.0.0.1\")\n"
            )
        })
    }

    fn start_with(inputs: impl Fn(&std::path::Path, u16, u16) -> String) -> Self {
        let binary = ["/usr/sbin/rsyslogd", "rsyslogd"].into_iter().find(|b| Command::new(b).arg("-v").output().is_ok()).expect("no rsyslogd: scripts/services.sh installs Debian's rsyslog");
        let dir = tempfile::tempdir().unwrap();
        let (udp, tcp) = (free_port(), free_port());
        let d = dir.path().display();
        // One line per message: what rsyslog parsed out of the RFC 5424 header, then the
        // message. Control characters are kept as received (LEEF's tab delimiter).
        let conf = format!(
            r#"global(workDirectory="{d}" parser.escapeControlCharactersOnReceive="off" maxMessageSize="64k")
{}
template(name="fields" type="string" string="%protocol-version%|%pri%|%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\n")
*.* action(type="omfile" file="{d}/out.log" template="fields")
"#,
            inputs(dir.path(), udp, tcp)
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf).unwrap();
        let child = Command::new(binary)
            .args(["-n", "-f"])
            .arg(dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", tcp)).is_err() {
            assert!(Instant::now() < deadline, "rsyslogd did not listen: {}", std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, dir, udp, tcp }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default().lines().map(String::from).collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alerts whose text carries every character CEF, LEEF and RFC 5424 treat specially.
fn alerts(tag: &str, n: usize) -> Vec<Alert> {
    (0..n)
        .map(|i| Alert {
            id: format!("alert-{tag}-{i}"),
            tenant: format!("acme \"{i}\" ]x"),
            time_us: 1_764_000_000_000_000 + i as i64,
            last_seen_us: 1_764_000_000_000_000,
            severity: if i % 2 == 0 { Severity::High } else { Severity::Critical },
            title: format!("Title {i} | pipe \\ back = eq"),
            rule_ids: vec![format!("rule|{i}"), "risk".into()],
            entity: format!("acme|host={i}"),
            risk: Some(80.0 + i as f64 % 10.0),
            count: 1 + i as i64 % 3,
            attack_tactics: vec!["execution".into()],
            attack_techniques: vec!["T1059.001".into()],
            event_ids: vec![format!("ev-{i}")],
            summary: Some(format!("line one {i}\nline two\ttabbed \\ back = eq | pipe ] bracket \"quote\" é")),
        })
        .collect()
}

/// Undoes CEF/LEEF value escaping (`\\`, `\=`, `\n`, `\r`, `\t`, `\|`, `\<delimiter>`).
fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Splits on `sep` where it is not escaped, into at most `max` parts.
fn split_unescaped(s: &str, sep: char, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == sep && parts.len() < max - 1 {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// CEF extension `k=v k2=v2` where values may hold spaces: a key starts after a space and
/// ends at the first unescaped `=`.
fn cef_extension(ext: &str) -> Vec<(String, String)> {
    let keys = ["rt", "externalId", "cnt", "cs1Label", "cs1", "cs2Label", "cs2", "cs3Label", "cs3", "cs4Label", "cs4", "cs5Label", "cs5", "cfp1Label", "cfp1", "msg"];
    let mut positions: Vec<(usize, &str)> = Vec::new();
    for key in keys {
        let needle = format!("{key}=");
        let mut from = 0;
        while let Some(p) = ext[from..].find(&needle) {
            let at = from + p;
            let starts = at == 0 || ext.as_bytes()[at - 1] == b' ';
            let escaped = at > 0 && ext.as_bytes()[at - 1] == b'\\';
            if starts && !escaped && !positions.iter().any(|(q, _)| *q == at) {
                positions.push((at, key));
                break;
            }
            from = at + 1;
        }
    }
    positions.sort();
    positions
        .iter()
        .enumerate()
        .map(|(i, (at, key))| {
            let start = at + key.len() + 1;
            let end = positions.get(i + 1).map_or(ext.len(), |(next, _)| next - 1);
            (key.to_string(), unescape(&ext[start..end]))
        })
        .collect()
}

#[test]
fn cef_leef_and_json_reach_rsyslog_intact() {
    support::require_broker();
    let rsyslog = Rsyslog::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = [("cef", "tcp", rsyslog.tcp), ("leef", "udp", rsyslog.udp), ("json", "tcp", rsyslog.tcp)];
    let mut connectors = Vec::new();
    let mut sent: Vec<Alert> = Vec::new();
    for (format, transport, port) in runs {
        let topic = unique(&format!("syslog.{format}.alerts"));
        create_topics(&[&topic], 1);
        let batch = alerts(format, 40);
        produce_all(&topic, &batch.iter().map(|a| (a.id.clone(), avro::encode_alert(a).unwrap())).collect::<Vec<_>>());
        sent.extend(batch);
        let body = format!("[syslog]\ntransport = \"{transport}\"\naddress = \"127.0.0.1:{port}\"\nformat = \"{format}\"\nhostname = \"tp-test\"\nfacility = 13\n");
        connectors.push(support::start_connector(format, &support::connector_file(dir.path(), &format!("syslog-{format}"), &topic, "", &body)));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while rsyslog.lines().len() < sent.len() {
        assert!(Instant::now() < deadline, "rsyslog wrote {} of {} lines", rsyslog.lines().len(), sent.len());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(connectors);
    let lines = rsyslog.lines();
    assert_eq!(lines.len(), sent.len(), "one line per alert (nothing split by an unescaped line break)");
    let by_id = |id: &str| sent.iter().find(|a| a.id == id).unwrap_or_else(|| panic!("unknown alert {id}"));
    let mut seen = std::collections::HashSet::new();
    for line in &lines {
        // version|pri|hostname|app|msgid|sd|msg
        let fields: Vec<&str> = line.splitn(7, '|').collect();
        assert_eq!(fields[0], "1", "parsed as RFC 5424: {line}");
        assert_eq!((fields[2], fields[3], fields[4]), ("tp-test", "threatpipe", "alert"), "{line}");
        // Structured data: alertId, and the tenant with ", ] and \ escaped.
        let sd = fields[5];
        let id = sd.split("alertId=\"").nth(1).unwrap().split('"').next().unwrap();
        let alert = by_id(id);
        let severity = if alert.severity == Severity::Critical { "2" } else { "3" };
        assert_eq!(fields[1], (13 * 8 + severity.parse::<u32>().unwrap()).to_string());
        let escaped_tenant = alert.tenant.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
        assert!(sd.contains(&format!("tenant=\"{escaped_tenant}\"")), "{sd}");
        let msg = fields[6].trim_start();
        assert!(seen.insert(id.to_string()), "{id} twice");
        if let Some(cef) = msg.strip_prefix("CEF:") {
            let header = split_unescaped(cef, '|', 8);
            assert_eq!(header.len(), 8, "{msg}");
            assert_eq!(&header[..3], ["0", "threatpipe", "threatpipe"]);
            assert_eq!(unescape(&header[4]), alert.rule_ids[0]);
            assert_eq!(unescape(&header[5]), alert.title);
            assert_eq!(header[6], if alert.severity == Severity::Critical { "10" } else { "8" });
            let ext = cef_extension(&header[7]);
            let get = |k: &str| ext.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{k} missing in {msg}"));
            assert_eq!(get("externalId"), alert.id);
            assert_eq!(get("cs1"), alert.tenant);
            assert_eq!(get("cs2"), alert.entity);
            assert_eq!(get("cs3"), alert.rule_ids.join(","));
            assert_eq!(get("cnt"), alert.count.to_string());
            assert_eq!(get("msg"), *alert.summary.as_ref().unwrap());
        } else if let Some(leef) = msg.strip_prefix("LEEF:") {
            let header = split_unescaped(leef, '|', 7);
            assert_eq!(&header[..5], ["2.0", "threatpipe", "threatpipe", env!("CARGO_PKG_VERSION"), &alert.rule_ids[0].replace('|', "\\|")]);
            assert_eq!(header[5], "x09");
            let attrs: Vec<(String, String)> = split_unescaped(&header[6], '\t', usize::MAX)
                .into_iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), unescape(v))
                })
                .collect();
            let get = |k: &str| attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{k} missing"));
            assert_eq!(get("name"), alert.title);
            assert_eq!(get("tenant"), alert.tenant);
            assert_eq!(get("entity"), alert.entity);
            assert_eq!(get("msg"), *alert.summary.as_ref().unwrap());
            assert_eq!(get("sev"), if alert.severity == Severity::Critical { "10" } else { "8" });
        } else {
            let parsed: Alert = serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
            assert_eq!(&parsed, alert);
        }
    }
    assert_eq!(seen.len(), sent.len());
}

#[test]
fn every_shipped_connector_file_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors");
    let files = support::files_under(&dir, &|p| p.extension().is_some_and(|e| e == "toml"));
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let output = Command::new(env!("CARGO_BIN_EXE_threatpipe")).args(["connect", "--check"]).arg(&file).output().unwrap();
        assert!(output.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&output.stderr));
    }
    // A mistake is reported with the file and the reason.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "name = \"x\"\n[webhook]\nurl = \"ftp://example.test\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_threatpipe")).args(["connect", "--check"]).arg(bad.path()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected an http:// or https:// URL"), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn syslog_over_tls_reaches_rsyslog_and_an_unknown_ca_is_refused() {
    support::require_broker();
    let rsyslog = Rsyslog::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let ca = rsyslog.dir.path().join("ca.pem");
    let topic = unique("syslog.tls.alerts");
    create_topics(&[&topic], 1);
    let sent = alerts("tls", 30);
    produce_all(&topic, &sent.iter().map(|a| (a.id.clone(), avro::encode_alert(a).unwrap())).collect::<Vec<_>>());
    let body = format!("[syslog]\ntransport = \"tls\"\naddress = \"127.0.0.1:{}\"\nformat = \"cef\"\nhostname = \"tp-test\"\n", rsyslog.tcp);
    // Without the test CA the server's certificate is not trusted: nothing is sent, and
    // the failure is retried (and logged), not skipped.
    let untrusted = support::start_connector("tls-untrusted", &support::connector_file(dir.path(), "tls-untrusted", &topic, "[retry]\ninitial = \"100ms\"\nmax = \"200ms\"", &body));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !untrusted.log_text().contains("delivery failed; retrying") {
        assert!(Instant::now() < deadline, "no retry logged:\n{}", untrusted.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(untrusted.log_text().contains("tls 127.0.0.1"), "{}", untrusted.log_text());
    drop(untrusted);
    assert!(rsyslog.lines().is_empty());
    let trusted = format!("[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"", ca.display());
    let connector = support::start_connector("tls", &support::connector_file(dir.path(), "tls", &topic, &trusted, &body));
    let deadline = Instant::now() + Duration::from_secs(60);
    while rsyslog.lines().len() < sent.len() {
        assert!(Instant::now() < deadline, "rsyslog wrote {} of {} lines; connector log:\n{}", rsyslog.lines().len(), sent.len(), connector.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids: std::collections::HashSet<String> = rsyslog
        .lines()
        .iter()
        .map(|l| l.split("alertId=\"").nth(1).unwrap().split('"').next().unwrap().to_string())
        .collect();
    assert_eq!(ids, sent.iter().map(|a| a.id.clone()).collect());
}
