//! The transport every Strata server and client is configured with: plain (loopback demos, or `--insecure`)
//! or mutual TLS from three PEM files — the cluster CA bundle, this process's certificate chain and its key.
//!
//! TLS is rustls on ring, the one crypto provider in the workspace. Both ends authenticate:
//! - a server asks for a client certificate but lets a client without one finish the handshake (a joining
//!   node has none yet); what such a caller may do is decided per call by the authorisation policy, which
//!   refuses everything but joining;
//! - a client checks that the server's certificate chains to the CA *and* that its identity has the role
//!   the client expects ([`Expect`]): a device sends an edge stage's tensors only to a certified edge node,
//!   whatever address a route table gave.
//!
//! The files are watched: when their modification times or sizes change (checked at most once a second,
//! when a connection is made), they are loaded again and new connections use them; connections already open
//! keep the certificates they were made with. A rotation that leaves the files unreadable or inconsistent for
//! a moment (the key written before the certificate) keeps the previous configuration and retries.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use strata_core::Tier;

use crate::identity::{Identity, IdentityError, Role};
use crate::revocation::Revocations;

/// How often, at most, the files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Where a process's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA bundle (PEM; one or more certificates): who may be trusted.
    pub ca: PathBuf,
    /// This process's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir` (what `strata cert issue` and joining write).
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM object of the kind it should.
    #[error("the {what} {} holds no {expected} (PEM): {detail}", path.display())]
    Pem {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// The certificate carries no valid identity.
    #[error("the certificate {}: {source}", path.display())]
    Identity {
        /// Where.
        path: PathBuf,
        /// Why.
        source: IdentityError,
    },
    /// The certificate has expired or is not valid yet.
    #[error("the certificate {} is valid from {not_before} to {not_after} (unix seconds); it is {now} now", path.display())]
    Expired {
        /// Where.
        path: PathBuf,
        /// Validity start, unix seconds.
        not_before: i64,
        /// Validity end, unix seconds.
        not_after: i64,
        /// The clock now, unix seconds.
        now: i64,
    },
    /// rustls refused the material (a key that does not match the certificate, an unusable CA).
    #[error("the TLS material cannot be used: {0}")]
    Config(String),
}

/// What a client accepts as the server it connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect {
    /// A control-plane replica or any node: route tables and blobs are served by both.
    Server,
    /// A control-plane replica (the control API, peer blob fetches).
    Controller,
    /// A node of this tier (an inference hop to a stage of that tier).
    Node(Tier),
}

impl Expect {
    const ALL: [Expect; 4] = [
        Expect::Server,
        Expect::Controller,
        Expect::Node(Tier::Edge),
        Expect::Node(Tier::Cloud),
    ];

    /// Whether a server with this role is acceptable.
    pub fn admits(self, role: Role) -> bool {
        match self {
            Expect::Server => role.serves(),
            Expect::Controller => role == Role::Controller,
            Expect::Node(tier) => role == Role::Node(tier),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Server => f.write_str("a control-plane replica or a node"),
            Expect::Controller => f.write_str("a control-plane replica"),
            Expect::Node(tier) => write!(f, "a {tier} node"),
        }
    }
}

/// How a process talks to its peers: the one configuration every server builder and client channel takes.
#[derive(Clone, Default)]
pub enum Transport {
    /// Plain HTTP/2: no identities, so no authorisation. For loopback, or behind `--insecure`.
    #[default]
    Plain,
    /// Mutual TLS.
    Tls(Arc<Tls>),
    /// A TLS client without a certificate of its own (a node joining; nothing but joining is allowed to it).
    Client(Arc<HashMap<Expect, Arc<ClientConfig>>>),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Plain => f.write_str("Transport::Plain"),
            Transport::Tls(tls) => write!(f, "Transport::Tls({:?})", tls.files),
            Transport::Client(_) => f.write_str("Transport::Client"),
        }
    }
}

impl Transport {
    /// Mutual TLS from `files`, loaded now (so a bad file is an error at start-up, not at the first call).
    pub fn tls(files: TlsFiles) -> Result<Transport, TlsError> {
        let revoked = Revocations::default();
        let loaded = Loaded::read(&files, &revoked)?;
        Ok(Transport::Tls(Arc::new(Tls {
            files,
            revoked,
            state: Mutex::new(State {
                loaded: Arc::new(loaded),
                checked: Instant::now(),
            }),
        })))
    }

