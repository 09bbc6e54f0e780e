//! The cluster CA: makes itself, issues certificates for identities, signs nodes' certificate requests.
//!
//! Keys are ECDSA P-256. A certificate carries its identity as its only `id.strata` DNS name (plus any host
//! names or addresses an operator adds for tools that check those), is usable as both a TLS server and a
//! TLS client, and starts five minutes in the past (clock skew between machines). Signing a request takes
//! only its public key from it: the identity, names and lifetime are the CA's decision, never the
//! requester's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::Digest as _;

use crate::identity::Identity;

/// How long a CA made by [`Ca::generate`] is valid by default.
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far back a new certificate's validity starts (clock skew between machines).
const SKEW: Duration = Duration::from_secs(300);

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file would be overwritten.
    #[error("{} exists; refusing to overwrite a CA (move it away first)", .0.display())]
    Exists(PathBuf),
    /// rcgen refused (a malformed request or key, an unsupported algorithm).
    #[error("{what}: {detail}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// rcgen's reason.
        detail: String,
    },
}

fn cert_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |e| CaError::Certificate {
        what,
        detail: e.to_string(),
    }
}

/// A certificate and the key it certifies, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

/// A CA that can sign: its certificate and its key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - SKEW;
    params.not_after = now + ttl;
}

fn serial(public_key: &[u8]) -> SerialNumber {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hash = sha2::Sha256::new();
    hash.update(public_key);
    hash.update(now.to_le_bytes());
    let mut bytes = hash.finalize()[..16].to_vec();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn leaf_params(
    identity: &Identity,
    hosts: &[String],
    ttl: Duration,
) -> Result<CertificateParams, CaError> {
    let mut names = vec![identity.dns_name()];
    names.extend(hosts.iter().cloned());
    let mut params = CertificateParams::new(names).map_err(cert_error("subject names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, identity.dns_name());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, ttl);
    Ok(params)
}

impl Ca {
    /// A new self-signed CA named `name`, valid for `ttl`.
    pub fn generate(name: &str, ttl: Duration) -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(cert_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial(key.public_key_raw()));
        validity(&mut params, ttl);
        let cert = params
            .self_signed(&key)
            .map_err(cert_error("signing the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM), e.g. one an operator brings from cert-manager or Vault.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error("the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_error("the CA certificate"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA in `dir` (`ca.pem`, `ca-key.pem`).
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
        };
        Ca::from_pem(&read("ca.pem")?, &read("ca-key.pem")?)
    }

    /// Writes `ca.pem` and `ca-key.pem` (owner-only) into `dir`, refusing to overwrite either.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca-key.pem");
        for path in [&cert, &key] {
            if path.exists() {
                return Err(CaError::Exists(path.clone()));
            }
        }
        write_file(&key, self.issuer.key().serialize_pem().as_bytes(), true)?;
        write_file(&cert, self.cert_pem.as_bytes(), false)
    }

    /// The CA's certificate (PEM): the bundle every member of the cluster trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A new key and a certificate for `identity` (and `hosts`: extra DNS names or IP addresses), valid
    /// for `ttl`.
    pub fn issue(
        &self,
        identity: &Identity,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let key = KeyPair::generate().map_err(cert_error("generating a key"))?;
        let mut params = leaf_params(identity, hosts, ttl)?;
        params.serial_number = Some(serial(key.public_key_raw()));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error("signing the certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate request (PEM) for `identity`: only the request's public key is used.
    pub fn sign(
        &self,
        request_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<String, CaError> {
        let request = CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(cert_error("the certificate request"))?;
        let mut params = leaf_params(identity, &[], ttl)?;
        params.serial_number = Some(serial(&request.public_key.raw_bytes_owned()));
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(cert_error("signing the certificate request"))?;
        Ok(cert.pem())
    }
}

trait RawBytes {
    fn raw_bytes_owned(&self) -> Vec<u8>;
}

impl RawBytes for rcgen::PublicKey {
    fn raw_bytes_owned(&self) -> Vec<u8> {
        rcgen::PublicKeyData::der_bytes(self).to_vec()
    }
}

/// A new key and a certificate request for it (PEM each), to send to a CA that decides the identity.
pub fn request() -> Result<Issued, CaError> {
    let key = KeyPair::generate().map_err(cert_error("generating a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(cert_error("making the certificate request"))?;
    Ok(Issued {
        cert_pem: csr.pem().map_err(cert_error("encoding the request"))?,
        key_pem: key.serialize_pem(),
    })
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` (owner-only) into `dir` (created if missing), each through a
/// temporary file and a rename, the key and certificate last: a process watching the directory never reads
/// half a file.
pub fn write_credentials(dir: &Path, ca_pem: &str, issued: &Issued) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&dir.join("ca.pem"), ca_pem.as_bytes(), false)?;
    write_file(&dir.join("key.pem"), issued.key_pem.as_bytes(), true)?;
    write_file(&dir.join("cert.pem"), issued.cert_pem.as_bytes(), false)
}

/// Writes `bytes` to `path` through a temporary file and a rename; `secret` files are owner-only.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The one certificate of a PEM bundle whose SHA-256 is `sha256` (lower-case hex), as PEM: what a joining
/// node trusts, and nothing else the bundle carries (a man in the middle could append his own CA).
pub fn pinned(bundle_pem: &str, sha256: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = bundle_pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let block = &rest[start..];
        let end = block.find(END)? + END.len();
        let cert = &block[..end];
        if fingerprint(cert).as_deref() == Some(sha256) {
            return Some(format!("{cert}\n"));
        }
        rest = &block[end..];
    }
    None
}

/// The SHA-256 of the first certificate in a PEM bundle, lower-case hex: how a joining node pins the CA
/// before it trusts anything the control plane says.
pub fn fingerprint(ca_pem: &str) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()?
        .ok()?;
    Some(
        sha2::Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;
    use strata_core::Tier;

    #[test]
    fn issued_certificates_carry_the_identity_the_ca_chose() {
        let ca = Ca::generate("test", CA_TTL).expect("ca");
        let edge = Identity::new("gw-1", Role::Node(Tier::Edge)).expect("id");
        let issued = ca
            .issue(&edge, &["localhost".into(), "127.0.0.1".into()], CA_TTL)
            .expect("issue");
        let der = crate::tls::certificates("cert", Path::new("x"), issued.cert_pem.as_bytes())
            .expect("pem");
        assert_eq!(Identity::from_certificate(&der[0]).expect("identity"), edge);

        // A request is signed for the identity the CA decides, whatever the requester put in it.
        let req = request().expect("csr");
        let cloud = Identity::new("gw-1", Role::Node(Tier::Cloud)).expect("id");
        let pem = ca.sign(&req.cert_pem, &cloud, CA_TTL).expect("sign");
        let der = crate::tls::certificates("cert", Path::new("x"), pem.as_bytes()).expect("pem");
        assert_eq!(
            Identity::from_certificate(&der[0]).expect("identity"),
            cloud
        );
        assert!(ca.sign("garbage", &cloud, CA_TTL).is_err());
    }

    #[test]
    fn a_ca_survives_being_written_and_read_back_and_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::generate("test", CA_TTL).expect("ca");
        ca.write(dir.path()).expect("write");
        assert!(matches!(ca.write(dir.path()), Err(CaError::Exists(_))));
        let other = Ca::generate("other", CA_TTL).expect("ca");
        let pin = fingerprint(ca.cert_pem()).expect("fingerprint");
        let bundle = format!("{}{}", ca.cert_pem(), other.cert_pem());
        let kept = pinned(&bundle, &pin).expect("the pinned certificate");
        assert_eq!(fingerprint(&kept), Some(pin.clone()));
        assert_eq!(
            kept.matches("BEGIN CERTIFICATE").count(),
            1,
            "only the pinned one"
        );
        let appended = format!("{}{}", other.cert_pem(), ca.cert_pem());
        assert_eq!(
            pinned(&appended, &pin).and_then(|k| fingerprint(&k)),
            Some(pin)
        );
        assert_eq!(pinned(other.cert_pem(), &"0".repeat(64)), None);
        let back = Ca::load(dir.path()).expect("load");
        assert_eq!(back.cert_pem(), ca.cert_pem());
        assert_eq!(
            fingerprint(back.cert_pem()),
            fingerprint(ca.cert_pem()),
            "same CA"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the CA key is owner-only");
        }
    }
}
