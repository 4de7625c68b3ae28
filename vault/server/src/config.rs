//! The configuration file (`idvault.toml`) and the partner registry.
//!
//! Unknown keys are refused (`deny_unknown_fields`) so a misspelt setting
//! fails at start instead of being silently ignored. Relative paths are
//! resolved against the directory holding the config file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use idvault_core::partner::{
    DEFAULT_MATCH_BURST, DEFAULT_MATCH_RATE, DEFAULT_OUTBOX_PER_SOURCE, MAX_OUTBOX_PER_SOURCE,
    MatchRate, Partner, PartnerRegistry, valid_partner_name, valid_trust_domain,
};
use idvault_policies::Role;
use serde::Deserialize;

/// Name of the config file inside a data directory.
pub const CONFIG_FILE: &str = "idvault.toml";

/// Configuration errors; they name the setting, never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown or mistyped key.
    #[error("{path}: {message}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`
    pub server: ServerSection,
    /// `[storage]`
    #[serde(default)]
    pub storage: StorageSection,
    /// `[keys]`
    pub keys: KeysSection,
    /// `[tls]`
    pub tls: TlsSection,
    /// `[matching]`
    #[serde(default)]
    pub matching: MatchingSection,
    /// `[consent]`
    #[serde(default)]
    pub consent: ConsentSection,
    /// `[policies]`
    #[serde(default)]
    pub policies: PoliciesSection,
    /// `[audit]`
    #[serde(default)]
    pub audit: AuditSection,
    /// `[retention]`
    #[serde(default)]
    pub retention: RetentionSection,
    /// `[credentials]`
    #[serde(default)]
    pub credentials: CredentialsSection,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[log]`
    #[serde(default)]
    pub log: LogSection,
    /// `[backup]`
    #[serde(default)]
    pub backup: BackupSection,
    /// `[[partner]]` entries: the partner registry.
    #[serde(default, rename = "partner")]
    pub partners: Vec<PartnerEntry>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// SPIFFE trust domain of partner certificates.
    pub trust_domain: String,
    /// Largest request or response message, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Deadline applied to every RPC (a shorter client deadline wins).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Deadline of a whole streaming call (bridge import, log tokenizing).
    #[serde(default = "default_stream_timeout")]
    pub stream_timeout_secs: u64,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Calls the identities every phone shares (wallet apps', role
    /// `devices.wallet`) may have open from one host (an IPv4 address, an
    /// IPv6 /64; twice that from one IPv4 /24 or IPv6 /48), of the
    /// 512 they share (`crate::sources`). Behind something that hides
    /// phones' addresses (a TCP load balancer without the PROXY protocol,
    /// which the vault does not read) every phone comes from one host:
    /// raising the three `shared_*_per_source` settings to their pools
    /// lets phones in again, and lets one holder of the app's certificate
    /// take every place again.
    #[serde(default = "default_shared_calls_per_source")]
    pub shared_calls_per_source: usize,
    /// Connections those identities may hold open from one host (twice
    /// that from one network), of the 2,048 they share.
    #[serde(default = "default_shared_connections_per_source")]
    pub shared_connections_per_source: usize,
    /// Requests those identities may have in flight from one host (twice
    /// that from one network), of the 256 they share.
    #[serde(default = "default_shared_requests_per_source")]
    pub shared_requests_per_source: usize,
    /// TLS handshakes in progress from one host (twice that from one
    /// network), of the 1,024 everyone shares, counted from the TCP
    /// accept, before any certificate (`crate::tls::HANDSHAKES_PER_SOURCE`).
    /// Behind something that hides clients' addresses every client comes
    /// from one host: raise it towards 1,024 there (which lets anyone
    /// reaching the vault hold every place with idle connections again).
    #[serde(default = "default_handshakes_per_source")]
    pub handshakes_per_source: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_max_message() -> usize {
    1024 * 1024
}
fn default_request_timeout() -> u64 {
    30
}
fn default_stream_timeout() -> u64 {
    3600
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_shared_calls_per_source() -> usize {
    crate::sources::SHARED_CALLS_PER_SOURCE
}
fn default_shared_connections_per_source() -> usize {
    crate::sources::SHARED_CONNECTIONS_PER_SOURCE
}
fn default_shared_requests_per_source() -> usize {
    crate::sources::SHARED_IN_FLIGHT_PER_SOURCE
}
fn default_handshakes_per_source() -> usize {
    crate::tls::HANDSHAKES_PER_SOURCE
}

/// `[storage]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `sqlite:…` or `postgres://…`; default: SQLite `idvault.db` beside the config.
    pub database_url: Option<String>,
}