    /// A TLS client with no certificate that trusts the CA bundle `ca_pem` (a node that has not joined yet).
    pub fn anonymous(ca_pem: &[u8]) -> Result<Transport, TlsError> {
        let roots = roots(Path::new("(the joined CA bundle)"), ca_pem)?;
        let provider = provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(config_error)?;
        let mut clients = HashMap::new();
        for expect in Expect::ALL {
            let verifier = Arc::new(RoleVerifier {
                webpki: webpki.clone(),
                expect,
                revoked: Revocations::default(),
            });
            let client = client_config(&provider, verifier, None)?;
            clients.insert(expect, Arc::new(client));
        }
        Ok(Transport::Client(Arc::new(clients)))
    }

    /// A TLS client that accepts any server certificate: only for fetching the CA bundle, whose hash the
    /// caller then checks against one it got out of band (a join token's fingerprint).
    pub fn unverified() -> Result<Transport, TlsError> {
        let provider = provider();
        let verifier = Arc::new(AnyServer(provider.clone()));
        let client = Arc::new(client_config(&provider, verifier, None)?);
        let clients = Expect::ALL
            .into_iter()
            .map(|e| (e, client.clone()))
            .collect();
        Ok(Transport::Client(Arc::new(clients)))
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Transport::Plain)
    }

    /// This process's identity (mutual TLS only).
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Transport::Plain | Transport::Client(_) => None,
            Transport::Tls(tls) => Some(tls.current().identity.clone()),
        }
    }

    /// The identities this process refuses, as callers and as servers (mutual TLS only): one set shared by
    /// every connection, old and new, and kept across certificate rotations.
    pub fn revocations(&self) -> Option<&Revocations> {
        match self {
            Transport::Plain | Transport::Client(_) => None,
            Transport::Tls(tls) => Some(&tls.revoked),
        }
    }

    /// The validity period of this process's certificate, unix seconds `(not_before, not_after)`, as loaded
    /// now (mutual TLS only).
    pub fn certificate_validity(&self) -> Option<(i64, i64)> {
        match self {
            Transport::Plain | Transport::Client(_) => None,
            Transport::Tls(tls) => Some(tls.current().validity),
        }
    }

    /// The server configuration for a new connection (mutual TLS only).
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        match self {
            Transport::Plain | Transport::Client(_) => None,
            Transport::Tls(tls) => Some(tls.current().server.clone()),
        }
    }

    /// The client configuration for a new connection to a server that must be `expect` (TLS only).
    pub fn client_config(&self, expect: Expect) -> Option<Arc<ClientConfig>> {
        match self {
            Transport::Plain => None,
            Transport::Tls(tls) => tls.current().clients.get(&expect).cloned(),
            Transport::Client(clients) => clients.get(&expect).cloned(),
        }
    }
}

/// Mutual-TLS material, reloaded when its files change.
pub struct Tls {
    files: TlsFiles,
    revoked: Revocations,
    state: Mutex<State>,
}

struct State {
    loaded: Arc<Loaded>,
    checked: Instant,
}

impl Tls {
    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            if stamp(&self.files) != state.loaded.stamp {
                match Loaded::read(&self.files, &self.revoked) {
                    // The process took its name and role from the certificate it started with (an agent its
                    // tier, the control plane its ownership of nodes): a rotation keeps them.
                    Ok(loaded) if loaded.identity != state.loaded.identity => {
                        // Checked again at the next change.
                        state.loaded = Arc::new(Loaded {
                            stamp: loaded.stamp,
                            ..clone_loaded(&state.loaded)
                        });
                        tracing::error!(
                            was = %state.loaded.identity,
                            now = %loaded.identity,
                            cert = %self.files.cert.display(),
                            "the rotated certificate is for another identity; keeping the previous one (restart to change identity)"
                        );
                    }
                    Ok(loaded) => {
                        tracing::info!(
                            identity = %loaded.identity,
                            cert = %self.files.cert.display(),
                            "TLS material changed on disk; new connections use it"
                        );
                        state.loaded = Arc::new(loaded);
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "TLS material changed on disk but cannot be used yet; keeping the previous"
                    ),
                }
            }
        }
        state.loaded.clone()
    }
}

/// Modification times and sizes of the three files.
type Stamp = [Option<(SystemTime, u64)>; 3];

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.ca, &files.cert, &files.key].map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    })
}

