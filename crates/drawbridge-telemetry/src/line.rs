//! The events recorded for every request write their own JSON lines, field by field, into
//! the line they are appended from. serde_json's derived serializer escapes every key and
//! every value a byte at a time; these keys are this crate's constants and most values never
//! need escaping (ids, times, names from the configuration, paths in normal form), so a value
//! is scanned once, whole, for the bytes JSON escapes, and only a value that has one is
//! handed to serde_json to escape. The lines are byte for byte what serde_json writes for
//! the same events (`serde::Serialize` is still derived for them, and the tests hold the two
//! to each other).

use std::io;
use std::time::SystemTime;

use serde::Serialize;

use crate::{AccessEvent, AuditEvent, AuditMfa, AuditPrincipal, AuditShadow, Phase};

/// An event a [`crate::JsonLog`] writes: one JSON object on one line.
pub trait Line: Serialize {
    /// Writes the event as one JSON object into `out`. By default as serde_json writes it;
    /// the events every request records write themselves (this module).
    fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
        serde_json::to_writer(out, self).map_err(io::Error::from)
    }
}

/// A field's key as it is written when it opens its object: `"name":`.
macro_rules! first {
    ($name:literal) => {
        concat!("\"", $name, "\":")
    };
}

/// A field's key as it is written after another field: `,"name":`.
macro_rules! then {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// A JSON object being written into a line. Keys come whole, punctuation included (made by
/// `first!` and `then!`), and the writing methods are inlined where they are called:
/// each key is then copied as the constant it is.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// The first error met (serde_json escaping a value into a `Vec` has none to report).
    error: Option<io::Error>,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, error: None }
    }

    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        debug_assert!(key.ends_with("\":") && !key[..key.len() - 2].contains('\\'));
        self.out.extend_from_slice(key.as_bytes());
    }

    #[inline(always)]
    fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        if let Err(e) = string(self.out, value) {
            self.error.get_or_insert(e);
        }
    }

    /// A field that is `null` when absent.
    #[inline(always)]
    fn str_or_null(&mut self, key: &'static str, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    /// A field that is left out when absent.
    #[inline(always)]
    fn str_if(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    #[inline(always)]
    fn u64(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline(always)]
    fn u64_if(&mut self, key: &'static str, value: Option<u64>) {
        if let Some(v) = value {
            self.u64(key, v);
        }
    }

    #[inline(always)]
    fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    #[inline(always)]
    fn strs<S: AsRef<str>>(&mut self, key: &'static str, values: &[S]) {
        self.key(key);
        self.list(values);
    }

    fn list<S: AsRef<str>>(&mut self, values: &[S]) {
        self.out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            if let Err(e) = string(self.out, v.as_ref()) {
                self.error.get_or_insert(e);
            }
        }
        self.out.push(b']');
    }

    /// A list that is left out when empty.
    #[inline(always)]
    fn strs_if_any<S: AsRef<str>>(&mut self, key: &'static str, values: &[S]) {
        if !values.is_empty() {
            self.strs(key, values);
        }
    }

    /// A time in RFC 3339 (its digits need no escaping), `null` when it has none.
    #[inline(always)]
    fn time(&mut self, key: &'static str, t: SystemTime) {
        self.key(key);
        let mut text = [0u8; crate::STAMP];
        if crate::write_stamp(t, &mut text) {
            self.out.push(b'"');
            self.out.extend_from_slice(&text);
            self.out.push(b'"');
        } else {
            self.out.extend_from_slice(b"null");
        }
    }

    /// A nested object, written by `fill`.
    fn object(&mut self, key: &'static str, fill: impl FnOnce(&mut Object<'_>)) {
        self.key(key);
        let mut inner = Object::new(self.out);
        fill(&mut inner);
        let error = inner.end().err();
        if let Some(e) = error {
            self.error.get_or_insert(e);
        }
    }

    fn end(self) -> io::Result<()> {
        self.out.push(b'}');
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Whether JSON escapes any of `bytes` (as serde_json does: the control characters, the
/// quote and the backslash). Branch-free per byte, so the compiler vectorises it.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// `value` as a JSON string: copied as it is when nothing in it is escaped, escaped by
/// serde_json otherwise.
fn string(out: &mut Vec<u8>, value: &str) -> io::Result<()> {
    if needs_escape(value.as_bytes()) {
        return serde_json::to_writer(out, value).map_err(io::Error::from);
    }
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
    Ok(())
}

impl Phase {
    /// The phase's name in the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accept => "accept",
            Phase::Parse => "parse",
            Phase::Sanitize => "sanitize",
            Phase::Route => "route",
            Phase::Authenticate => "authenticate",
            Phase::Verify => "verify",
            Phase::Authorize => "authorize",
            Phase::Mutate => "mutate",
            Phase::Forward => "forward",
            Phase::Record => "record",
            Phase::Block => "block",
        }
    }
}

