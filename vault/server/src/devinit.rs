//! Development PKI and data-directory initialisation (`idvault init --dev`).
//!
//! Makes a CA, a server certificate for `localhost`/`127.0.0.1`, and partner
//! client certificates carrying `spiffe://<trust-domain>/partner/<name>`
//! URI SANs, all ECDSA P-256. For development and tests only: production
//! certificates come from the operator's own CA.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::config::CONFIG_FILE;
use idvault_core::Rng;
use idvault_core::subject::FIELD_CATALOGUE;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};

/// Default development trust domain.
pub const DEV_TRUST_DOMAIN: &str = "idvault.dev";
/// Partners `init --dev` creates, with their roles.
pub const DEV_PARTNERS: &[(&str, &[&str])] = &[
    (
        "partner-a",
        &[
            "subjects.write",
            "subjects.verify",
            "subjects.delete",
            "subjects.match",
            "bridge.import",
            "tokens.tokenize",
            "tokens.detokenize",
            "devices.enroll",
            "consent.release",
            "events.publish",
            "commands.receive",
            "audit.read",
            "credentials.verify",
            "credentials.revoke",
            "transactions.request",
            "keys.admin",
        ],
    ),
    (
        "partner-b",
        &[
            "subjects.write",
            "subjects.verify",
            "subjects.match",
            "tokens.tokenize",
            "consent.release",
            "events.publish",
            "commands.receive",
            "audit.read",
            "transactions.request",
        ],
    ),
    // The development wallet app: relays device-signed calls.
    ("wallet", &["devices.wallet"]),
];

/// What each dev partner may receive with consent: `(name, purposes, fields)`.
/// partner-b is narrower so refusals by allowance can be tried.
pub const DEV_RELEASE_ALLOWANCES: &[(&str, &[&str], &[&str])] = &[
    (
        "partner-a",
        &["kyc", "account_opening"],
        // Every catalogue field but `account_number`, which is last.
        FIELD_CATALOGUE.split_at(FIELD_CATALOGUE.len() - 1).0,
    ),
    (
        "partner-b",
        &["kyc"],
        &["given_name", "family_name", "date_of_birth", "email"],
    ),
];

/// Errors making certificates or files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// rcgen failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// File I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Key file creation failed.
    #[error(transparent)]
    KeyFile(#[from] crate::keyfile::KeyFileError),
    /// RNG failure.
    #[error("random number generator failure")]
    Rng,
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (wiped on drop).
    pub key_pem: Zeroizing<String>,
    /// Serial number bytes (for CRLs).
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Issued(serial {}, key redacted)",
            hex::encode(&self.serial)
        )
    }
}

/// What a client certificate should contain (tests use the odd cases).
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Common name.
    pub common_name: String,
    /// URI SANs (a partner certificate has exactly one SPIFFE id).
    pub uri_sans: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl ClientSpec {
    /// A partner certificate valid from yesterday for `days`.
    pub fn partner(trust_domain: &str, name: &str, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: name.to_owned(),
            uri_sans: vec![format!("spiffe://{trust_domain}/partner/{name}")],
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// A certificate authority able to issue server and client certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// CA certificate PEM.
    pub cert_pem: String,
    key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa(redacted)")
    }
}

fn serial(rng: &dyn Rng) -> Result<Vec<u8>, InitError> {
    let mut s = vec![0u8; 16];
    rng.fill(&mut s).map_err(|_| InitError::Rng)?;
    if let Some(first) = s.first_mut() {
        // Positive and non-zero leading byte: a canonical 16-byte INTEGER.
        *first = (*first & 0x7f) | 0x40;
    }
    Ok(s)
}

impl DevCa {
    /// Generates a new CA valid for ten years.
    pub fn generate(common_name: &str, rng: &dyn Rng) -> Result<Self, InitError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "idvault development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(SerialNumber::from_slice(&serial(rng)?));
        let cert = params.self_signed(&key)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, InitError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: Zeroizing::new(key_pem.to_owned()),
        })
    }

    /// The CA private key PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a TLS server certificate for DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str], rng: &dyn Rng) -> Result<Issued, InitError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "idvault server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(825);
        self.sign_leaf(params, &key, rng)
    }

    /// Gives `params` a fresh random serial and signs them with this CA.
    fn sign_leaf(
        &self,
        mut params: CertificateParams,
        key: &KeyPair,
        rng: &dyn Rng,
    ) -> Result<Issued, InitError> {
        let s = serial(rng)?;
        params.serial_number = Some(SerialNumber::from_slice(&s));
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            serial: s,
        })
    }

    /// Issues a client certificate.
    pub fn issue_client(&self, spec: &ClientSpec, rng: &dyn Rng) -> Result<Issued, InitError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        for uri in &spec.uri_sans {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        self.sign_leaf(params, &key, rng)
    }

    /// A CRL revoking `serials`, valid for 30 days.
    pub fn crl(&self, serials: &[Vec<u8>]) -> Result<String, InitError> {
        let now = OffsetDateTime::now_utc();
        self.crl_valid(
            serials,
            now - Duration::minutes(5),
            now + Duration::days(30),
            1,
        )
    }

    /// A CRL number `number` revoking `serials`, issued at `this_update`
    /// and due for replacement at `next_update`.
    pub fn crl_valid(
        &self,
        serials: &[Vec<u8>],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        number: u64,
    ) -> Result<String, InitError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.to_owned(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)
}

