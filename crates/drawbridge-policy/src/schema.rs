//! The Cedar schema policies are checked against: a fixed part, and the parts the
//! configuration adds (principal attributes, path parameters, selected query parameters and
//! headers).

use std::collections::BTreeMap;
use std::fmt::Write;

use drawbridge_config::{Config, ValueType};

use crate::Action;

/// The schema for `config`, in Cedar's schema syntax.
pub fn text(config: &Config) -> String {
    let mut params = BTreeMap::new();
    let mut query = BTreeMap::new();
    let mut headers = BTreeMap::new();
    for r in config.routes.iter().filter(|r| r.authorizes()) {
        for p in &r.params {
            params.insert(p.clone(), ValueType::String);
        }
        for (q, t) in &r.context.query {
            // Two routes may read one name as different types; the check of their policies
            // would then fail on one of them, so the first type stays and the config check
            // reports the clash.
            query.entry(q.clone()).or_insert(*t);
        }
        for h in &r.context.headers {
            headers.insert(h.clone(), ValueType::String);
        }
    }
    let attributes: BTreeMap<String, ValueType> = config
        .policy
        .as_ref()
        .map(|p| p.attributes.iter().cloned().collect())
        .unwrap_or_default();

    let mut s = String::new();
    s.push_str(HEADER);
    let mut attrs = String::from("  id: String,\n  authenticator: String,\n  issuer?: String,\n");
    for (name, t) in &attributes {
        let _ = writeln!(attrs, "  {}?: {},", quote(name), t.as_str());
    }
    for ty in ["User", "Service", "ApiKey"] {
        let _ = writeln!(s, "entity {ty} in [Group] {{\n{attrs}}};");
    }
    s.push_str("// The caller of a public route that asks its policies.\nentity Anonymous;\n");
    s.push('\n');
    record(&mut s, "Params", &params);
    record(&mut s, "Query", &query);
    record(&mut s, "Headers", &headers);
    s.push_str(CONTEXTS);
    let _ = write!(s, "type Http = {{\n{HTTP_FIELDS}}};\n");
    let _ = write!(
        s,
        "type Grpc = {{\n{HTTP_FIELDS}  grpc: {{ service: String, method: String }},\n}};\n\n"
    );
    let methods = |group: &str| -> String {
        Action::ALL
            .iter()
            .filter(|a| a.group() == Some(group) && **a != Action::Grpc)
            .map(|a| format!("\"{}\"", a.id()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let applies = |context: &str| {
        format!(
            "appliesTo {{\n  principal: [User, Service, ApiKey, Anonymous],\n  resource: [Route],\n  context: {context}\n}};\n"
        )
    };
    s.push_str("action read, write;\n");
    let _ = write!(
        s,
        "action {} in [read] {}",
        methods("read"),
        applies("Http")
    );
    let _ = write!(
        s,
        "action {} in [write] {}",
        methods("write"),
        applies("Http")
    );
    let _ = write!(s, "action \"CONNECT\", \"TRACE\" {}", applies("Http"));
    let _ = write!(s, "action \"connect\" {}", applies("Http"));
    let _ = write!(s, "action \"grpc\" in [write] {}", applies("Grpc"));
    s
}

const HEADER: &str = "\
// The schema Drawbridge checks policies against (docs/policy.md).
entity Group;
entity Upstream;
entity Route in [Upstream];

";

const CONTEXTS: &str = "\
type Factors = {
  // Seconds since each second factor was proved (absent: never in this session).
  totp?: Long,
  webauthn?: Long,
  recovery_code?: Long,
  idp?: Long,
};
type Authn = {
  // How the caller proved who it is: \"jwt\", \"api_key\", \"mtls\", \"oidc\".
  methods: Set<String>,
  // Seconds since it authenticated, when its credential says.
  age?: Long,
  // The second factors it proved: \"totp\", \"webauthn\", \"recovery_code\", \"idp\".
  mfa: Set<String>,
  // Seconds since its latest second factor, when it has one.
  mfa_age?: Long,
  // Each second factor's age.
  factors: Factors,
};
";

/// The context of every action; gRPC calls add their service and method.
const HTTP_FIELDS: &str = concat!(
    "  path: String,\n",
    "  host: String,\n",
    "  method: String,\n",
    "  params: Params,\n",
    "  query: Query,\n",
    "  headers: Headers,\n",
    "  ip: ipaddr,\n",
    "  time: datetime,\n",
    "  authn: Authn,\n",
);

fn record(s: &mut String, name: &str, fields: &BTreeMap<String, ValueType>) {
    let _ = writeln!(s, "type {name} = {{");
    for (f, t) in fields {
        let _ = writeln!(s, "  {}?: {},", quote(f), t.as_str());
    }
    s.push_str("};\n");
}

/// A record attribute name, quoted unless it is a plain identifier.
fn quote(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain && !RESERVED.contains(&name) {
        name.to_string()
    } else {
        format!("\"{name}\"")
    }
}

/// Words the schema syntax keeps for itself.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "if",
    "then",
    "else",
    "in",
    "is",
    "like",
    "has",
    "__cedar",
    "type",
    "entity",
    "action",
    "namespace",
    "appliesTo",
    "principal",
    "resource",
    "context",
];
