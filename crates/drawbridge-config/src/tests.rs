use std::path::Path;

use super::*;

fn check(src: &str) -> Result<Config, Diagnostics> {
    parse(Path::new("/etc/drawbridge/test.toml"), src)
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match check(src) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.0,
    }
}

const BASE: &str = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:8080"

[[upstreams]]
name = "app"
endpoints = ["http://127.0.0.1:9000"]
"#;

#[test]
fn minimal_config_compiles() {
    let cfg = check(&format!(
        "{BASE}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n"
    ))
    .expect("valid");
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].path, PathMatch::Prefix("/".into()));
    assert_eq!(cfg.upstreams[0].endpoints[0].url(), "http://127.0.0.1:9000");
}

#[test]
fn unknown_field_names_file_line_and_field() {
    let src = format!(
        "{BASE}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\nupstrem = \"x\"\n"
    );
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].location.file, Path::new("/etc/drawbridge/test.toml"));
    assert_eq!(e[0].location.line, 15, "{}", e[0]);
    assert_eq!(e[0].field, "routes[0].upstrem");
    assert!(
        e[0].message.contains("unknown field `upstrem`"),
        "{}",
        e[0].message
    );
}

#[test]
fn missing_upstream_is_reported_at_its_reference() {
    let src = format!(
        "{BASE}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"nope\"\npublic = true\n"
    );
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "routes[0].upstream");
    assert_eq!(e[0].location.line, 13);
    assert!(e[0].message.contains("`nope`"));
    assert!(e[0].help.as_deref().unwrap_or("").contains("`app`"));
}

#[test]
fn route_without_admission_is_an_error() {
    let e = errors(&format!(
        "{BASE}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\n"
    ));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "routes[0]");
    assert!(e[0].message.contains("admitted"));
}

#[test]
fn duplicate_names_and_overlapping_routes_are_errors() {
    let src = format!(
        "{BASE}\n[[upstreams]]\nname = \"app\"\nendpoints = [\"http://127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"a\"\nprefix = \"/api\"\nupstream = \"app\"\npublic = true\nmethods = [\"GET\", \"POST\"]\n\
         [[routes]]\nname = \"b\"\nprefix = \"/api/\"\nupstream = \"app\"\npublic = true\nmethods = [\"post\"]\n\
         [[routes]]\nname = \"c\"\nprefix = \"/api\"\nupstream = \"app\"\npublic = true\nmethods = [\"DELETE\"]\n"
    );
    let e = errors(&src);
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["upstreams[1].name", "routes[1]"], "{e:?}");
    assert!(
        e[1].message.contains("overlaps route `a`"),
        "{}",
        e[1].message
    );
    assert!(e[1].message.contains("`POST`"));
}

#[test]
fn disjoint_methods_on_one_path_are_fine() {
    let src = format!(
        "{BASE}\n[[routes]]\nname = \"a\"\npath = \"/x\"\nupstream = \"app\"\npublic = true\nmethods = [\"GET\"]\n\
         [[routes]]\nname = \"b\"\npath = \"/x\"\nupstream = \"app\"\npublic = true\nmethods = [\"POST\"]\n"
    );
    check(&src).expect("valid");
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let src = r#"
[server]
shutdown_timeout = "soon"
trusted_proxies = ["10.0.0.0/8", "not-an-ip"]

[[listeners]]
name = "bad name!"
address = "localhost"

[[upstreams]]
name = "app"
endpoints = ["ftp://x", "http://127.0.0.1:9000/path"]
balance = "random"

[[routes]]
name = "r"
prefix = "/a/../b"
upstream = "app"
public = true
strip_prefix = true
"#;
    let e = errors(src);
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "server.shutdown_timeout",
            "server.trusted_proxies[1]",
            "listeners[0].name",
            "listeners[0].address",
            "upstreams[0].endpoints[0]",
            "upstreams[0].endpoints[1]",
            "upstreams[0].balance",
            "routes[0].prefix",
        ]
    );
    assert_eq!(e[3].location.line, 8);
}

#[test]
fn reserved_prefix_cannot_be_routed() {
    let e = errors(&format!(
        "{BASE}\n[[routes]]\nname = \"r\"\nprefix = \"/.drawbridge/x\"\nupstream = \"app\"\npublic = true\n"
    ));
    assert!(e[0].message.contains("reserved"));
}

#[test]
fn syntax_errors_have_a_line() {
    let e = errors("[[listeners]\nname = 1\n");
    assert_eq!(e[0].location.line, 1);
}

#[test]
fn wrong_type_names_the_field() {
    let e = errors(&format!(
        "{BASE}\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\npublic = \"yes\"\n"
    ));
    assert_eq!(e[0].field, "routes[0].public");
    assert_eq!(e[0].location.line, 14);
}

#[test]
fn host_patterns() {
    assert_eq!(
        compile::host_pattern("API.example.com"),
        Ok(HostMatch::Exact("api.example.com".into()))
    );
    assert_eq!(
        compile::host_pattern("*.example.com"),
        Ok(HostMatch::Suffix("example.com".into()))
    );
    assert!(compile::host_pattern("a..b").is_err());
    assert!(compile::host_pattern("a.b:80").is_err());
    assert!(compile::host_pattern("*.10.0.0.1").is_err());
}

#[test]
fn prefix_matching_is_on_segment_boundaries() {
    let p = PathMatch::Prefix("/api".into());
    assert!(p.matches("/api"));
    assert!(p.matches("/api/x"));
    assert!(!p.matches("/apix"));
    assert!(PathMatch::Prefix("/".into()).matches("/anything"));
}