/// The dev metrics address: loopback (whatever the gRPC host: metrics
/// carry no authentication) on port 9464 (the Prometheus port
/// convention), or port 0 when the gRPC port is 0 (tests).
fn dev_metrics_listen(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == 0 => "127.0.0.1:0".to_owned(),
        _ => "127.0.0.1:9464".to_owned(),
    }
}

/// The development config file text; `release_keys` are the dev
/// partners' release public keys `(name, hex)`.
pub fn dev_config(listen: &str, release_keys: &[(String, String)]) -> String {
    let mut s = format!(
        "# Written by `idvault init --dev`: development settings, not for production.\n\
         [server]\nlisten = \"{listen}\"\ntrust_domain = \"{DEV_TRUST_DOMAIN}\"\n\n\
         [keys]\nroot_key_file = \"root.key\"\n\n\
         [tls]\nclient_ca = \"tls/ca.crt\"\nserver_cert = \"tls/server.crt\"\nserver_key = \"tls/server.key\"\ncrls = []\n\n\
         [matching]\n# Phone numbers without a country code are read as UK numbers.\ndefault_country_code = 44\n\n\
         [policies]\n# Partner access policies (Cedar); `idvault policy check policies` validates them,\n\
         # SIGHUP reloads them.\ndir = \"policies\"\n\n\
         [metrics]\n# Prometheus scrapes http://{metrics}/metrics (docs/operations.md).\nlisten = \"{metrics}\"\n",
        metrics = dev_metrics_listen(listen)
    );
    for (name, roles) in DEV_PARTNERS {
        let roles = roles
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // Each dev partner tokenizes in its own domain; partner-a also in "logs".
        let domains = match *name {
            "partner-a" => format!("\"logs\", \"{name}\""),
            "wallet" => String::new(),
            _ => format!("\"{name}\""),
        };
        s.push_str(&format!(
            "\n[[partner]]\nname = \"{name}\"\nspiffe_id = \"spiffe://{DEV_TRUST_DOMAIN}/partner/{name}\"\nroles = [{roles}]\ntoken_domains = [{domains}]\n"
        ));
        let quoted = |xs: &[&str]| {
            xs.iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some((_, purposes, fields)) = DEV_RELEASE_ALLOWANCES.iter().find(|a| a.0 == *name)
            && let Some((_, key)) = release_keys.iter().find(|k| k.0 == *name)
        {
            s.push_str(&format!(
                "# Private half: tls/{name}.release.key\nrelease_key = \"{key}\"\nrelease_purposes = [{}]\nrelease_fields = [{}]\n",
                quoted(purposes),
                quoted(fields)
            ));
        }
    }
    s
}

/// The config `idvault init` (without `--dev`) writes: no partner is
/// registered until the operator adds one, so nothing is granted by default.
pub fn production_config(listen: &str) -> String {
    format!(
        "# Written by `idvault init`. Put your partner CA, server certificate and key\n\
         # at the [tls] paths and your trust domain below, then register partners.\n\
         [server]\nlisten = \"{listen}\"\ntrust_domain = \"example.org\"\n\n\
         [keys]\nroot_key_file = \"root.key\"\n\n\
         [tls]\nclient_ca = \"tls/ca.crt\"\nserver_cert = \"tls/server.crt\"\nserver_key = \"tls/server.key\"\ncrls = []\n\n\
         # [[partner]]\n# name = \"bank-a\"\n# spiffe_id = \"spiffe://example.org/partner/bank-a\"\n\
         # roles = [\"subjects.write\", \"subjects.verify\"]\n# token_domains = [\"bank-a\"]\n"
    )
}

/// Creates whatever part of a development data directory is missing:
/// root key, CA, server and partner certificates, config. Never replaces
/// an existing root key. Returns the paths it wrote.
pub fn init_dev(dir: &Path, listen: &str, rng: &dyn Rng) -> Result<Vec<PathBuf>, InitError> {
    init_dev_sealed(dir, listen, rng, None)
}

/// [`init_dev`] where the root key file may be sealed (created before by
/// `init --seal`): `pin_file` holds the token PIN, else the environment.
pub fn init_dev_sealed(
    dir: &Path,
    listen: &str,
    rng: &dyn Rng,
    pin_file: Option<&Path>,
) -> Result<Vec<PathBuf>, InitError> {
    let tls = dir.join("tls");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        // The data dir holds the database and keys: owner only.
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&tls).map_err(|source| InitError::Io {
        path: tls.clone(),
        source,
    })?;
    let mut made = Vec::new();
    let root = dir.join("root.key");
    if !root.exists() {
        crate::keyfile::create(&root, &crate::keyfile::Protection::Plain, None, rng)?;
        made.push(root.clone());
    }
    let (ca_crt, ca_key) = (tls.join("ca.crt"), tls.join("ca.key"));
    let ca = match (
        std::fs::read_to_string(&ca_crt),
        std::fs::read_to_string(&ca_key),
    ) {
        (Ok(c), Ok(k)) => DevCa::load(&c, &Zeroizing::new(k))?,
        _ => {
            let ca = DevCa::generate("idvault development CA", rng)?;
            write_file(&ca_crt, ca.cert_pem.as_bytes(), false)?;
            write_file(&ca_key, ca.key_pem().as_bytes(), true)?;
            made.extend([ca_crt, ca_key]);
            // A new CA invalidates every leaf: reissue them all.
            for f in std::fs::read_dir(&tls).into_iter().flatten().flatten() {
                let p = f.path();
                if p.file_stem().is_some_and(|s| s != "ca") {
                    let _ = std::fs::remove_file(p);
                }
            }
            ca
        }
    };
    let mut leaf =
        |name: &str, issue: &dyn Fn() -> Result<Issued, InitError>| -> Result<(), InitError> {
            let (crt, key) = (
                tls.join(format!("{name}.crt")),
                tls.join(format!("{name}.key")),
            );
            if crt.exists() && key.exists() {
                return Ok(());
            }
            let i = issue()?;
            write_file(&crt, i.cert_pem.as_bytes(), false)?;
            write_file(&key, i.key_pem.as_bytes(), true)?;
            made.extend([crt, key]);
            Ok(())
        };
    leaf("server", &|| {
        ca.issue_server(&["localhost", "127.0.0.1", "::1"], rng)
    })?;
    for (name, _) in DEV_PARTNERS {
        leaf(name, &|| {
            ca.issue_client(&ClientSpec::partner(DEV_TRUST_DOMAIN, name, 825), rng)
        })?;
    }
    let mut release_keys = Vec::new();
    for (name, _, _) in DEV_RELEASE_ALLOWANCES {
        let path = tls.join(format!("{name}.release.key"));
        let existing = std::fs::read_to_string(&path)
            .ok()
            .and_then(|pem| p256::SecretKey::from_pkcs8_pem(&Zeroizing::new(pem)).ok());
        let key = match existing {
            Some(k) => k,
            None => {
                let k = random_p256_key(rng)?;
                let pem = k
                    .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|_| InitError::Rng)?;
                write_file(&path, pem.as_bytes(), true)?;
                made.push(path);
                k
            }
        };
        let public = hex::encode(p256::PublicKey::from(&key).to_sec1_bytes());
        release_keys.push(((*name).to_owned(), public));
    }
    // The vault's release verification keys, where the dev partners'
    // command line looks for them (a real partner gets them from the
    // operator: `idvault keys release-public-key`). Rewritten every time:
    // they follow the root key's versions.
    let verifier_path = tls.join(RELEASE_VERIFIER_FILE);
    let keys =
        idvault_core::keys::KeyHierarchy::new(Box::new(crate::keyfile::load(&root, pin_file)?));
    let verifier = crate::service::consent::release_verifier(&keys).map_err(|_| InitError::Rng)?;
    let text = release_verifier_text(&verifier);
    if std::fs::read_to_string(&verifier_path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&verifier_path, text).map_err(|source| InitError::Io {
            path: verifier_path.clone(),
            source,
        })?;
        made.push(verifier_path);
    }
    // The default policy set, for the operator to read and edit.
    let policies = dir.join("policies");
    made.extend(
        crate::policy::write_defaults(&policies).map_err(|source| InitError::Io {
            path: policies.clone(),
            source,
        })?,
    );
    let cfg = dir.join(CONFIG_FILE);
    if !cfg.exists() {
        write_file(&cfg, dev_config(listen, &release_keys).as_bytes(), false)?;
        made.push(cfg);
    }
    Ok(made)
}