/// `[keys]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Root key file (mode 0600), plain or sealed (docs/keys.md).
    pub root_key_file: PathBuf,
    /// File holding the PKCS#11 token PIN of a sealed key file (mode
    /// 0600); without it the PIN comes from `IDVAULT_PKCS11_PIN`.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// CA that issues partner client certificates (PEM).
    pub client_ca: PathBuf,
    /// Server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// Server private key (PEM).
    pub server_key: PathBuf,
    /// Certificate revocation lists (PEM or DER) checked for client
    /// certificates, for the whole chain. Reloaded on SIGHUP and when a
    /// file changes; connections of a newly revoked certificate close.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// A CRL past its `nextUpdate`: `"refuse"` (default) refuses the
    /// certificates it covers, `"warn"` keeps using it and logs an error.
    #[serde(default)]
    pub stale_crl: crate::crl::StaleCrl,
    /// How often the CRL files are checked for changes, in seconds
    /// (1–3600, default 10).
    #[serde(default = "default_crl_poll_seconds")]
    pub crl_poll_seconds: u64,
}

fn default_crl_poll_seconds() -> u64 {
    10
}

/// `[matching]`: settings of blind matching (docs/blind-matching.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchingSection {
    /// Country calling code for phone numbers written without one, so that
    /// "07700 900123" and "+44 7700 900123" agree. Changing it changes the
    /// phone indexes of subjects written afterwards only.
    pub default_country_code: Option<u16>,
}

/// `[policies]`: where the partner access policies are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesSection {
    /// Directory holding one `.cedarschema` file and the `.cedar` policy
    /// files (default: the built-in set, `policies/default/`).
    pub dir: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus endpoint (docs/operations.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where `GET /metrics` is served (plain HTTP: a loopback or
    /// monitoring-network address). Absent: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

/// `[log]`: what the log lines look like.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` (the default) or `json` (one object per line); the
    /// `--log-format` flag wins over it.
    #[serde(default)]
    pub format: crate::logging::LogFormat,
}

/// `[backup]`: backups and the deletion journal (docs/operations.md,
/// "Backup and restore").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// The deletion journal: every committed deletion is appended here,
    /// outside the database, so `idvault restore` can shred again whoever
    /// was deleted after a backup was taken. Keep it on other storage than
    /// the database and the backups. An empty string turns it off.
    #[serde(default = "default_shred_log")]
    pub shred_log: PathBuf,
}

impl Default for BackupSection {
    fn default() -> Self {
        Self {
            shred_log: default_shred_log(),
        }
    }
}

fn default_shred_log() -> PathBuf {
    PathBuf::from("shreds.log")
}

impl Config {
    /// The deletion journal's path, unless turned off.
    pub fn shred_log_path(&self) -> Option<PathBuf> {
        let p = &self.file.backup.shred_log;
        (!p.as_os_str().is_empty()).then(|| self.resolve(p))
    }
}

/// `[audit]`: the transparency log's checkpoints (docs/audit.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The log's origin line, also the signed-note key name: a unique,
    /// schema-less URL naming this log.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// How often the sequencer extends the tree and signs a checkpoint
    /// while there are new leaves.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
}