const JWT: &str = r#"
[[authenticators]]
name = "corp"
type = "jwt"
issuer = "https://idp.example.com/"
audiences = ["drawbridge"]
jwks_url = "https://idp.example.com/.well-known/jwks.json"
"#;

fn route(admission: &str) -> String {
    format!("\n[[routes]]\nname = \"api\"\nprefix = \"/\"\nupstream = \"app\"\n{admission}\n")
}

#[test]
fn a_jwt_authenticator_compiles_with_safe_defaults() {
    let cfg = check(&format!(
        "{BASE}{JWT}{}",
        route("authenticate = [\"corp\"]\nauthorize = false")
    ))
    .expect("valid");
    let AuthenticatorKind::Jwt(j) = &cfg.authenticators[0].kind else {
        panic!("a jwt authenticator")
    };
    assert_eq!(j.algorithms, ["RS256", "ES256"]);
    assert_eq!(j.claims.id, "sub");
    assert!(j.cache);
    assert_eq!(j.leeway, std::time::Duration::from_secs(30));
    let JwksSource::Url(u) = &j.jwks else {
        panic!("url source")
    };
    assert_eq!(
        (u.tls, u.host.as_str(), u.port),
        (true, "idp.example.com", 443)
    );
    assert_eq!(u.path, "/.well-known/jwks.json");
    assert_eq!(
        cfg.routes[0].admission,
        Admission::Authenticated {
            authenticators: vec![0],
            pass_credentials: false,
            authorization: Authorization::Unchecked,
        }
    );
}

#[test]
fn shared_secret_and_none_algorithms_are_refused_by_name() {
    let src = format!(
        "{BASE}{}{}",
        JWT.replace(
            "audiences",
            "algorithms = [\"RS256\", \"HS256\", \"none\"]\naudiences"
        ),
        route("authenticate = [\"corp\"]\nauthorize = false")
    );
    let e = errors(&src);
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "authenticators[0].algorithms[1]",
            "authenticators[0].algorithms[2]"
        ]
    );
    assert!(e[0].message.contains("shared-secret"), "{}", e[0]);
    assert!(e[1].message.contains("never accepted"), "{}", e[1]);
    assert_eq!(e[0].location.line, 14, "{}", e[0]);
}

#[test]
fn jwks_must_be_fetched_over_tls_except_from_loopback() {
    for (url, ok) in [
        ("http://idp.example.com/jwks.json", false),
        ("http://10.0.0.1/jwks.json", false),
        ("ftp://idp.example.com/jwks.json", false),
        ("https://user@idp.example.com/jwks.json", false),
        ("http://127.0.0.1:8080/jwks.json", true),
        ("http://localhost/jwks.json", true),
        ("https://[::1]:8443/k", true),
    ] {
        let src = format!(
            "{BASE}{}{}",
            JWT.replace("https://idp.example.com/.well-known/jwks.json", url),
            route("authenticate = [\"corp\"]\nauthorize = false")
        );
        match check(&src) {
            Ok(_) => assert!(ok, "{url} accepted"),
            Err(d) => {
                assert!(!ok, "{url} refused: {d}");
                assert_eq!(d.0[0].field, "authenticators[0].jwks_url");
            }
        }
    }
}

#[test]
fn a_jwt_authenticator_needs_issuer_audiences_and_keys() {
    let src = format!(
        "{BASE}\n[[authenticators]]\nname = \"corp\"\ntype = \"jwt\"\n{}",
        route("authenticate = [\"corp\"]\nauthorize = false")
    );
    let e = errors(&src);
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "authenticators[0].issuer",
            "authenticators[0].audiences",
            "authenticators[0].jwks_url"
        ]
    );
}

#[test]
fn leeway_is_bounded_and_unknown_types_are_named() {
    let src = format!(
        "{BASE}{}{}",
        JWT.replace("audiences", "leeway = \"1h\"\naudiences"),
        route("authenticate = [\"corp\"]\nauthorize = false")
    );
    let e = errors(&src);
    assert_eq!(e[0].field, "authenticators[0].leeway");
    let src = format!(
        "{BASE}{}{}",
        JWT.replace("type = \"jwt\"", "type = \"saml\""),
        route("public = true")
    );
    let e = errors(&src);
    assert_eq!(e[0].field, "authenticators[0].type");
    assert!(e[0].message.contains("`saml`"));
}

#[test]
fn routes_name_known_authenticators_and_one_admission() {
    let cases = [
        (
            "authenticate = [\"nope\"]",
            "routes[0].authenticate[0]",
            "no authenticator is named `nope`",
        ),
        (
            "authenticate = []",
            "routes[0].authenticate",
            "admits nobody",
        ),
        (
            "authenticate = [\"corp\", \"corp\"]",
            "routes[0].authenticate[1]",
            "listed twice",
        ),
        (
            "public = true\nauthenticate = [\"corp\"]",
            "routes[0].public",
            "not both",
        ),
        (
            "public = true\npass_credentials = true",
            "routes[0].pass_credentials",
            "public route",
        ),
        ("public = false", "routes[0].public", "names no way"),
        ("", "routes[0]", "does not say how callers are admitted"),
    ];
    for (admission, field, message) in cases {
        let e = errors(&format!("{BASE}{JWT}{}", route(admission)));
        assert_eq!(e.len(), 1, "{admission}: {e:?}");
        assert_eq!(e[0].field, field, "{admission}");
        assert!(e[0].message.contains(message), "{admission}: {}", e[0]);
    }
}