/// The file (under `tls/`) holding the vault's release verification keys
/// for the dev partners' command line.
pub const RELEASE_VERIFIER_FILE: &str = "vault.release.pub";

/// The text of a release verifier file: a comment, then one key per line
/// (hex), oldest version first.
pub fn release_verifier_text(v: &idvault_core::consent::ReleaseVerifier) -> String {
    let mut out = String::from("# idvault release verification keys (Ed25519), oldest first\n");
    for k in v.keys() {
        out.push_str(&hex::encode(k));
        out.push('\n');
    }
    out
}

/// A fresh P-256 key from `rng` (a dev partner's release key; the partner
/// side opens releases with it through `idvault_client::ReleaseKey`).
fn random_p256_key(rng: &dyn Rng) -> Result<p256::SecretKey, InitError> {
    loop {
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill(b.as_mut()).map_err(|_| InitError::Rng)?;
        if let Ok(k) = p256::SecretKey::from_slice(b.as_ref()) {
            return Ok(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_a_may_receive_every_field_but_account_numbers() {
        let (_, _, fields) = DEV_RELEASE_ALLOWANCES[0];
        assert_eq!(fields.len(), FIELD_CATALOGUE.len() - 1);
        assert!(!fields.contains(&"account_number"));
        assert!(fields.contains(&"country") && fields.contains(&"given_name"));
    }
}
