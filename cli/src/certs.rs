//! `strata ca init`, `strata cert issue`, and the certificates `strata up` makes for itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use strata_core::Tier;
use strata_trust::ca::{self, CA_TTL, Ca};
use strata_trust::{Identity, Role, TlsFiles, Transport};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// `strata ca init`: a new cluster CA in `dir` (`ca.pem` for every member, `ca-key.pem` to keep secret).
pub fn init(dir: &Path, name: &str, days: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = Ca::generate(name, DAY * days.max(1) as u32)?;
    ca.write(dir)?;
    say!(
        "cluster CA \"{name}\" written to {}:\n  ca.pem      the CA certificate: give it to every server, agent and device\n  ca-key.pem  its key: keep it secret (only `strata cert issue` and control planes that admit joining nodes need it)\nfingerprint (sha256): {}\nnext: strata cert issue --ca-dir {} --role controller --name cp --out cp-tls",
        dir.display(),
        ca::fingerprint(ca.cert_pem()).unwrap_or_default(),
        dir.display()
    )?;
    Ok(())
}

/// The identity for `--role` and `--name`.
pub fn identity(role: &str, name: &str) -> Result<Identity> {
    let role = Role::from_label(role).with_context(|| {
        format!(
            "--role {role}: expected one of {}",
            Role::ALL.map(Role::label).join(", ")
        )
    })?;
    Ok(Identity::new(name, role)?)
}

/// `strata cert issue`: a key and a certificate for an identity, signed by the CA in `ca_dir`, written
/// with the CA bundle to `out` (`ca.pem`, `cert.pem`, `key.pem`: what `--tls-dir` reads).
pub fn issue(
    ca_dir: &Path,
    identity: &Identity,
    hosts: &[String],
    days: u64,
    out: &Path,
) -> Result<()> {
    let ca = Ca::load(ca_dir).context("cannot load the CA (make one with `strata ca init`)")?;
    let issued = ca.issue(identity, hosts, DAY * days.max(1) as u32)?;
    ca::write_credentials(out, ca.cert_pem(), &issued)?;
    say!(
        "{identity} ({}) valid {days} days, written to {}: use it with --tls-dir {}",
        identity.dns_name(),
        out.display(),
        out.display()
    )?;
    Ok(())
}

/// The TLS material of `strata up`, in `data_dir/tls`: a CA made once (kept across restarts) and fresh
/// certificates for the control plane, the two agents and the local administrator.
pub struct UpTls {
    /// The control plane's transport.
    pub controller: Transport,
    /// The edge agent's.
    pub edge: Transport,
    /// The cloud agent's.
    pub cloud: Transport,
    /// Where the administrator's credentials are (for `--tls-dir`).
    pub admin_dir: PathBuf,
    /// The CA (it signs the certificates of nodes that join with a token).
    pub ca: std::sync::Arc<Ca>,
}

/// Makes (or reuses) `strata up`'s CA and issues its certificates.
pub fn up_material(data_dir: &Path) -> Result<UpTls> {
    let root = data_dir.join("tls");
    let ca_dir = root.join("ca");
    let ca = if ca_dir.join("ca.pem").exists() {
        Ca::load(&ca_dir)?
    } else {
        std::fs::create_dir_all(&ca_dir)
            .with_context(|| format!("cannot create {}", ca_dir.display()))?;
        restrict(&root)?;
        let ca = Ca::generate("strata up", CA_TTL)?;
        ca.write(&ca_dir)?;
        ca
    };
    let ttl = DAY * 30;
    let make = |name: &str, role: Role| -> Result<PathBuf> {
        let dir = root.join(name);
        let issued = ca.issue(&Identity::new(name, role)?, &[], ttl)?;
        ca::write_credentials(&dir, ca.cert_pem(), &issued)?;
        Ok(dir)
    };
    let controller = make("controller", Role::Controller)?;
    let edge = make("edge", Role::Node(Tier::Edge))?;
    let cloud = make("cloud", Role::Node(Tier::Cloud))?;
    let admin_dir = make("admin", Role::Admin)?;
    let transport = |dir: &Path| Transport::tls(TlsFiles::in_dir(dir));
    Ok(UpTls {
        controller: transport(&controller)?,
        edge: transport(&edge)?,
        cloud: transport(&cloud)?,
        admin_dir,
        ca: std::sync::Arc::new(ca),
    })
}

/// Makes a directory owner-only (the CA key lives under it).
fn restrict(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}