/// `[retention]`: how long spent single-use records and processed events
/// are kept before the retention job removes them (docs/events.md,
/// docs/consent.md). Subjects, receipts, consents and the audit log are
/// never pruned by it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// How often the job runs.
    #[serde(default = "default_retention_interval")]
    pub interval_minutes: u32,
    /// Expired challenges and enrollment codes are removed this long after
    /// they expire (an expired one is refused whether its row is there or
    /// not), and the status entries of expired credentials this long plus
    /// the clock skew after their `exp`.
    #[serde(default = "default_expired_grace")]
    pub expired_grace_hours: u32,
    /// Processed events are kept this long: within it a republished event
    /// id is recognised as a duplicate; after it, it is an event again.
    #[serde(default = "default_event_days")]
    pub events_days: u32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            interval_minutes: default_retention_interval(),
            expired_grace_hours: default_expired_grace(),
            events_days: default_event_days(),
        }
    }
}

fn default_retention_interval() -> u32 {
    60
}
fn default_expired_grace() -> u32 {
    24
}
fn default_event_days() -> u32 {
    90
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            origin: default_origin(),
            checkpoint_interval_ms: default_checkpoint_interval(),
        }
    }
}

fn default_origin() -> String {
    "idvault.local/audit".into()
}
fn default_checkpoint_interval() -> u64 {
    500
}

/// `[credentials]`: digital IDs (docs/digital-id.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSection {
    /// The `iss` of every credential: a URL or URN naming this vault.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// The credential type (`vct`).
    #[serde(default = "default_vct")]
    pub vct: String,
    /// How long a credential is valid.
    #[serde(default = "default_credential_days")]
    pub lifetime_days: u32,
    /// Oldest key binding `VerifyPresentation` accepts (KB-JWT `iat`).
    #[serde(default = "default_kb_age")]
    pub max_presentation_age_seconds: u32,
    /// Where status lists live: list N is `<status_list_base>/N` (the
    /// `uri` of a credential's `status` claim and the `sub` of the list's
    /// token). Default: `<issuer>/statuslists`.
    #[serde(default)]
    pub status_list_base: Option<String>,
    /// Each status list holds 2^this credentials (one bit each; 20 =
    /// 1,048,576 entries, 128 KiB before compression); a full list is
    /// followed by the next.
    #[serde(default = "default_status_log2")]
    pub status_list_size_log2: u32,
    /// The status list token's `ttl` and how often the vault re-signs it;
    /// a revocation re-signs at once (on the replica that made it). Its
    /// `exp` is four times this after its `iat`.
    #[serde(default = "default_status_ttl")]
    pub status_list_ttl_seconds: u32,
    /// Digital IDs one device may have been issued that have not expired
    /// yet, revoked ones included (each holds a status-list entry until it
    /// expires): past it, IssueCredential is refused until some expire. A
    /// device issuing and revoking in a loop would otherwise fill status
    /// lists and have every list built and signed again after each
    /// revocation.
    #[serde(default = "default_max_per_device")]
    pub max_per_device: u32,
}

impl CredentialsSection {
    /// The base URI of the status lists.
    pub fn status_list_base(&self) -> String {
        self.status_list_base
            .clone()
            .map(|b| b.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("{}/statuslists", self.issuer.trim_end_matches('/')))
    }
}

impl Default for CredentialsSection {
    fn default() -> Self {
        Self {
            issuer: default_issuer(),
            vct: default_vct(),
            lifetime_days: default_credential_days(),
            max_presentation_age_seconds: default_kb_age(),
            status_list_base: None,
            status_list_size_log2: default_status_log2(),
            status_list_ttl_seconds: default_status_ttl(),
            max_per_device: default_max_per_device(),
        }
    }
}

fn default_issuer() -> String {
    "https://idvault.local".into()
}
fn default_vct() -> String {
    idvault_core::sdjwt::DEFAULT_VCT.into()
}
fn default_credential_days() -> u32 {
    30
}
fn default_kb_age() -> u32 {
    300
}
fn default_status_log2() -> u32 {
    20
}
fn default_status_ttl() -> u32 {
    300
}
fn default_max_per_device() -> u32 {
    64
}

