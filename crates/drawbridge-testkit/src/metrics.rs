//! Metrics as Prometheus itself reads them: the text is parsed by the Prometheus project's
//! Python client (`python3-prometheus-client`), with its OpenMetrics parser and its
//! Prometheus text parser, never by a parser of our own.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// Each sample, by `name{label="value",...}` with the labels sorted by name.
#[derive(Debug, Default)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    /// The value of `name` with exactly `labels`; `None` when there is no such sample.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(&key(name, labels)).copied()
    }

    /// The value of `name` with exactly `labels`, or 0 when it is absent (a counter that
    /// never moved).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<_> = labels.to_vec();
    l.sort();
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

const PARSE: &str = r##"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as prom
text = sys.stdin.read()
out = {}
for fam in om(text):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
# The classic text parser must read it too (what older scrapers use).
classic = sum(len(f.samples) for f in prom(text.replace("# EOF\n", "")))
print(json.dumps({"samples": out, "classic": classic}))
"##;

/// Parses `text` with both of the Prometheus client's parsers; panics with the parser's
/// own error when either refuses it.
pub fn parse(text: &str) -> Samples {
    let out = fed(
        Command::new("/usr/bin/python3").args(["-c", PARSE]),
        text,
        "Debian's python3 (with python3-prometheus-client)",
    );
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics:\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser output");
    let samples: BTreeMap<String, f64> =
        serde_json::from_value(v["samples"].clone()).expect("samples");
    assert_eq!(
        v["classic"].as_u64(),
        Some(samples.len() as u64),
        "the classic parser read a different number of samples"
    );
    Samples(samples)
}

/// `promtool check metrics` on `text` (Prometheus's own linter); its complaints, empty
/// when it has none.
pub fn lint(text: &str) -> String {
    let out = fed(
        Command::new("promtool").args(["check", "metrics"]),
        text,
        "promtool (Debian's prometheus package)",
    );
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        String::new()
    } else {
        said
    }
}

/// Runs `cmd` with `text` on its standard input; what it did.
fn fed(cmd: &mut Command, text: &str, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    child.wait_with_output().expect("it ran")
}
