//! The TLS flags every Strata binary takes (`--tls-dir`, `--tls-ca`, `--tls-cert`, `--tls-key`, `--insecure`,
//! and their `STRATA_TLS_*` environment variables), and the rule that a plain server listens on loopback
//! only, unless the operator says `--insecure`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::tls::{TlsError, TlsFiles, Transport};

/// Mutual-TLS flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Mutual TLS: a directory holding ca.pem (the cluster CA bundle), cert.pem and key.pem (this process's
    /// identity), as `strata cert issue` and joining write them.
    #[arg(long, global = true, env = "STRATA_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Mutual TLS: the cluster CA bundle (PEM; default: TLS_DIR/ca.pem).
    #[arg(long, global = true, env = "STRATA_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: this process's certificate chain (PEM; default: TLS_DIR/cert.pem).
    #[arg(long, global = true, env = "STRATA_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: this process's private key (PEM; default: TLS_DIR/key.pem).
    #[arg(long, global = true, env = "STRATA_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP/2 on an address that is not loopback: anyone who reaches it may push models,
    /// register as an agent and receive users' data. For isolated test networks only.
    #[arg(long, global = true, env = "STRATA_INSECURE")]
    pub insecure: bool,
}

/// TLS flags that do not make a transport.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// Some files named, others not.
    #[error(
        "incomplete TLS flags: {0} is missing (give --tls-dir, or all of --tls-ca, --tls-cert and --tls-key)"
    )]
    Incomplete(&'static str),
    /// The files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A plain server on a non-loopback address without `--insecure`.
    #[error(
        "refusing to serve without TLS on {0}, which is not a loopback address: anyone who can reach it could push models, join as an agent and receive users' data. Give --tls-dir (make the material with `strata ca init` and `strata cert issue`), or --insecure to accept that"
    )]
    Insecure(String),
}

impl TlsArgs {
    /// The TLS files the flags name, if any.
    pub fn files(&self) -> Result<Option<TlsFiles>, ArgsError> {
        let from_dir = self.tls_dir.as_deref().map(TlsFiles::in_dir);
        let pick = |flag: &Option<PathBuf>, dir: Option<PathBuf>| flag.clone().or(dir);
        let ca = pick(&self.tls_ca, from_dir.as_ref().map(|f| f.ca.clone()));
        let cert = pick(&self.tls_cert, from_dir.as_ref().map(|f| f.cert.clone()));
        let key = pick(&self.tls_key, from_dir.as_ref().map(|f| f.key.clone()));
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            (None, _, _) => Err(ArgsError::Incomplete("the CA bundle (--tls-ca)")),
            (_, None, _) => Err(ArgsError::Incomplete("the certificate (--tls-cert)")),
            (_, _, None) => Err(ArgsError::Incomplete("the key (--tls-key)")),
        }
    }

    /// The transport the flags describe: mutual TLS when files are named, else plain.
    pub fn transport(&self) -> Result<Transport, ArgsError> {
        Ok(match self.files()? {
            Some(files) => Transport::tls(files)?,
            None => Transport::Plain,
        })
    }

    /// The transport for a server listening on `listen`: plain is allowed on loopback only, unless
    /// `--insecure` was given (then it is logged loudly).
    pub fn server_transport(&self, listen: &str) -> Result<Transport, ArgsError> {
        let transport = self.transport()?;
        if !transport.is_tls() && !is_loopback(listen) {
            if !self.insecure {
                return Err(ArgsError::Insecure(listen.to_string()));
            }
            tracing::warn!(
                listen,
                "serving WITHOUT TLS on a non-loopback address (--insecure): no caller is authenticated"
            );
        }
        Ok(transport)
    }
}

/// Whether `address` (`host:port`) can only be reached from this machine: a loopback IP, or `localhost`.
pub fn is_loopback(address: &str) -> bool {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_loopback() {
        for a in [
            "127.0.0.1:7400",
            "[::1]:7400",
            "localhost:7400",
            "127.9.9.9:1",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "0.0.0.0:7400",
            "[::]:7400",
            "10.0.0.1:7400",
            "example.com:7400",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn plain_off_loopback_needs_insecure() {
        let args = TlsArgs::default();
        assert!(args.server_transport("127.0.0.1:0").is_ok());
        assert!(matches!(
            args.server_transport("0.0.0.0:0"),
            Err(ArgsError::Insecure(_))
        ));
        let insecure = TlsArgs {
            insecure: true,
            ..TlsArgs::default()
        };
        assert!(insecure.server_transport("0.0.0.0:0").is_ok());
        let partial = TlsArgs {
            tls_ca: Some("ca.pem".into()),
            ..TlsArgs::default()
        };
        assert!(matches!(partial.files(), Err(ArgsError::Incomplete(_))));
    }
}
