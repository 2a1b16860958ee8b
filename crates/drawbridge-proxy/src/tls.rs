//! TLS termination: rustls with the aws-lc-rs provider, certificates chosen by SNI.

use std::collections::HashMap;
use std::sync::Arc;

use drawbridge_config::{Diagnostic, Tls, TlsVersion};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The one crypto provider of the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds a listener's server config; errors point at the certificate's declaration.
pub fn server_config(
    tls: &Tls,
    http2: bool,
) -> Result<(Arc<rustls::ServerConfig>, Arc<SniResolver>), Diagnostic> {
    let provider = provider();
    let mut resolver = SniResolver::default();
    for (i, c) in tls.certificates.iter().enumerate() {
        let key = provider
            .key_provider
            .load_private_key(c.key.clone_key())
            .map_err(|e| Diagnostic {
                location: c.location.clone(),
                field: format!("certificates[{i}].key"),
                message: format!("unusable private key: {e}"),
                help: None,
            })?;
        let ck = Arc::new(CertifiedKey::new(c.chain.clone(), key));
        ck.keys_match().map_err(|e| Diagnostic {
            location: c.location.clone(),
            field: format!("certificates[{i}]"),
            message: format!("the key does not belong to the certificate: {e}"),
            help: Some("pair each `cert` with its own `key`".into()),
        })?;
        if resolver.default.is_none() {
            resolver.default = Some(ck.clone());
        }
        for name in &c.server_names {
            match name.strip_prefix("*.") {
                Some(suffix) => resolver.wildcard.insert(suffix.to_string(), ck.clone()),
                None => resolver.exact.insert(name.clone(), ck.clone()),
            };
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let location = || {
        tls.certificates
            .first()
            .map(|c| c.location.clone())
            .unwrap_or_else(dummy_location)
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| Diagnostic {
            location: location(),
            field: "tls".into(),
            message: e.to_string(),
            help: None,
        })?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = client_verifier(ca, provider).map_err(|message| Diagnostic {
                location: location(),
                field: "tls.client_ca_file".into(),
                message,
                help: None,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let resolver = Arc::new(resolver);
    let mut cfg = builder.with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((Arc::new(cfg), resolver))
}

/// Checks client certificates against the listener's CAs, their validity period included;
/// with `request`, a client may present none and the routes decide.
fn client_verifier(
    ca: &drawbridge_config::ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in &ca.roots {
        roots
            .add(c.clone())
            .map_err(|e| format!("CA certificate rejected: {e}"))?;
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if ca.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| e.to_string())
}

fn dummy_location() -> drawbridge_config::Location {
    drawbridge_config::Location {
        file: Default::default(),
        line: 1,
        column: 1,
    }
}

/// Exact names, then `*.suffix` names (one label deep), then the first certificate.
#[derive(Default, Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// The certificate that serves `name` (the default one without a name).
    fn pick(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        // Names are mostly lower-case already: folded into a copy only when they are not.
        let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase().into()
        } else {
            name.into()
        };
        if let Some(ck) = self.exact.get(&*name) {
            return Some(ck);
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(ck) = self.wildcard.get(parent)
        {
            return Some(ck);
        }
        self.default.as_ref()
    }

    /// Whether a request for `host` may travel on a connection whose handshake named `sni`:
    /// both are served by the same certificate (the listener's client-certificate settings
    /// are one for all its names).
    pub fn same_virtual_host(&self, sni: Option<&str>, host: &str) -> bool {
        // The name the handshake gave, the usual case: one certificate, looked up once.
        if sni.is_some_and(|s| s.eq_ignore_ascii_case(host)) {
            return self.pick(sni).is_some();
        }
        match (self.pick(sni), self.pick(Some(host))) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).cloned()
    }
}