#[test]
fn a_missing_jwks_file_names_the_path() {
    let src = format!(
        "{BASE}{}{}",
        JWT.replace(
            "jwks_url = \"https://idp.example.com/.well-known/jwks.json\"",
            "jwks_file = \"no-such-jwks.json\""
        ),
        route("authenticate = [\"corp\"]\nauthorize = false")
    );
    let e = errors(&src);
    assert_eq!(e[0].field, "authenticators[0].jwks_file");
    assert!(
        e[0].message.contains("/etc/drawbridge/no-such-jwks.json"),
        "{}",
        e[0]
    );
}

#[test]
fn identity_settings_default_and_are_checked() {
    let cfg = check(&format!("{BASE}{}", route("public = true"))).expect("valid");
    assert_eq!(cfg.identity.issuer, "drawbridge");
    assert_eq!(cfg.identity.algorithm, AssertionAlgorithm::Es256);
    assert_eq!(cfg.identity.header, "x-drawbridge-identity");
    assert_eq!(cfg.identity.lifetime, std::time::Duration::from_secs(60));
    assert!(cfg.identity.key.is_none() && !cfg.identity.per_request);
    let e = errors(&format!(
        "{BASE}\n[identity]\nalgorithm = \"HS256\"\nheader = \"Host\"\nkey_file = \"missing.pem\"\n{}",
        route("public = true")
    ));
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["identity.algorithm", "identity.key_file", "identity.header"]
    );
    let e = errors(&format!(
        "{BASE}{}",
        route("public = true\nidentity_headers = true")
    ));
    assert_eq!(e[0].field, "routes[0].identity_headers");
}

#[test]
fn api_key_files_are_checked_against_their_own_lines() {
    let dir = std::env::temp_dir().join(format!("drawbridge-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.secret"), "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::write(
        dir.join("keys.toml"),
        "[[keys]]\nid = \"00112233445566zz\"\nname = \"a\"\nhash = \"00\"\n\n[[keys]]\nid = \"0011223344556677\"\nname = \"b\"\nhash = \"nothex\"\n",
    )
    .unwrap();
    let src = format!(
        "{BASE}\n[[authenticators]]\nname = \"scripts\"\ntype = \"api_key\"\nkeys_file = \"keys.toml\"\nsecret_file = \"s.secret\"\nissuer = \"x\"\n{}",
        route("authenticate = [\"scripts\"]\nauthorize = false")
    );
    let e = parse(&dir.join("drawbridge.toml"), &src).expect_err("invalid");
    let found: Vec<(String, usize, &str)> =
        e.0.iter()
            .map(|d| {
                (
                    d.location
                        .file
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    d.location.line,
                    d.field.as_str(),
                )
            })
            .collect();
    assert_eq!(
        found,
        [
            (
                "drawbridge.toml".to_string(),
                15,
                "authenticators[0].issuer"
            ),
            ("keys.toml".to_string(), 2, "keys[0].id"),
            ("keys.toml".to_string(), 9, "keys[1].hash"),
        ]
    );
    std::fs::write(dir.join("s.secret"), "short").unwrap();
    let src = src.replace("issuer = \"x\"\n", "");
    let e = parse(&dir.join("drawbridge.toml"), &src).expect_err("invalid");
    assert_eq!(e.0[0].field, "authenticators[0].secret_file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mtls_needs_a_trust_domain_and_a_listener_asking_for_certificates() {
    let ca = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/certs/clients-ca.crt"
    );
    let mtls = format!(
        "\n[[authenticators]]\nname = \"mesh\"\ntype = \"mtls\"\ntrust_domain = \"prod.example.com\"\nca_file = \"{ca}\"\n"
    );
    let e = errors(&format!(
        "{BASE}{mtls}{}",
        route("authenticate = [\"mesh\"]\nauthorize = false")
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "routes[0].authenticate");
    assert!(e[0].message.contains("client certificates"), "{}", e[0]);
    let e = errors(&format!(
        "{BASE}{}{}",
        mtls.replace("prod.example.com", "spiffe://prod/x"),
        route("public = true")
    ));
    assert_eq!(e[0].field, "authenticators[0].trust_domain");
    let e = errors(&format!(
        "{BASE}{}{}",
        mtls.replace("trust_domain = \"prod.example.com\"", "issuer = \"x\""),
        route("public = true")
    ));
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["authenticators[0].issuer", "authenticators[0].trust_domain"]
    );
    // Bound to its own CAs: without them, refused.
    let e = errors(&format!(
        "{BASE}{}{}",
        mtls.replace(&format!("ca_file = \"{ca}\"\n"), ""),
        route("public = true")
    ));
    assert_eq!(e[0].field, "authenticators[0].ca_file", "{e:?}");
}

#[test]
fn an_assertion_in_authorization_cannot_share_it_with_passed_credentials() {
    let src = format!(
        "{BASE}{JWT}\n[identity]\nheader = \"Authorization\"\n{}",
        route("authenticate = [\"corp\"]\nauthorize = false\npass_credentials = true")
    );
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "routes[0].pass_credentials");
    check(&format!(
        "{BASE}{JWT}\n[identity]\nheader = \"Authorization\"\n{}",
        route("authenticate = [\"corp\"]\nauthorize = false")
    ))
    .expect("valid without pass_credentials");
}