impl Line for AccessEvent {
    fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut o = Object::new(out);
        o.time(first!("time"), self.time);
        o.str(then!("request_id"), self.request_id.as_str());
        o.str_if(then!("trace_id"), self.trace_id.as_deref());
        o.str(then!("listener"), &self.listener);
        o.str_or_null(then!("host"), self.host.as_deref());
        o.str_or_null(then!("route"), self.route.as_deref());
        o.str(then!("client"), &self.client);
        o.str_if(then!("forwarded_for"), self.forwarded_for.as_deref());
        o.str_if(then!("principal"), self.principal.as_deref());
        o.str(then!("method"), &self.method);
        o.str(then!("path"), &self.path);
        o.str(then!("protocol"), self.protocol);
        o.u64(then!("status"), self.status.into());
        o.u64_if(then!("grpc_status"), self.grpc_status.map(u64::from));
        o.u64(then!("bytes_sent"), self.bytes_sent);
        o.u64_if(then!("bytes_received"), self.bytes_received);
        o.str_or_null(then!("upstream"), self.upstream.as_deref());
        o.u64(then!("duration_us"), self.duration_us);
        o.str_if(then!("phase"), self.phase.map(Phase::as_str));
        o.str_if(then!("reason"), self.reason.as_deref());
        o.end()
    }
}

impl Line for AuditEvent<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut o = Object::new(out);
        o.time(first!("time"), self.time);
        o.str(then!("log"), self.log);
        o.str(then!("request_id"), &self.request_id);
        o.str_if(then!("trace_id"), self.trace_id.as_deref());
        o.str(then!("version"), &self.version);
        o.object(then!("principal"), |p| principal(p, &self.principal));
        o.str(then!("action"), self.action);
        o.str(then!("resource"), &self.resource);
        o.str(then!("upstream"), &self.upstream);
        o.str(then!("path"), &self.path);
        o.str(then!("client"), &self.client);
        o.str(then!("decision"), self.decision);
        o.str_if(then!("reason"), self.reason.as_deref());
        o.strs(then!("policies"), &self.policies);
        o.strs_if_any(then!("errors"), &self.errors);
        if let Some(s) = &self.shadow {
            o.object(then!("shadow"), |o| shadow(o, s));
        }
        if let Some(m) = &self.mfa {
            o.object(then!("mfa"), |o| mfa(o, m));
        }
        o.end()
    }
}

fn principal(o: &mut Object<'_>, p: &AuditPrincipal<'_>) {
    o.str(first!("id"), &p.id);
    o.str(then!("kind"), p.kind);
    o.str(then!("authenticator"), &p.authenticator);
    o.strs(then!("groups"), &p.groups);
}

fn shadow(o: &mut Object<'_>, s: &AuditShadow<'_>) {
    o.str(first!("decision"), s.decision);
    o.strs(then!("policies"), &s.policies);
    o.strs_if_any(then!("errors"), &s.errors);
    o.bool(then!("disagrees"), s.disagrees);
}

