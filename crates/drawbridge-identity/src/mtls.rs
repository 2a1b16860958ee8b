//! Workload identity from client certificates. The listener's TLS verifies the chain to its
//! configured CAs (and the validity period) during the handshake; here the chain is checked
//! again against the authenticator's own CAs, so only they vouch for its trust domain, and
//! the leaf's names become a principal: its SPIFFE id (`spiffe://trust-domain/path` URI SAN)
//! or else a DNS name, accepted only inside the authenticator's trust domain.

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateDer;

use drawbridge_config::{MtlsIdentity, PrincipalKind};
use serde_json::{Map, Value};

use crate::error::{BuildError, Refusal};
use crate::principal::{AuthMethod, Principal};

/// What a verified client certificate says, read once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs, lower-case.
    pub dns: Vec<String>,
    /// End of validity, Unix seconds.
    pub not_after: u64,
    /// SHA-256 of the certificate, which identifies it.
    pub fingerprint: [u8; 32],
    /// The subject's distinguished name, as RFC 4514 text.
    pub subject: String,
    /// The chain the client presented, leaf first, for authenticators that check it
    /// against their own CAs.
    pub chain: Vec<CertificateDer<'static>>,
}

impl ClientCert {
    /// Reads the chain a client presented (leaf first), which the TLS layer already verified
    /// against the listener's CAs.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<ClientCert, String> {
        let leaf = chain
            .first()
            .ok_or_else(|| "client certificate: empty chain".to_string())?;
        let mut cert = Self::from_der(leaf)?;
        cert.chain = chain.iter().map(|c| c.clone().into_owned()).collect();
        Ok(cert)
    }

    /// Reads the names of a certificate (DER) that the TLS layer already verified.
    pub fn from_der(der: &[u8]) -> Result<ClientCert, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("client certificate: {e}"))?;
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| format!("client certificate names: {e}"))?
        {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::URI(u) => uris.push((*u).to_string()),
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        dns.push(d.to_ascii_lowercase())
                    }
                    _ => {}
                }
            }
        }
        // Plain SHA-256 of the DER, as Envoy's `x-forwarded-client-cert` `Hash=` has it (not
        // the project's length-prefixed digest: upstreams compare it with their own).
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(ClientCert {
            uris,
            dns,
            not_after: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            fingerprint,
            subject: cert.subject().to_string(),
            chain: vec![CertificateDer::from(der.to_vec())],
        })
    }
}

/// Admits callers by the client certificate their connection presented.
pub struct MtlsAuthenticator {
    name: Arc<str>,
    config: MtlsIdentity,
    /// Checks a client's chain against this authenticator's own CAs.
    verifier: Arc<dyn ClientCertVerifier>,
    /// Principals by certificate, so a workload's many requests share one (and its minted
    /// identity assertions).
    seen: quick_cache::sync::Cache<[u8; 32], Arc<Principal>>,
}

/// Most certificates remembered.
const MAX_SEEN: usize = 10_000;

impl MtlsAuthenticator {
    /// Builds the authenticator `name`.
    pub fn new(name: &str, config: &MtlsIdentity) -> Result<Self, BuildError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &config.roots {
            roots.add(c.clone()).map_err(BuildError::Ca)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(BuildError::Verifier)?;
        Ok(Self {
            name: name.into(),
            config: config.clone(),
            verifier,
            seen: quick_cache::sync::Cache::new(MAX_SEEN),
        })
    }

    /// The authenticator's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &MtlsIdentity {
        &self.config
    }

    /// The principal of a certificate naming `id` (see [`crate::Simulated`]).
    pub(crate) fn simulate(&self, id: &str) -> Result<Principal, String> {
        let spiffe = id
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"));
        let cert = ClientCert {
            uris: if spiffe {
                vec![id.to_string()]
            } else {
                Vec::new()
            },
            dns: if spiffe {
                Vec::new()
            } else {
                vec![id.to_ascii_lowercase()]
            },
            not_after: u64::MAX,
            fingerprint: [0; 32],
            subject: String::new(),
            chain: Vec::new(),
        };
        let id = self.identity(&cert).map_err(|e| e.to_string())?;
        Ok(self.principal(id, None))
    }

    /// The principal a certificate naming `id` stands for.
    fn principal(&self, id: String, expires_at: Option<u64>) -> Principal {
        let mut attributes = Map::new();
        attributes.insert(
            "trust_domain".into(),
            Value::String(self.config.trust_domain.clone()),
        );
        Principal {
            id,
            kind: PrincipalKind::Service,
            authenticator: self.name.clone(),
            issuer: None,
            groups: Vec::new(),
            attributes,
            methods: vec![AuthMethod::Mtls],
            authenticated_at: None,
            expires_at,
            factors: Vec::new(),
        }
    }

    /// The principal of a verified client certificate.
    pub fn verify(&self, cert: &ClientCert) -> Result<Arc<Principal>, Refusal> {
        let now = crate::unix_now();
        if now >= cert.not_after {
            // Verified at the handshake, expired since, on a long-lived connection.
            return Err(Refusal::Certificate("expired".into()));
        }
        if let Some(p) = self.seen.get(&cert.fingerprint) {
            return Ok(p);
        }
        // The listener's CAs let the connection in; only this authenticator's CAs vouch for
        // identities in its trust domain.
        let (leaf, intermediates) = cert
            .chain
            .split_first()
            .ok_or_else(|| Refusal::Certificate("no chain".into()))?;
        self.verifier
            .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
            .map_err(|_| {
                Refusal::Certificate(format!(
                    "not issued by a CA of trust domain `{}`",
                    self.config.trust_domain
                ))
            })?;
        let id = self.identity(cert)?;
        let p = Arc::new(self.principal(id, Some(cert.not_after)));
        self.seen.insert(cert.fingerprint, p.clone());
        Ok(p)
    }

    /// The SPIFFE id in the trust domain, else a DNS name in it.
    fn identity(&self, cert: &ClientCert) -> Result<String, Refusal> {
        let td = &self.config.trust_domain;
        let spiffe: Vec<&String> = cert
            .uris
            .iter()
            .filter(|u| {
                u.get(..9)
                    .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
            })
            .collect();
        match spiffe.as_slice() {
            [] => {}
            [one] => {
                // spiffe://<trust domain>/<path>: the domain compared exactly, a path required.
                let rest = &one[9..];
                let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
                if domain.eq_ignore_ascii_case(td) && !path.is_empty() {
                    return Ok(format!("spiffe://{}/{path}", domain.to_ascii_lowercase()));
                }
                return Err(Refusal::Certificate(format!(
                    "SPIFFE id outside trust domain `{td}`"
                )));
            }
            _ => {
                // A SPIFFE SVID carries exactly one URI SAN.
                return Err(Refusal::Certificate("more than one SPIFFE id".into()));
            }
        }
        let suffix = format!(".{td}");
        cert.dns
            .iter()
            .find(|d| *d == td || d.ends_with(&suffix))
            .cloned()
            .ok_or_else(|| Refusal::Certificate(format!("no name in trust domain `{td}`")))
    }
}