#[test]
fn header_and_query_rules_are_checked() {
    let src = format!(
        "[server]\nstrip_headers = [\"x-corp-*\", \"x corp\"]\n{}\nnonstandard_header_names = \"maybe\"\n{}\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n\
         pass_headers = [\"x-auth-request-email\", \"x-forwarded-for\", \"x_drawbridge_user\"]\n\
         query_credentials = \"allow\"\nmethod_override = \"strip\"\nrequest_trailers = true\n",
        &BASE[..BASE.find("[[upstreams]]").unwrap_or(0)].trim_end(),
        &BASE[BASE.find("[[upstreams]]").unwrap_or(0)..],
    );
    let e = errors(&src);
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "server.strip_headers[1]",
            "listeners[0].nonstandard_header_names",
            "routes[0].pass_headers[1]",
            "routes[0].pass_headers[2]",
            "routes[0].query_credentials",
        ],
        "{e:?}"
    );
    assert!(e[2].message.contains("set by Drawbridge"), "{}", e[2]);

    let ok = check(&format!(
        "[server]\nstrip_headers = [\"X-Corp-*\"]\n{BASE}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\npass_headers = [\"X-Auth-Request-Email\"]\n"
    ))
    .expect("valid");
    assert_eq!(ok.server.strip_headers, ["x-corp-*"]);
    assert_eq!(ok.routes[0].pass_headers, ["x-auth-request-email"]);
    assert_eq!(ok.routes[0].query_credentials, QueryRule::Refuse);
    assert_eq!(ok.routes[0].method_override, QueryRule::Refuse);
    assert!(!ok.routes[0].request_trailers);
    assert_eq!(
        ok.listeners[0].nonstandard_header_names,
        NonstandardHeaderNames::Drop
    );
}

/// Policies read headers as sanitize leaves them: a header the gateway removes (in any
/// spelling), a credential or one Drawbridge sets is refused by the one list the proxy
/// strips with, unless the route lets that removed header through.
#[test]
fn policies_are_never_handed_a_header_the_gateway_removes() {
    let hidden = [
        "true-client-ip",
        "x-forwarded-for",
        "x_forwarded_for",
        "x-auth-user",
        "remote-user",
        "x-real-ip",
        "cookie",
        "authorization",
        "x-drawbridge-user",
        "connection",
        "x.region",
    ];
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let src = format!(
        "{BASE}{JWT}\n[policy]\nfiles = [\"p.cedar\"]\n{}[routes.context]\nheaders = [{}, \"x-region\", \"x-auth-team\"]\n",
        route("authenticate = [\"corp\"]\npass_headers = [\"x-auth-team\"]"),
        list(&hidden),
    );
    let refused: Vec<String> = errors(&src)
        .into_iter()
        .filter(|d| d.field.contains("context.headers"))
        .map(|d| d.field)
        .collect();
    let expected: Vec<String> = (0..hidden.len())
        .map(|i| format!("routes[0].context.headers[{i}]"))
        .collect();
    assert_eq!(refused, expected);
}

/// The version is SHA-256 of the config and the files it reads: the same value on every
/// build and machine (a hash of the std library's choosing was not), and any change moves it.
#[test]
fn versions_are_stable_sha256() {
    let v = check(BASE).expect("valid").version;
    assert_eq!(v.len(), 32);
    // SHA-256 over the length-prefixed source, as any implementation computes it.
    assert_eq!(v, "3abbdb47122c56fafda25528075f7c46");
    let edited = check(&BASE.replace("main", "main2"))
        .expect("valid")
        .version;
    assert_ne!(v, edited);
}

/// Upstream settings decide whether a reload keeps a pool: each setting counts, where the
/// upstream was declared does not.
#[test]
fn upstreams_compare_by_every_setting() {
    let a = check(BASE).expect("valid").upstreams.remove(0);
    let moved = check(&format!("\n\n{BASE}"))
        .expect("valid")
        .upstreams
        .remove(0);
    assert!(a.same_settings(&moved), "only its location differs");
    let mut b = a.clone();
    b.retries += 1;
    assert!(!a.same_settings(&b));
    let mut b = a.clone();
    b.health.max_failures += 1;
    assert!(!a.same_settings(&b));
    let mut b = a.clone();
    b.tls_server_name = Some("other".into());
    assert!(!a.same_settings(&b));
}