fn mfa(o: &mut Object<'_>, m: &AuditMfa) {
    o.strs(first!("required"), &m.required);
    o.u64_if(then!("max_age"), m.max_age);
    o.str_if(then!("presented"), m.presented);
    o.u64_if(then!("age"), m.age);
    o.bool(then!("satisfied"), m.satisfied);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::RequestId;

    /// `Cow` slices of owned strings, as events hold them.
    fn owned(values: &[&str]) -> Cow<'static, [String]> {
        Cow::Owned(values.iter().map(|s| s.to_string()).collect())
    }

    /// What a line writes, and what serde_json writes for the same event.
    fn both<T: Line>(event: &T) -> (String, String) {
        let mut line = Vec::new();
        event.write_json(&mut line).expect("written");
        let line = String::from_utf8(line).expect("UTF-8");
        let serde = serde_json::to_string(event).expect("serialized");
        (line, serde)
    }

    /// Strings that need escaping, and some that look as if they might: every ASCII byte
    /// alone, quotes and backslashes between text, multi-byte characters (which JSON takes
    /// as they are, the line and paragraph separators included).
    fn hostile() -> Vec<String> {
        let mut all: Vec<String> = (0u8..=0x7f).map(|b| char::from(b).to_string()).collect();
        all.extend(
            [
                "",
                "plain",
                "a\"b",
                "a\\b",
                "\\\"",
                "line\nbreak\r\n",
                "tab\there",
                "nul\0byte",
                "\u{7f}del",
                "\u{1b}[31mred",
                "caf\u{e9}",
                "\u{2028}\u{2029}",
                "\u{1f600} emoji",
                "</script><script>alert(1)</script>",
                "{\"forged\":true}",
            ]
            .map(String::from),
        );
        all.push("x".repeat(1000) + "\"" + &"y".repeat(1000));
        all
    }

    fn access(s: &str, full: bool) -> AccessEvent {
        AccessEvent {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_796_235_580, 297_895_000),
            request_id: RequestId::new(s).unwrap_or_default(),
            trace_id: full.then(|| s.to_string()),
            listener: Arc::from(s),
            host: full.then(|| Arc::from(s)),
            route: full.then(|| Arc::from(s)),
            client: Arc::from(s),
            forwarded_for: full.then(|| s.to_string()),
            principal: full.then(|| s.to_string()),
            method: Cow::Owned(s.to_string()),
            path: s.to_string(),
            protocol: "HTTP/1.1",
            status: 503,
            grpc_status: full.then_some(14),
            bytes_sent: u64::MAX,
            bytes_received: full.then_some(0),
            upstream: full.then(|| Arc::from(s)),
            duration_us: 459,
            phase: full.then_some(Phase::Forward),
            reason: full.then(|| s.to_string()),
        }
    }

    fn audit(s: &str, full: bool) -> AuditEvent<'static> {
        let list = if full {
            owned(&[s, "b", s])
        } else {
            owned(&[])
        };
        AuditEvent {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_796_235_580, 1_000),
            log: "audit",
            request_id: Cow::Owned(s.to_string()),
            trace_id: full.then(|| Cow::Owned(s.to_string())),
            version: Cow::Owned(s.to_string()),
            principal: AuditPrincipal {
                id: Cow::Owned(s.to_string()),
                kind: "user",
                authenticator: Cow::Owned(s.to_string()),
                groups: list.clone(),
            },
            action: "GET",
            resource: Cow::Owned(s.to_string()),
            upstream: Cow::Owned(s.to_string()),
            path: Cow::Owned(s.to_string()),
            client: Cow::Owned(s.to_string()),
            decision: "deny",
            reason: full.then(|| Cow::Owned(s.to_string())),
            policies: list.clone(),
            errors: list.clone(),
            shadow: full.then(|| AuditShadow {
                decision: "allow",
                policies: list.clone(),
                errors: list.clone(),
                disagrees: true,
            }),
            mfa: full.then(|| AuditMfa {
                required: vec!["totp", "webauthn"],
                max_age: Some(300),
                presented: Some("totp"),
                age: Some(0),
                satisfied: false,
            }),
        }
    }

    /// Every field, present or absent, with every kind of string in it: the line is what
    /// serde_json writes for the event, byte for byte, and it reads back as one object with
    /// the string intact (nothing breaks out of its field).
    #[test]
    fn lines_are_what_serde_json_writes() {
        for s in hostile() {
            for full in [true, false] {
                let (line, serde) = both(&access(&s, full));
                assert_eq!(line, serde, "access event, {s:?}, all fields: {full}");
                let read: serde_json::Value = serde_json::from_str(&line).expect("JSON");
                assert_eq!(read["path"], s.as_str());
                let (line, serde) = both(&audit(&s, full));
                assert_eq!(line, serde, "audit event, {s:?}, all fields: {full}");
                let read: serde_json::Value = serde_json::from_str(&line).expect("JSON");
                assert_eq!(read["principal"]["id"], s.as_str());
            }
        }
    }

    proptest::proptest! {
        /// Any string, in every field a string goes in: the line is serde_json's.
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            for full in [true, false] {
                let (line, serde) = both(&access(&s, full));
                proptest::prop_assert_eq!(line, serde);
                let (line, serde) = both(&audit(&s, full));
                proptest::prop_assert_eq!(line, serde);
            }
        }
    }

    /// A time RFC 3339 cannot write (before 1970, past 9999) is `null`, in both: the event
    /// is written, and nothing panics on a clock gone wrong.
    #[test]
    fn times_out_of_rfc3339s_range_are_null() {
        for time in [
            SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 1),
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
        ] {
            let (line, serde) = both(&AccessEvent {
                time,
                ..access("t", false)
            });
            assert_eq!(line, serde);
            assert!(line.starts_with("{\"time\":null,"), "{line}");
            let (line, serde) = both(&AuditEvent {
                time,
                ..audit("t", false)
            });
            assert_eq!(line, serde);
            assert!(line.starts_with("{\"time\":null,"), "{line}");
        }
    }
}