/// `[consent]`: lifetimes of consent-signed release (docs/consent.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSection {
    /// How long a challenge may be used after it is issued.
    #[serde(default = "default_challenge_ttl")]
    pub challenge_ttl_seconds: u32,
    /// How long an enrollment code works.
    #[serde(default = "default_enrollment_ttl")]
    pub enrollment_code_ttl_seconds: u32,
    /// Longest lifetime (expires_at − issued_at) of a single-use grant.
    #[serde(default = "default_single_use")]
    pub max_single_use_seconds: u32,
    /// Longest lifetime of a standing grant, in days.
    #[serde(default = "default_standing_days")]
    pub max_standing_days: u32,
    /// Clock skew tolerated between phones and the vault.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u32,
}

impl Default for ConsentSection {
    fn default() -> Self {
        Self {
            challenge_ttl_seconds: default_challenge_ttl(),
            enrollment_code_ttl_seconds: default_enrollment_ttl(),
            max_single_use_seconds: default_single_use(),
            max_standing_days: default_standing_days(),
            clock_skew_seconds: default_skew(),
        }
    }
}

fn default_challenge_ttl() -> u32 {
    300
}
fn default_enrollment_ttl() -> u32 {
    900
}
fn default_single_use() -> u32 {
    600
}
fn default_standing_days() -> u32 {
    365
}
fn default_skew() -> u32 {
    120
}

impl ConsentSection {
    /// The limits the core applies to grants and device requests.
    pub fn limits(&self) -> idvault_core::consent::ConsentLimits {
        idvault_core::consent::ConsentLimits {
            max_single_use_secs: i64::from(self.max_single_use_seconds),
            max_standing_secs: i64::from(self.max_standing_days) * 86_400,
            skew_secs: i64::from(self.clock_skew_seconds),
            challenge_ttl_secs: i64::from(self.challenge_ttl_seconds),
        }
    }
}

/// One `[[partner]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerEntry {
    /// Short name, e.g. `partner-a`.
    pub name: String,
    /// `spiffe://<trust-domain>/partner/<name>`.
    pub spiffe_id: String,
    /// Role names (see `idvault_policies::Role`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Token domains this partner may tokenize in through the vault.
    #[serde(default)]
    pub token_domains: Vec<String>,
    /// Blind-matching key domain (default: the partner name). Partners
    /// sharing a domain share blind-index keys; see docs/blind-matching.md.
    pub match_domain: Option<String>,
    /// Sustained match queries per second (default 50).
    pub match_queries_per_second: Option<u32>,
    /// Match queries allowed in a burst (default 100; at least the largest
    /// batch the partner sends).
    pub match_burst: Option<u32>,
    /// HPKE public key consented releases are sealed to: hex of the SEC1
    /// uncompressed P-256 point (`idvault partner release-keygen` prints it).
    pub release_key: Option<String>,
    /// Purpose codes this partner may receive consented data for.
    #[serde(default)]
    pub release_purposes: Vec<String>,
    /// Catalogue fields this partner may receive with consent.
    #[serde(default)]
    pub release_fields: Vec<String>,
    /// Audiences besides its SPIFFE id (its own web origins, say) that
    /// digital-ID presentations it asks the vault to verify may name.
    #[serde(default)]
    pub presentation_audiences: Vec<String>,
    /// Commands from any one publisher that may wait, unacknowledged, in
    /// this partner's outbox (1 ..= 10,000, the default). That publisher's
    /// events that would pass it are refused with RESOURCE_EXHAUSTED and
    /// change nothing; other publishers' events are not affected
    /// (docs/events.md, "Bounds").
    pub outbox_per_source: Option<u32>,
}

/// A loaded and validated configuration with absolute paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file as parsed.
    pub file: ConfigFile,
    /// Directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// The registry.
    pub registry: PartnerRegistry,
}

impl Config {
    /// Parses and validates config text; `base_dir` resolves relative paths.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(&e, text),
        })?;
        let registry = validate(&file)?;
        Ok(Self {
            file,
            base_dir: base_dir.to_owned(),
            registry,
        })
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::parse(&text, path, &base)
    }

    /// Resolves a configured path.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The database URL (configured, or SQLite beside the config).
    pub fn database_url(&self) -> String {
        self.file.storage.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.base_dir.join("idvault.db").display()
            )
        })
    }
}