/// The API-key server secret and the identity signing key never show in `Debug` (a log line,
/// a panic message): only how long they are.
#[test]
fn secrets_are_redacted_in_debug() {
    let dir = tempfile_dir("secrets");
    let secret = "0123456789abcdef0123456789abcdefSECRET";
    std::fs::write(dir.join("s.secret"), secret).unwrap();
    std::fs::write(dir.join("keys.toml"), "").unwrap();
    let src = format!(
        "{BASE}\n[[authenticators]]\nname = \"scripts\"\ntype = \"api_key\"\nkeys_file = \"keys.toml\"\nsecret_file = \"s.secret\"\n{}",
        route("authenticate = [\"scripts\"]\nauthorize = false")
    );
    let cfg = parse(&dir.join("drawbridge.toml"), &src).expect("valid");
    let AuthenticatorKind::ApiKey(k) = &cfg.authenticators[0].kind else {
        panic!("api keys")
    };
    assert_eq!(k.secret.expose(), secret.as_bytes());
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("SECRET"), "the secret in Debug");
    assert!(shown.contains("Secret([redacted; 38 bytes])"), "{shown}");
    let key = Secret::new(b"PRIVATEKEYBYTES".to_vec());
    assert_eq!(format!("{key:?}"), "Secret([redacted; 15 bytes])");
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("drawbridge-cfg-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `[admin]` listens on loopback (127.0.0.1:9901 unless it says otherwise); anything else
/// only with authenticators guarding it, and never on an address a listener uses.
#[test]
fn the_admin_listener_stays_on_loopback_unless_guarded() {
    let cfg = check(&format!("{BASE}\n[admin]\n")).expect("valid");
    assert_eq!(
        cfg.admin.map(|a| a.address),
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
    let cfg = check(&format!("{BASE}\n[admin]\naddress = \"[::1]:9000\"\n")).expect("valid");
    assert_eq!(cfg.admin.map(|a| a.address.port()), Some(9000));
    assert!(check(BASE).expect("valid").admin.is_none());
    for (address, why) in [
        ("0.0.0.0:9901", "no authenticator guards it"),
        ("10.0.0.1:9901", "no authenticator guards it"),
        ("127.0.0.1:8080", "already used by listeners[0]"),
        ("localhost", "not a socket address"),
    ] {
        let e = errors(&format!("{BASE}\n[admin]\naddress = \"{address}\"\n"));
        assert_eq!(e.len(), 1, "{address}: {e:?}");
        assert_eq!(e[0].field, "admin.address");
        assert!(e[0].message.contains(why), "{address}: {}", e[0].message);
    }
    let jwt = "[[authenticators]]\nname = \"ops\"\ntype = \"jwt\"\nissuer = \"https://ops.test/\"\naudiences = [\"a\"]\njwks_url = \"https://ops.test/jwks\"\n";
    let guarded = format!(
        "{BASE}\n{jwt}\n[admin]\naddress = \"0.0.0.0:9901\"\nauthenticators = [\"ops\"]\ngroups = [\"sre\"]\n"
    );
    let cfg = check(&guarded).expect("valid");
    let admin = cfg.admin.expect("admin");
    assert_eq!(
        (admin.authenticators, admin.groups),
        (vec![0], vec!["sre".to_string()])
    );
    for (admin, field, why) in [
        (
            "authenticators = [\"nobody\"]",
            "admin.authenticators[0]",
            "no authenticator is named",
        ),
        (
            "authenticators = []",
            "admin.authenticators",
            "no authenticator is listed",
        ),
        ("groups = [\"sre\"]", "admin.groups", "restricts nobody"),
    ] {
        let e = errors(&format!("{BASE}\n{jwt}\n[admin]\n{admin}\n"));
        assert_eq!(e.len(), 1, "{admin}: {e:?}");
        assert_eq!(e[0].field, field);
        assert!(e[0].message.contains(why), "{admin}: {}", e[0].message);
    }
    // Client certificates need the admin listener's own TLS, asking for them.
    let ca = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/certs/clients-ca.crt"
    );
    let mtls = format!(
        "[[authenticators]]\nname = \"svc\"\ntype = \"mtls\"\ntrust_domain = \"example.org\"\nca_file = \"{ca}\"\n"
    );
    let e = errors(&format!(
        "{BASE}\n{mtls}\n[admin]\nauthenticators = [\"svc\"]\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].message.contains("does not ask for"),
        "{}",
        e[0].message
    );
}

/// Active checks are on with `check_path`, with defaults; their other settings without a
/// path, or a path that is not one, are refused.
#[test]
fn active_health_checks_need_a_path() {
    let up = |health: &str| {
        BASE.replace(
            "endpoints = [\"http://127.0.0.1:9000\"]",
            &format!("endpoints = [\"http://127.0.0.1:9000\"]\n[upstreams.health]\n{health}"),
        )
    };
    let cfg = check(&up("check_path = \"/healthz\"")).expect("valid");
    let c = cfg.upstreams[0].health.check.clone().expect("checks on");
    assert_eq!(
        (
            c.path.as_str(),
            c.interval.as_secs(),
            c.unhealthy_threshold,
            c.healthy_threshold
        ),
        ("/healthz", 10, 3, 2)
    );
    assert!(
        check(BASE).expect("valid").upstreams[0]
            .health
            .check
            .is_none()
    );
    let e = errors(&up("check_interval = \"5s\""));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "upstreams[0].health.check_interval");
    for bad in ["healthz", "/a b", "/x#y"] {
        let e = errors(&up(&format!("check_path = \"{bad}\"")));
        assert_eq!(e[0].field, "upstreams[0].health.check_path", "{bad}");
    }
}

/// Every timeout becomes a deadline on a clock: one past its reach is refused by name, the
/// longest allowed one compiles.
#[test]
fn durations_stop_at_a_hundred_years() {
    let up = |setting: &str| {
        BASE.replace(
            "endpoints = [\"http://127.0.0.1:9000\"]",
            &format!("endpoints = [\"http://127.0.0.1:9000\"]\n{setting}"),
        )
    };
    for too_long in ["300000000000years", "101years", "36600days"] {
        let e = errors(&up(&format!("request_timeout = \"{too_long}\"")));
        assert_eq!(e.len(), 1, "{too_long}");
        assert_eq!(e[0].field, "upstreams[0].request_timeout", "{too_long}");
        assert!(e[0].message.contains("longer than 100 years"), "{e:?}");
    }
    let cfg = check(&up("request_timeout = \"100years\"")).expect("valid");
    assert_eq!(
        cfg.upstreams[0].request_timeout,
        std::time::Duration::from_secs(100 * 31_557_600)
    );
    let listener = BASE.replace(
        "address = \"127.0.0.1:8080\"",
        "address = \"127.0.0.1:8080\"\nlimits = { max_connection_age = \"200years\" }",
    );
    let e = errors(&listener);
    assert_eq!(e[0].field, "listeners[0].limits.max_connection_age");
}

/// A route's header edits never touch Drawbridge's own headers, in either list.
#[test]
fn route_header_edits_leave_drawbridges_own_alone() {
    for (table, list) in [
        ("request_headers", "remove = [\"x-forwarded-for\"]"),
        ("response_headers", "remove = [\"X-Request-Id\"]"),
        (
            "request_headers",
            "set = { \"x-drawbridge-user\" = \"root\" }",
        ),
        (
            "request_headers",
            "set = { \"authorization\" = \"Bearer x\" }",
        ),
        ("response_headers", "set = { \"set-cookie\" = \"a=b\" }"),
    ] {
        let src = format!("{BASE}{}[routes.{table}]\n{list}\n", route("public = true"));
        let e = errors(&src);
        assert_eq!(e.len(), 1, "{table} {list}: {e:?}");
        assert!(
            e[0].field.starts_with(&format!("routes[0].{table}.")),
            "{}",
            e[0].field
        );
    }
    let ok = format!(
        "{BASE}{}[routes.request_headers]\nset = {{ \"x-env\" = \"prod\" }}\nremove = [\"x-debug\"]\n",
        route("public = true")
    );
    let cfg = check(&ok).expect("valid");
    assert_eq!(cfg.routes[0].request_headers.remove, ["x-debug"]);
}

/// A TLS listener and an `oidc` authenticator whose secret exists, in a directory of its own,
/// plus `rest`.
fn sso(rest: &str) -> (tempfile::TempDir, Result<Config, Diagnostics>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/certs");
    std::fs::write(dir.path().join("corp.secret"), "s3cret\n").expect("secret");
    let src = format!(
        r#"
[[listeners]]
name = "web"
address = "127.0.0.1:8443"
[[listeners.tls.certificates]]
cert = "{ca}/app.example.com.crt"
key = "{ca}/app.example.com.key"

[[upstreams]]
name = "app"
endpoints = ["http://127.0.0.1:9000"]

{rest}
"#,
        ca = ca.display()
    );
    let path = dir.path().join("drawbridge.toml");
    let result = parse(&path, &src);
    (dir, result)
}

const CORP: &str = r#"
[[authenticators]]
name = "corp"
type = "oidc"
issuer = "https://login.example.com/realms/corp"
client_id = "drawbridge"
client_secret_file = "corp.secret"
"#;

const ROUTE: &str = r#"
[[routes]]
name = "app"
host = "app.example.com"
prefix = "/"
upstream = "app"
authenticate = ["corp"]
authorize = false
"#;

#[test]
fn an_oidc_authenticator_and_its_sessions_compile_with_defaults() {
    let (_d, cfg) = sso(&format!("{CORP}{ROUTE}"));
    let cfg = cfg.expect("valid");
    let AuthenticatorKind::Oidc(o) = &cfg.authenticators[0].kind else {
        panic!("oidc");
    };
    assert_eq!(
        o.discovery.url,
        "https://login.example.com/realms/corp/.well-known/openid-configuration"
    );
    assert_eq!(
        o.discovery.path,
        "/realms/corp/.well-known/openid-configuration"
    );
    assert!(matches!(
        &o.client_auth,
        ClientAuthentication::SecretBasic { secret, .. } if secret.expose() == b"s3cret"
    ));
    assert_eq!(o.scopes, ["openid", "email", "profile"]);
    assert_eq!(o.claims.id, "sub");
    assert_eq!(o.display_name, "corp");
    // `[sessions]` is there without being written: embedded, beside the config.
    let s = cfg.sessions.expect("sessions");
    assert!(matches!(&s.store, SessionStore::Embedded { path } if path.ends_with("sessions.redb")));
    assert_eq!(s.idle_timeout, std::time::Duration::from_secs(8 * 3600));
    assert_eq!(s.lifetime, std::time::Duration::from_secs(24 * 3600));
    assert!(s.sign_in.is_none());
}

#[test]
fn oidc_and_sessions_mistakes_are_named() {
    for (rest, field, says) in [
        (
            CORP.replace("client_id = \"drawbridge\"\n", ""),
            "authenticators[0].client_id",
            "needs the `client_id`",
        ),
        (
            CORP.replace("corp.secret", "missing.secret"),
            "authenticators[0].client_secret_file",
            "cannot read",
        ),
        (
            format!("{CORP}scopes = [\"email\"]\n"),
            "authenticators[0].scopes",
            "do not hold `openid`",
        ),
        (
            CORP.replace("https://login", "http://login"),
            "authenticators[0].issuer",
            "plain HTTP",
        ),
        (
            format!("{CORP}audiences = [\"x\"]\n"),
            "authenticators[0].audiences",
            "belongs to `type = \"jwt\"`",
        ),
        (
            format!("{CORP}allowed_email_domains = [\"not a domain\"]\n"),
            "authenticators[0].allowed_email_domains[0]",
            "not a domain name",
        ),
        (
            format!("{CORP}client_auth = \"client_secret_jwt\"\n"),
            "authenticators[0].client_auth",
            "unknown client authentication",
        ),
        (
            format!("{CORP}client_auth = \"private_key_jwt\"\n"),
            "authenticators[0].client_key_file",
            "needs the client's private key",
        ),
        (
            format!("{CORP}client_key_file = \"corp.secret\"\n"),
            "authenticators[0].client_key_file",
            "belongs to `client_auth = \"private_key_jwt\"`",
        ),
        (
            format!("{CORP}\n[sessions]\nstore = \"redis\"\n"),
            "sessions.redis_url",
            "needs `redis_url`",
        ),
        (
            format!("{CORP}\n[sessions]\nstore = \"memcached\"\n"),
            "sessions.store",
            "unknown store",
        ),
        (
            format!("{CORP}\n[sessions]\nredis_url = \"redis://x\"\n"),
            "sessions.redis_url",
            "belongs to `store = \"redis\"`",
        ),
        (
            format!("{CORP}\n[sessions]\nidle_timeout = \"48h\"\n"),
            "sessions.idle_timeout",
            "longer than `lifetime`",
        ),
        (
            format!("{CORP}\n[sessions]\ncache_ttl = \"5m\"\n"),
            "sessions.cache_ttl",
            "over a minute",
        ),
        (
            format!("{CORP}\n[sessions]\nsign_in_url = \"http://auth.example.com\"\n"),
            "sessions.sign_in_url",
            "not an `https://` origin",
        ),
        (
            format!("{CORP}\n[sessions]\nsign_in_url = \"https://auth.example.com/path\"\n"),
            "sessions.sign_in_url",
            "without a path",
        ),
        (
            format!("{CORP}\n[sessions]\nkey_file = \"corp.secret\"\n"),
            "sessions.key_file",
            "fewer than 32 characters",
        ),
    ] {
        named_in_sso(&format!("{rest}{ROUTE}"), field, says);
    }
}

/// Asserts that the SSO config `rest` is refused with an error at `field` saying `says`.
fn named_in_sso(rest: &str, field: &str, says: &str) {
    let (_d, result) = sso(rest);
    let e = match result {
        Ok(_) => panic!("expected an error at {field}"),
        Err(d) => d.0,
    };
    assert!(
        e.iter()
            .any(|d| d.field == field && d.message.contains(says)),
        "{field}: {}",
        e.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn people_sign_in_over_tls_only() {
    let (_d, result) = sso(&format!(
        "{CORP}\n[[listeners]]\nname = \"plain\"\naddress = \"127.0.0.1:8080\"\n{}",
        ROUTE.replace(
            "authorize = false",
            "authorize = false\nlisteners = [\"plain\"]"
        )
    ));
    let e = result.expect_err("refused").0;
    assert!(
        e.iter().any(|d| d.field == "routes[0].authenticate"
            && d.message.contains("no TLS listener serves it")),
        "{e:?}"
    );
}

#[test]
fn second_factors_compile_with_defaults() {
    let (_d, cfg) = sso(&format!(
        "{CORP}{}",
        ROUTE.replace(
            "authorize = false",
            "authorize = false\nmfa = { required = true, max_age = \"12h\" }"
        )
    ));
    let cfg = cfg.expect("valid");
    // People sign in: second factors are there, with NIST-minded defaults.
    let m = cfg.mfa.expect("mfa");
    assert_eq!(m.issuer, "Drawbridge");
    assert_eq!(m.totp, TotpSettings::default());
    assert_eq!((m.totp.digits, m.totp.period), (6, 30));
    assert_eq!(m.max_failures, 5);
    assert_eq!(m.failure_window, std::time::Duration::from_secs(900));
    let r = cfg.routes[0].mfa.as_ref().expect("route mfa");
    assert_eq!(r.max_age, std::time::Duration::from_secs(12 * 3600));
    assert_eq!(r.methods, MfaMethod::ALL);
    // An issuer's amr is never trusted unless said.
    let AuthenticatorKind::Oidc(o) = &cfg.authenticators[0].kind else {
        panic!("oidc");
    };
    assert!(o.claims.trusted_mfa.is_empty());
}

#[test]
fn second_factor_mistakes_are_named() {
    let route_mfa = |m: &str| {
        ROUTE.replace(
            "authorize = false",
            &format!("authorize = false\nmfa = {m}"),
        )
    };
    for (rest, field, says) in [
        (
            format!("{CORP}{}", route_mfa("{ required = true }")),
            "routes[0].mfa.max_age",
            "says how lately",
        ),
        (
            format!(
                "{CORP}{}",
                route_mfa("{ max_age = \"5m\", methods = [\"sms\"] }")
            ),
            "routes[0].mfa.methods",
            "unknown second factor `sms`",
        ),
        (
            format!("{CORP}{}", route_mfa("{ max_age = \"5m\", methods = [] }")),
            "routes[0].mfa.methods",
            "no method would ever satisfy",
        ),
        (
            format!(
                "{CORP}{}",
                route_mfa("{ required = false, max_age = \"5m\" }")
            ),
            "routes[0].mfa.max_age",
            "asks for no second factor",
        ),
        (
            // `idp` alone, and no authenticator trusts its issuer's amr: nobody could pass.
            format!(
                "{CORP}{}",
                route_mfa("{ max_age = \"5m\", methods = [\"idp\"] }")
            ),
            "routes[0].mfa",
            "could ever show",
        ),
        (
            format!("{CORP}trusted_mfa = {{ amr = [\"pwd\"] }}\n{ROUTE}"),
            "authenticators[0].trusted_mfa.amr",
            "never a second factor",
        ),
        (
            format!("{CORP}trusted_mfa = {{}}\n{ROUTE}"),
            "authenticators[0].trusted_mfa",
            "trusts nothing",
        ),
        (
            format!("{CORP}\n[mfa]\nmax_failures = 1000\n{ROUTE}"),
            "mfa.max_failures",
            "out of range",
        ),
        (
            format!("{CORP}\n[mfa]\nissuer = \"a:b\"\n{ROUTE}"),
            "mfa.issuer",
            "authenticator apps can show",
        ),
        (
            format!("{CORP}\n[mfa.totp]\ndigits = 4\n{ROUTE}"),
            "mfa.totp.digits",
            "out of range",
        ),
        (
            format!("{CORP}\n[mfa.totp]\nperiod = \"10m\"\n{ROUTE}"),
            "mfa.totp.period",
            "outside what apps accept",
        ),
        (
            format!("{CORP}\n[mfa.totp]\nalgorithm = \"MD5\"\n{ROUTE}"),
            "mfa.totp.algorithm",
            "unknown setting",
        ),
    ] {
        named_in_sso(&rest, field, says);
    }
    // `[mfa]` without anyone signing in: nobody to enrol.
    let e = errors(&format!("{BASE}\n[mfa]\nissuer = \"x\"\n"));
    assert!(
        e.iter()
            .any(|d| d.field == "mfa" && d.message.contains("no `oidc` authenticator")),
        "{e:?}"
    );
    // A public route has nobody to ask.
    let e = errors(&format!(
        "{BASE}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\nmfa = {{ max_age = \"5m\" }}\n"
    ));
    assert!(
        e.iter()
            .any(|d| d.field == "routes[0].mfa" && d.message.contains("public route")),
        "{e:?}"
    );
}

/// `[alerts]`: each signal is counted per what it can be, a block needs a client or a
/// principal, a webhook needs its secret; a detector that blocks keeps a store for blocks
/// even where nobody signs in.
#[test]
fn alert_detectors_are_checked() {
    let detector = |body: &str| format!("{BASE}\n[[alerts.detectors]]\nname = \"d\"\n{body}\n");
    let cfg = check(&detector(
        "on = \"failed_authentication\"\nthreshold = 20\nwindow = \"1m\"\nblock = \"15m\"",
    ))
    .expect("valid");
    let d = &cfg.alerts.detectors[0];
    assert_eq!(
        (
            d.on,
            d.by,
            d.threshold,
            d.window.as_secs(),
            d.block.map(|b| b.as_secs())
        ),
        (
            Signal::FailedAuthentication,
            AlertKey::Client,
            20,
            60,
            Some(900)
        )
    );
    assert!(
        matches!(
            cfg.sessions.as_ref().map(|s| &s.store),
            Some(SessionStore::Embedded { .. })
        ),
        "blocks get a store"
    );
    assert!(cfg.mfa.is_none(), "no second factors where nobody signs in");
    let cfg = check(&detector("on = \"denial\"\nthreshold = 100")).expect("valid");
    assert_eq!(cfg.alerts.detectors[0].by, AlertKey::Route);
    assert!(cfg.sessions.is_none(), "no block, no store");
    for (body, field, why) in [
        (
            "on = \"stampede\"\nthreshold = 1",
            "alerts.detectors[0].on",
            "unknown signal",
        ),
        (
            "on = \"failed_authentication\"\nby = \"route\"\nthreshold = 1",
            "alerts.detectors[0].by",
            "counted per client",
        ),
        (
            "on = \"denial\"\nthreshold = 1\nblock = \"1m\"",
            "alerts.detectors[0].block",
            "a route is not blocked",
        ),
        (
            "on = \"denial\"\nthreshold = 0",
            "alerts.detectors[0].threshold",
            "out of range",
        ),
        (
            "on = \"denial\"\nthreshold = 5\nwindow = \"2d\"",
            "alerts.detectors[0].window",
            "longer than a day",
        ),
    ] {
        let e = errors(&detector(body));
        assert_eq!(e.len(), 1, "{body}: {e:?}");
        assert_eq!(e[0].field, field, "{body}");
        assert!(e[0].message.contains(why), "{body}: {}", e[0].message);
    }
    let e = errors(&format!(
        "{BASE}\n[alerts]\nwebhook_url = \"https://hooks.example.com/x\"\n"
    ));
    assert_eq!(e[0].field, "alerts.webhook_secret_file");
    let e = errors(&format!(
        "{BASE}\n[alerts]\nwebhook_url = \"http://hooks.example.com/x\"\nwebhook_secret_file = \"/nonexistent\"\n"
    ));
    assert!(e.iter().any(|d| d.field == "alerts.webhook_url"), "{e:?}");
    let e = errors(&format!(
        "{BASE}\n[[alerts.detectors]]\nname = \"d\"\non = \"denial\"\nthreshold = 1\n[[alerts.detectors]]\nname = \"d\"\non = \"denial\"\nthreshold = 2\n"
    ));
    assert!(e[0].message.contains("names two detectors"), "{e:?}");
}

/// `[tracing]`: an OTLP/HTTP address (https, or http on loopback), a ratio between 0 and 1,
/// addresses and ranges whose trace context is continued.
#[test]
fn tracing_is_checked() {
    let cfg = check(&format!(
        "{BASE}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsample_ratio = 0.25\ntrusted_sources = [\"10.0.0.0/8\", \"192.0.2.7\"]\n"
    ))
    .expect("valid");
    let t = cfg.tracing.expect("tracing");
    assert_eq!(
        (t.service_name.as_str(), t.sample_ratio),
        ("drawbridge", 0.25)
    );
    assert_eq!(t.trusted_sources.len(), 2);
    for (body, field) in [
        (
            "otlp_endpoint = \"http://otel.example.com:4318/v1/traces\"",
            "tracing.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"https://otel.example.com/v1/traces\"\nsample_ratio = 1.5",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint = \"https://otel.example.com/v1/traces\"\ntrusted_sources = [\"everyone\"]",
            "tracing.trusted_sources[0]",
        ),
    ] {
        let e = errors(&format!("{BASE}\n[tracing]\n{body}\n"));
        assert_eq!(e.len(), 1, "{body}: {e:?}");
        assert_eq!(e[0].field, field);
    }
}