fn clone_loaded(l: &Loaded) -> Loaded {
    Loaded {
        stamp: l.stamp,
        identity: l.identity.clone(),
        validity: l.validity,
        server: l.server.clone(),
        clients: l.clients.clone(),
    }
}

struct Loaded {
    stamp: Stamp,
    identity: Identity,
    /// The certificate's validity, unix seconds.
    validity: (i64, i64),
    server: Arc<ServerConfig>,
    clients: HashMap<Expect, Arc<ClientConfig>>,
}

/// The crypto provider of every Strata TLS configuration (ring, rustls's default suites and order).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Certificates in a PEM file's bytes.
pub fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        expected: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// A trust store from a CA bundle's PEM bytes.
pub fn roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("CA bundle", path, pem)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("CA bundle {}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

fn config_error(e: impl fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

impl Loaded {
    fn read(files: &TlsFiles, revoked: &Revocations) -> Result<Loaded, TlsError> {
        // Stamped before reading: a change while reading is seen at the next check.
        let stamp = stamp(files);
        let ca = read("CA bundle", &files.ca)?;
        let cert = read("certificate", &files.cert)?;
        let key = read("key", &files.key)?;
        let roots = roots(&files.ca, &ca)?;
        let chain = certificates("certificate", &files.cert, &cert)?;
        let identity =
            Identity::from_certificate(&chain[0]).map_err(|source| TlsError::Identity {
                path: files.cert.clone(),
                source,
            })?;
        let validity = check_validity(&files.cert, &chain[0])?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Pem {
            what: "key",
            path: files.key.clone(),
            expected: "private key",
            detail: e.to_string(),
        })?;
        let provider = provider();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(config_error)?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(config_error)?;
        let mut clients = HashMap::new();
        for expect in Expect::ALL {
            let verifier = Arc::new(RoleVerifier {
                webpki: webpki.clone(),
                expect,
                revoked: revoked.clone(),
            });
            let client = client_config(&provider, verifier, Some((&chain, &key)))?;
            clients.insert(expect, Arc::new(client));
        }
        Ok(Loaded {
            stamp,
            identity,
            validity,
            server: Arc::new(server),
            clients,
        })
    }
}

/// A client configuration (HTTP/2, no SNI: servers are told apart by their certificates' identities, not
/// by names) presenting `identity` when given.
fn client_config(
    provider: &Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<(&Vec<CertificateDer<'static>>, &PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut client = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?,
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![b"h2".to_vec()];
    client.enable_sni = false;
    Ok(client)
}

/// Accepts any server certificate (signatures are still checked): see [`Transport::unverified`].
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The validity period of a DER certificate, unix seconds `(not_before, not_after)`.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// The clock, unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Refuses a certificate outside its validity period, with the dates (rustls would say only "expired");
/// returns the period.
fn check_validity(path: &Path, der: &[u8]) -> Result<(i64, i64), TlsError> {
    let Some((not_before, not_after)) = validity(der) else {
        // Identity parsing already succeeded; rustls will judge the rest.
        return Ok((i64::MIN, i64::MAX));
    };
    let now = unix_now();
    if now < not_before || now > not_after {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            not_before,
            not_after,
            now,
        });
    }
    Ok((not_before, not_after))
}

/// A server whose identity the cluster has revoked.
#[derive(Debug, thiserror::Error)]
#[error("the server is {0}, whose identity the cluster has revoked")]
struct RevokedServer(String);

/// A certificate that does not carry the identity a client expects.
#[derive(Debug, thiserror::Error)]
#[error("the server is {found}, but {expected} was expected")]
struct WrongRole {
    found: String,
    expected: Expect,
}

/// Checks the server's identity role against what the client expects, then the chain and that identity's
/// name with the standard WebPKI verifier (the address the client dialled plays no part).
#[derive(Debug)]
struct RoleVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expect: Expect,
    revoked: Revocations,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let other = |e: Arc<dyn std::error::Error + Send + Sync>| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                e,
            )))
        };
        let identity = Identity::from_certificate(end_entity).map_err(|e| other(Arc::new(e)))?;
        if !self.expect.admits(identity.role) {
            return Err(other(Arc::new(WrongRole {
                found: identity.to_string(),
                expected: self.expect,
            })));
        }
        if self.revoked.contains(&identity) {
            return Err(other(Arc::new(RevokedServer(identity.to_string()))));
        }
        let name = ServerName::try_from(identity.dns_name())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.webpki
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