/// A parse error's position and message, never the text around it: the
/// `Display` of toml's error quotes the offending line, which may hold a
/// database password (a misspelt `database_url`) or a key, and serde's
/// messages quote string values (`invalid type: string "…"`), so quoted
/// text is left out too.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    // Everything from the first quote on is left out (a quoted value may
    // hold escaped quotes, so no attempt is made to find where it ends).
    let full = e.message();
    let message = match full.find('"') {
        Some(i) => format!("{}\"…", full.get(..i).unwrap_or_default()),
        None => full.to_owned(),
    };
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

fn validate(file: &ConfigFile) -> Result<PartnerRegistry, ConfigError> {
    let td = &file.server.trust_domain;
    if !valid_trust_domain(td) {
        return Err(ConfigError::Invalid(format!(
            "server.trust_domain '{td}' is not a valid trust domain"
        )));
    }
    if file.server.max_message_bytes < 1024 || file.server.max_message_bytes > 64 * 1024 * 1024 {
        return Err(ConfigError::Invalid(
            "server.max_message_bytes must be 1 KiB ..= 64 MiB".into(),
        ));
    }
    let a = &file.audit;
    if a.origin.is_empty()
        || a.origin.len() > 200
        || a.origin
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '+')
    {
        return Err(ConfigError::Invalid(
            "[audit] origin must be 1..=200 characters, no spaces or '+' (it names the signing key)".into(),
        ));
    }
    if !(10..=1000).contains(&a.checkpoint_interval_ms) {
        return Err(ConfigError::Invalid(
            "[audit] checkpoint_interval_ms must be 10 ..= 1000 (a checkpoint at least once a second)".into(),
        ));
    }
    let r = &file.retention;
    if !(1..=7 * 24 * 60).contains(&r.interval_minutes)
        || r.expired_grace_hours > 24 * 366
        || !(1..=3660).contains(&r.events_days)
    {
        return Err(ConfigError::Invalid(
            "[retention] interval_minutes must be 1 ..= 10080, expired_grace_hours at most 8784, events_days 1 ..= 3660".into(),
        ));
    }
    let cr = &file.credentials;
    let printable = |t: &str, max: usize| {
        !t.is_empty()
            && t.len() <= max
            && !t.chars().any(|ch| ch.is_whitespace() || ch.is_control())
    };
    if !printable(&cr.issuer, 200)
        || !printable(&cr.vct, 200)
        || !(1..=3660).contains(&cr.lifetime_days)
        || !(1..=3600).contains(&cr.max_presentation_age_seconds)
    {
        return Err(ConfigError::Invalid(
            "[credentials] issuer and vct must be 1..=200 characters without spaces; lifetime_days 1 ..= 3660; max_presentation_age_seconds 1 ..= 3600".into(),
        ));
    }
    let base = cr.status_list_base();
    let base_ok = printable(&base, 400)
        && idvault_core::sdjwt::status::valid_uri(&format!("{base}/{}", i64::MAX));
    if !base_ok
        || !(10..=24).contains(&cr.status_list_size_log2)
        || !(10..=86_400).contains(&cr.status_list_ttl_seconds)
    {
        return Err(ConfigError::Invalid(
            "[credentials] status_list_base must be a URI of at most 400 characters without spaces; status_list_size_log2 10 ..= 24; status_list_ttl_seconds 10 ..= 86400".into(),
        ));
    }
    if cr.max_per_device == 0 {
        return Err(ConfigError::Invalid(
            "[credentials] max_per_device must be at least 1".into(),
        ));
    }
    let c = &file.consent;
    if c.challenge_ttl_seconds == 0
        || c.enrollment_code_ttl_seconds == 0
        || c.max_single_use_seconds == 0
        || c.max_standing_days == 0
        || c.max_standing_days > 3660
        || c.clock_skew_seconds > 3600
    {
        return Err(ConfigError::Invalid(
            "[consent] lifetimes must be at least 1 (max_standing_days at most 3660, clock_skew_seconds at most 3600)".into(),
        ));
    }
    if file.server.request_timeout_secs == 0
        || file.server.handshake_timeout_secs == 0
        || file.server.stream_timeout_secs == 0
    {
        return Err(ConfigError::Invalid(
            "timeouts must be at least 1 second".into(),
        ));
    }
    for (key, value, most) in [
        (
            "shared_calls_per_source",
            file.server.shared_calls_per_source,
            crate::sources::SHARED_CALLS,
        ),
        (
            "shared_connections_per_source",
            file.server.shared_connections_per_source,
            crate::sources::SHARED_CONNECTIONS,
        ),
        (
            "shared_requests_per_source",
            file.server.shared_requests_per_source,
            crate::sources::SHARED_IN_FLIGHT,
        ),
        (
            "handshakes_per_source",
            file.server.handshakes_per_source,
            crate::tls::MAX_HANDSHAKES,
        ),
    ] {
        if !(1..=most).contains(&value) {
            return Err(ConfigError::Invalid(format!(
                "server.{key} must be 1 ..= {most}"
            )));
        }
    }
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut partners = Vec::new();
    for p in &file.partners {
        if !valid_partner_name(&p.name) {
            return Err(ConfigError::Invalid(format!(
                "partner name '{}' is not valid",
                p.name
            )));
        }
        let expected = format!("spiffe://{td}/partner/{}", p.name);
        if p.spiffe_id != expected {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': spiffe_id must be '{expected}'",
                p.name
            )));
        }
        if !names.insert(p.name.clone()) || !ids.insert(p.spiffe_id.clone()) {
            return Err(ConfigError::Invalid(format!(
                "partner '{}' is listed twice",
                p.name
            )));
        }
        let roles = p
            .roles
            .iter()
            .map(|r| Role::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid(format!("partner '{}': {e}", p.name)))?;
        if let Some(d) = p
            .token_domains
            .iter()
            .find(|d| !idvault_tokenizer::token::valid_domain(d))
        {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': token domain '{d}' is not valid (1-32 of a-z, 0-9, -)",
                p.name
            )));
        }
        let match_domain = p.match_domain.clone().unwrap_or_else(|| p.name.clone());
        if !valid_partner_name(&match_domain) {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': match_domain '{match_domain}' is not valid (1-63 of a-z, 0-9, -, _, .)",
                p.name
            )));
        }
        let match_rate = MatchRate {
            per_second: p.match_queries_per_second.unwrap_or(DEFAULT_MATCH_RATE),
            burst: p.match_burst.unwrap_or(DEFAULT_MATCH_BURST),
        };
        if match_rate.per_second == 0 || match_rate.burst == 0 || match_rate.burst > 1_000_000 {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': match_queries_per_second and match_burst must be 1 ..= 1000000",
                p.name
            )));
        }
        let outbox_per_source = p.outbox_per_source.unwrap_or(DEFAULT_OUTBOX_PER_SOURCE);
        if !(1..=MAX_OUTBOX_PER_SOURCE).contains(&outbox_per_source) {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': outbox_per_source must be 1 ..= {MAX_OUTBOX_PER_SOURCE}",
                p.name
            )));
        }
        let release_key = match &p.release_key {
            None => None,
            Some(h) => Some(
                hex::decode(h.trim())
                    .ok()
                    .and_then(|b| idvault_core::consent::ReleasePublicKey::from_sec1(&b))
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "partner '{}': release_key must be the hex of an uncompressed P-256 point (04…, 130 hex digits)",
                            p.name
                        ))
                    })?,
            ),
        };
        if let Some(bad) = p
            .release_purposes
            .iter()
            .find(|x| !idvault_core::consent::valid_purpose(x))
        {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': release purpose '{bad}' is not valid (1-64 of a-z, 0-9, ., _, -)",
                p.name
            )));
        }
        let release_fields = p
            .release_fields
            .iter()
            .map(|f| {
                idvault_core::subject::FieldName::parse(f).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "partner '{}': release field '{f}' is not in the field catalogue",
                        p.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if p.presentation_audiences.len() > 16
            || p.presentation_audiences.iter().any(|a| {
                a.is_empty()
                    || a.len() > 512
                    || a.chars().any(|c| c.is_whitespace() || c.is_control())
            })
        {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': presentation_audiences holds at most 16 audiences of 1..=512 characters without spaces",
                p.name
            )));
        }
        if roles.contains(&Role::ConsentRelease) && release_key.is_none() {
            return Err(ConfigError::Invalid(format!(
                "partner '{}': the consent.release role needs a release_key",
                p.name
            )));
        }
        partners.push(Partner {
            name: p.name.clone(),
            spiffe_id: p.spiffe_id.clone(),
            roles,
            token_domains: p.token_domains.clone(),
            match_domain,
            match_rate,
            release_key,
            release_purposes: p.release_purposes.clone(),
            release_fields,
            presentation_audiences: p.presentation_audiences.clone(),
            outbox_per_source,
        });
    }
    // An audience names one partner: naming another partner's identity, or
    // an audience another partner also registered, would let one partner
    // have the vault vouch for presentations meant for the other.
    let mut audiences: HashMap<&str, &str> = HashMap::new();
    for p in &partners {
        audiences.insert(p.spiffe_id.as_str(), p.name.as_str());
    }
    for p in &partners {
        for a in &p.presentation_audiences {
            if let Some(owner) = audiences.insert(a.as_str(), p.name.as_str())
                && owner != p.name
            {
                return Err(ConfigError::Invalid(format!(
                    "partner '{}': presentation audience '{a}' already belongs to partner '{owner}'",
                    p.name
                )));
            }
        }
    }
    Ok(PartnerRegistry::new(partners))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
trust_domain = "idvault.dev"
[keys]
root_key_file = "root.key"
[tls]
client_ca = "tls/ca.crt"
server_cert = "tls/server.crt"
server_key = "tls/server.key"
[[partner]]
name = "partner-a"
spiffe_id = "spiffe://idvault.dev/partner/partner-a"
roles = ["subjects.write"]
"#;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("idvault.toml"), Path::new("/data"))
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.file.server.listen, default_listen());
        assert_eq!(c.registry.partners().len(), 1);
        assert_eq!(
            c.resolve(Path::new("tls/ca.crt")),
            PathBuf::from("/data/tls/ca.crt")
        );
        assert_eq!(c.database_url(), "sqlite:///data/idvault.db?mode=rwc");
    }

    #[test]
    fn parse_errors_quote_no_config_text() {
        // A misspelt key whose value holds a password, a string where a
        // number belongs, and a line that is no TOML: each error says
        // where, never what the line holds.
        let cases = [
            "databse_url = \"postgres://vault:hunter2-secret@db/idvault\"\n",
            "[storage]\ndatabase_url = \"postgres://vault:hunter2-secret@db/x\"\n[server]\nlisten = 7\n",
            "[server]\ntrust_domain = 42\n[keys]\nroot_key_file = \"hunter2-secret\"\n[tls]\nclient_ca = 1\n",
            "[server]\nlisten = \"pa\\\"hunter2-secret\"\n",
            "hunter2-secret\n",
        ];
        for (i, t) in cases.into_iter().enumerate() {
            let text = format!("{GOOD}{t}");
            let Err(e) = parse(&text) else {
                panic!("case {i} parsed")
            };
            let shown = e.to_string();
            assert!(!shown.contains("hunter2"), "case {i}: {shown}");
            assert!(shown.contains("line "), "case {i}: {shown}");
        }
    }

    #[test]
    fn presentation_audiences_belong_to_one_partner() {
        let b = r#"
[[partner]]
name = "partner-b"
spiffe_id = "spiffe://idvault.dev/partner/partner-b"
roles = ["subjects.write"]
"#;
        let ok = format!(
            "{}presentation_audiences = [\"https://a.example\"]\n{b}",
            GOOD
        );
        assert!(parse(&ok).is_ok());
        let steals_b = format!(
            "{}presentation_audiences = [\"spiffe://idvault.dev/partner/partner-b\"]\n{b}",
            GOOD
        );
        assert!(
            parse(&steals_b)
                .unwrap_err()
                .to_string()
                .contains("already belongs")
        );
        let shared = format!(
            "{}presentation_audiences = [\"https://a.example\"]\n{b}presentation_audiences = [\"https://a.example\"]\n",
            GOOD
        );
        assert!(
            parse(&shared)
                .unwrap_err()
                .to_string()
                .contains("already belongs")
        );
        let spaced = format!("{}presentation_audiences = [\"a b\"]\n", GOOD);
        assert!(parse(&spaced).is_err());
    }

    #[test]
    fn unknown_key_is_refused_with_location() {
        let bad = GOOD.replace("[keys]", "[keys]\nroot_kye = 1");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("root_kye") && err.contains("line"), "{err}");
    }

    #[test]
    fn registry_is_validated() {
        let wrong_td = GOOD.replace(
            "spiffe://idvault.dev/partner/partner-a",
            "spiffe://evil/partner/partner-a",
        );
        assert!(
            parse(&wrong_td)
                .unwrap_err()
                .to_string()
                .contains("spiffe_id must be")
        );
        let bad_role = GOOD.replace("subjects.write", "root");
        assert!(
            parse(&bad_role)
                .unwrap_err()
                .to_string()
                .contains("unknown role")
        );
        let dup = format!(
            "{GOOD}\n[[partner]]\nname = \"partner-a\"\nspiffe_id = \"spiffe://idvault.dev/partner/partner-a\"\n"
        );
        assert!(parse(&dup).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn shared_identity_shares_default_and_are_bounded() {
        let c = parse(GOOD).unwrap();
        let server = &c.file.server;
        assert_eq!(
            (
                server.shared_calls_per_source,
                server.shared_connections_per_source,
                server.shared_requests_per_source
            ),
            (
                crate::sources::SHARED_CALLS_PER_SOURCE,
                crate::sources::SHARED_CONNECTIONS_PER_SOURCE,
                crate::sources::SHARED_IN_FLIGHT_PER_SOURCE
            )
        );
        let set = |key: &str, n: usize| {
            parse(&GOOD.replacen("[server]\n", &format!("[server]\n{key} = {n}\n"), 1))
        };
        for (key, most) in [
            ("shared_calls_per_source", crate::sources::SHARED_CALLS),
            (
                "shared_connections_per_source",
                crate::sources::SHARED_CONNECTIONS,
            ),
            (
                "shared_requests_per_source",
                crate::sources::SHARED_IN_FLIGHT,
            ),
            ("handshakes_per_source", crate::tls::MAX_HANDSHAKES),
        ] {
            assert!(set(key, 1).is_ok(), "{key}");
            assert!(set(key, most).is_ok(), "{key}");
            for n in [0, most + 1] {
                let err = set(key, n).unwrap_err().to_string();
                assert!(err.contains(&format!("server.{key} must be")), "{err}");
            }
        }
    }

    #[test]
    fn outbox_share_defaults_and_is_bounded() {
        let share = |c: &Config| c.registry.partners()[0].outbox_per_source;
        assert_eq!(share(&parse(GOOD).unwrap()), DEFAULT_OUTBOX_PER_SOURCE);
        let set = |n: u64| parse(&format!("{GOOD}outbox_per_source = {n}\n"));
        assert_eq!(share(&set(1).unwrap()), 1);
        assert_eq!(
            share(&set(u64::from(MAX_OUTBOX_PER_SOURCE)).unwrap()),
            MAX_OUTBOX_PER_SOURCE
        );
        for n in [0, u64::from(MAX_OUTBOX_PER_SOURCE) + 1] {
            let err = set(n).unwrap_err().to_string();
            assert!(err.contains("outbox_per_source"), "{err}");
        }
    }
}
