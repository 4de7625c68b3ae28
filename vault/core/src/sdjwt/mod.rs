//! Digital IDs: SD-JWT VCs (RFC 9901 selective disclosure, in the SD-JWT
//! VC profile) bound to a person's enrolled device key
//! (docs/digital-id.md).
//!
//! - **Issuing** ([`issue`]): an ES256 JWS whose payload holds the
//!   digests of one disclosure per claim (plus decoys, so the number of
//!   claims does not show), `cnf.jwk` = the device key, then the
//!   disclosures: `<jwt>~<disclosure>~…~`.
//! - **Presenting** ([`Credential`], [`key_binding_input`],
//!   [`with_key_binding`]): the holder keeps the disclosures it chooses
//!   and appends a Key Binding JWT signed by the device key, naming the
//!   verifier (`aud`), its `nonce` and, through `sd_hash`, exactly the
//!   presented SD-JWT.
//! - **Verifying** ([`verify_presentation`]): the issuer signature against
//!   a JWK Set, expiry, every disclosure referenced exactly once (RFC 9901
//!   section 7.1), then the key binding (section 7.3).
//!
//! Pure: times are arguments, randomness is a [`Rng`], and keys come in
//! as values. Claim values are personal data: no `Debug` output or error
//! here contains one.

pub mod claims;
pub mod jose;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::fmt;

use p256::ecdsa::SigningKey;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, Rng, sha256};
use jose::{ES256, ParsedJws, b64, sha256_b64, unb64};
pub use jose::{EcJwk, Jwks};

/// `typ` of an issued credential (SD-JWT VC).
pub const TYP_CREDENTIAL: &str = "dc+sd-jwt";
/// `typ` of a Key Binding JWT.
pub const TYP_KEY_BINDING: &str = "kb+jwt";
/// The only disclosure digest algorithm (`_sd_alg`).
pub const SD_ALG: &str = "sha-256";
/// Default credential type (`vct`).
pub const DEFAULT_VCT: &str = "urn:idvault:vct:person:1";
/// Digests in an issued credential's `_sd`: its claims, then decoys up to
/// this many. Above the most claims a credential can carry, so every
/// credential shows the same count.
pub const SD_DIGESTS: usize = 16;
/// Bytes of random salt per disclosure (128 bits).
pub const SALT_LEN: usize = 16;
/// Largest presentation or credential accepted, in bytes.
pub const MAX_PRESENTATION_BYTES: usize = 64 * 1024;
/// Most disclosures one SD-JWT may carry.
pub const MAX_DISCLOSURES: usize = 64;
/// Claims that must be in the signed payload, never in a disclosure.
pub const REGISTERED_CLAIMS: &[&str] = &[
    "iss", "iat", "exp", "nbf", "sub", "cnf", "vct", "status", "aud", "jti",
];

/// Why an SD-JWT was refused. Messages name the check, never a claim
/// value or key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdJwtError {
    /// Not the expected shape.
    #[error("malformed SD-JWT: {0}")]
    Malformed(&'static str),
    /// A header or algorithm this implementation does not accept.
    #[error("unsupported SD-JWT: {0}")]
    Unsupported(&'static str),
    /// No issuer key with the JWS's `kid`.
    #[error("unknown issuer key")]
    UnknownKey,
    /// The issuer signature does not verify.
    #[error("issuer signature does not verify")]
    BadSignature,
    /// Past `exp`.
    #[error("credential expired")]
    Expired,
    /// Before `iat` / `nbf`.
    #[error("credential not yet valid")]
    NotYetValid,
    /// A disclosure is bad, repeated or not referenced.
    #[error("disclosure refused: {0}")]
    Disclosure(&'static str),
    /// The Key Binding JWT is missing or wrong.
    #[error("key binding refused: {0}")]
    KeyBinding(&'static str),
    /// The credential's status says revoked.
    #[error("credential revoked")]
    Revoked,
    /// The credential's status cannot be established: no `status` claim,
    /// or a status list token that is malformed, expired, for another
    /// list or too short.
    #[error("credential status refused: {0}")]
    Status(&'static str),
    /// Randomness failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl SdJwtError {
    /// A stable token for audit records and refusal metadata.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unsupported(_) => "unsupported",
            Self::UnknownKey => "unknown_issuer_key",
            Self::BadSignature => "bad_issuer_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Disclosure(_) => "bad_disclosure",
            Self::KeyBinding(_) => "bad_key_binding",
            Self::Revoked => "revoked",
            Self::Status(_) => "bad_status",
            Self::Crypto(_) => "internal",
        }
    }
}

/// One disclosure: `base64url(JSON [salt, name, value])` for an object
/// property, `[salt, value]` for an array element (RFC 9901 section 4.2).
#[derive(Clone, PartialEq)]
pub struct Disclosure {
    encoded: String,
    name: Option<String>,
    value: Value,
}

impl fmt::Debug for Disclosure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is personal data.
        write!(f, "Disclosure({:?})", self.name)
    }
}

impl Disclosure {
    /// A new object-property disclosure with `salt`.
    pub fn new(salt: &[u8], name: &str, value: Value) -> Self {
        let json = Value::Array(vec![b64(salt).into(), name.into(), value.clone()]).to_string();
        let encoded = b64(json.as_bytes());
        // The JSON text holds the value; wipe it (the encoded form is kept).
        drop(Zeroizing::new(json));
        Self {
            encoded,
            name: Some(name.to_owned()),
            value,
        }
    }

    /// Parses one encoded disclosure.
    pub fn parse(encoded: &str) -> Result<Self, SdJwtError> {
        let bytes = Zeroizing::new(unb64(encoded, "disclosure encoding")?);
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|_| SdJwtError::Disclosure("not a JSON array"))?;
        let Value::Array(mut items) = v else {
            return Err(SdJwtError::Disclosure("not a JSON array"));
        };
        let (name, value) = match items.len() {
            3 => {
                let value = items.pop().unwrap_or_default();
                let name = match items.pop() {
                    Some(Value::String(n)) => n,
                    _ => return Err(SdJwtError::Disclosure("claim name is not a string")),
                };
                if name == "_sd" || name == "..." || name == "_sd_alg" {
                    return Err(SdJwtError::Disclosure("reserved claim name"));
                }
                (Some(name), value)
            }
            2 => (None, items.pop().unwrap_or_default()),
            _ => return Err(SdJwtError::Disclosure("not 2 or 3 elements")),
        };
        if !matches!(items.first(), Some(Value::String(_))) {
            return Err(SdJwtError::Disclosure("salt is not a string"));
        }
        Ok(Self {
            encoded: encoded.to_owned(),
            name,
            value,
        })
    }

    /// Its digest: `base64url(SHA-256(encoded))`.
    pub fn digest(&self) -> String {
        sha256_b64(&self.encoded)
    }

    /// The claim name (`None` for an array element).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The claim value (personal data).
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The encoded form, as it travels.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }
}

/// The vault's issuer signing key (P-256) and its `kid` (the key's RFC
/// 7638 thumbprint, so a verifier can recompute it from the JWK).
pub struct IssuerKey {
    key: SigningKey,
    jwk: EcJwk,
    kid: String,
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerKey({})", self.kid)
    }
}

impl IssuerKey {
    /// From a 32-byte big-endian scalar; `None` if it is zero or not below
    /// the group order (the caller derives another candidate).
    pub fn from_scalar(bytes: &[u8]) -> Option<Self> {
        let key = SigningKey::from_slice(bytes).ok()?;
        let jwk = EcJwk::new(*key.verifying_key());
        let kid = jwk.thumbprint();
        Some(Self { key, jwk, kid })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key.
    pub fn jwk(&self) -> &EcJwk {
        &self.jwk
    }

    /// The signing key (the vault's other signed tokens: status lists,
    /// transaction assertions).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// What a credential says besides its claims.
#[derive(Debug, Clone)]
pub struct CredentialSpec<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `vct`.
    pub vct: &'a str,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `cnf.jwk`: the holder's device key.
    pub holder: &'a EcJwk,
    /// `status` (a Token Status List reference), if any.
    pub status: Option<Value>,
}

/// Issues an SD-JWT VC: every claim selectively disclosable with a fresh
/// salt, decoys up to [`SD_DIGESTS`], digests sorted (so their order says
/// nothing about the claims'). Returns `<jwt>~<disclosure>~…~`; it holds
/// personal data and is wiped on drop.
pub fn issue(
    key: &IssuerKey,
    spec: &CredentialSpec<'_>,
    claims: Vec<(String, Value)>,
    rng: &dyn Rng,
) -> Result<Zeroizing<String>, SdJwtError> {
    let mut disclosures = Vec::with_capacity(claims.len());
    for (name, value) in claims {
        if REGISTERED_CLAIMS.contains(&name.as_str())
            || matches!(name.as_str(), "_sd" | "..." | "_sd_alg")
        {
            return Err(SdJwtError::Malformed(
                "a registered claim cannot be selectively disclosable",
            ));
        }
        let mut salt = [0u8; SALT_LEN];
        rng.fill(&mut salt)?;
        disclosures.push(Disclosure::new(&salt, &name, value));
    }
    let mut digests: Vec<String> = disclosures.iter().map(Disclosure::digest).collect();
    while digests.len() < SD_DIGESTS {
        // A decoy: the digest of random bytes (RFC 9901 section 4.2.5).
        let mut r = [0u8; 32];
        rng.fill(&mut r)?;
        digests.push(b64(&sha256(&[&r])));
    }
    digests.sort();
    let mut payload = Map::new();
    payload.insert("_sd".into(), digests.into());
    payload.insert("_sd_alg".into(), SD_ALG.into());
    let mut cnf = Map::new();
    cnf.insert("jwk".into(), Value::Object(spec.holder.to_json()));
    payload.insert("cnf".into(), Value::Object(cnf));
    payload.insert("exp".into(), spec.expires_at.into());
    payload.insert("iat".into(), spec.issued_at.into());
    payload.insert("iss".into(), spec.issuer.into());
    if let Some(s) = &spec.status {
        payload.insert("status".into(), s.clone());
    }
    payload.insert("vct".into(), spec.vct.into());
    let mut header = Map::new();
    header.insert("alg".into(), ES256.into());
    header.insert("kid".into(), key.kid.clone().into());
    header.insert("typ".into(), TYP_CREDENTIAL.into());
    let mut out = Zeroizing::new(jose::sign_compact(
        &key.key,
        &header,
        &Value::Object(payload).to_string(),
    ));
    for d in &disclosures {
        out.push('~');
        out.push_str(d.encoded());
    }
    out.push('~');
    Ok(out)
}

/// Only the characters of base64url, `.` and `~`: anything else cannot be
/// an SD-JWT, and refusing it first keeps odd bytes out of every parser.
fn sd_jwt_alphabet(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// An issued credential as the holder keeps it: the issuer-signed JWT and
/// all its disclosures.
#[derive(Clone)]
pub struct Credential {
    jwt: String,
    disclosures: Vec<Disclosure>,
    kid: Option<String>,
    expires_at: Option<i64>,
    holder: Option<EcJwk>,
    status: Option<Value>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("claims", &self.claim_names())
            .finish()
    }
}

impl Credential {
    /// Parses `<jwt>~<disclosure>~…~` (no key binding). The signature is
    /// not checked here ([`Self::check_issued`] does, for a holder with
    /// the issuer keys; a verifier checks it with [`verify_presentation`]).
    pub fn parse(text: &str) -> Result<Self, SdJwtError> {
        let text = text.trim();
        if text.len() > MAX_PRESENTATION_BYTES || !sd_jwt_alphabet(text) {
            return Err(SdJwtError::Malformed("not an SD-JWT"));
        }
        let body = text
            .strip_suffix('~')
            .ok_or(SdJwtError::Malformed("an issued SD-JWT ends with '~'"))?;
        let mut parts = body.split('~');
        let jwt = parts.next().unwrap_or_default();
        let jws = ParsedJws::parse(jwt, TYP_CREDENTIAL)?;
        let disclosures = parts
            .map(Disclosure::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if disclosures.len() > MAX_DISCLOSURES {
            return Err(SdJwtError::Malformed("too many disclosures"));
        }
        Ok(Self {
            jwt: jwt.to_owned(),
            disclosures,
            kid: jws.kid().map(str::to_owned),
            expires_at: int_claim(&jws.payload, "exp")?,
            holder: jws
                .payload
                .get("cnf")
                .and_then(|c| c.get("jwk"))
                .map(EcJwk::from_json)
                .transpose()?,
            status: jws.payload.get("status").cloned(),
        })
    }

    /// What a phone checks of a credential it was just given: signed by
    /// one of `keys` (when it has them pinned), bound to its own key
    /// `holder`, every disclosure referenced by the signed payload, and
    /// carrying only claims from `asked` (when it asked for some). An
    /// answer forged on the way (HPKE base mode does not say who sealed
    /// it) fails here rather than sitting on the phone.
    pub fn check_issued(
        &self,
        keys: Option<&Jwks>,
        holder: &EcJwk,
        asked: &[String],
    ) -> Result<(), SdJwtError> {
        let jws = ParsedJws::parse(&self.jwt, TYP_CREDENTIAL)?;
        if let Some(keys) = keys {
            let key = keys.key(jws.kid()).ok_or(SdJwtError::UnknownKey)?;
            jws.verify(key.verifying_key())?;
        }
        if self.holder.as_ref() != Some(holder) {
            return Err(SdJwtError::KeyBinding("credential is bound to another key"));
        }
        let digests: HashSet<&str> = jws
            .payload
            .get("_sd")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for d in &self.disclosures {
            if !digests.contains(d.digest().as_str()) {
                return Err(SdJwtError::Disclosure("disclosure not referenced"));
            }
            let name = d.name().unwrap_or_default();
            if !asked.is_empty() && !asked.iter().any(|a| a == name) {
                return Err(SdJwtError::Disclosure("a claim that was not asked for"));
            }
        }
        Ok(())
    }

    /// The issuer key id (`kid`), as the JWS header says.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// `exp`, as the payload says.
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }

    /// Its status list entry (the `status` claim), as the payload says.
    pub fn status(&self) -> Result<status::StatusRef, SdJwtError> {
        status::StatusRef::from_claim(
            self.status
                .as_ref()
                .ok_or(SdJwtError::Status("credential has no status claim"))?,
        )
    }

    /// The names of the claims it can disclose, in issue order.
    pub fn claim_names(&self) -> Vec<&str> {
        self.disclosures
            .iter()
            .filter_map(Disclosure::name)
            .collect()
    }

    /// The SD-JWT disclosing exactly `names` (`<jwt>~<d>~…~`), ready for
    /// [`key_binding_input`]. A name the credential does not hold is an
    /// error, not silently left out.
    pub fn disclose(&self, names: &[&str]) -> Result<Zeroizing<String>, SdJwtError> {
        let mut out = Zeroizing::new(self.jwt.clone());
        for n in names {
            let d = self
                .disclosures
                .iter()
                .find(|d| d.name() == Some(n))
                .ok_or(SdJwtError::Disclosure("claim not in the credential"))?;
            out.push('~');
            out.push_str(d.encoded());
        }
        out.push('~');
        Ok(out)
    }
}

/// The Key Binding JWT's signing input (`header.payload`, base64url) for
/// presenting `sd_jwt` to `audience` with `nonce` at `issued_at`. The
/// holder signs it with its device key (plain ES256 over these bytes) and
/// calls [`with_key_binding`].
pub fn key_binding_input(sd_jwt: &str, audience: &str, nonce: &str, issued_at: i64) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), ES256.into());
    header.insert("typ".into(), TYP_KEY_BINDING.into());
    let mut payload = Map::new();
    payload.insert("aud".into(), audience.into());
    payload.insert("iat".into(), issued_at.into());
    payload.insert("nonce".into(), nonce.into());
    payload.insert("sd_hash".into(), sha256_b64(sd_jwt).into());
    let mut out = b64(Value::Object(header).to_string().as_bytes());
    out.push('.');
    out.push_str(&b64(Value::Object(payload).to_string().as_bytes()));
    out
}

/// `sd_jwt` followed by its Key Binding JWT.
pub fn with_key_binding(sd_jwt: &str, signing_input: &str, signature: &[u8]) -> String {
    format!("{sd_jwt}{signing_input}.{}", b64(signature))
}

/// What a verifier expects of a presentation.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    /// The issuer JWT's `typ` ([`TYP_CREDENTIAL`] for the vault's).
    pub typ: &'a str,
    /// The verifier's own identifier: the KB-JWT's `aud` must equal it.
    pub audience: &'a str,
    /// The nonce the verifier handed out: the KB-JWT's `nonce`.
    pub nonce: &'a str,
    /// Now, Unix seconds.
    pub now: i64,
    /// Clock skew tolerated, seconds.
    pub skew_secs: i64,
    /// Oldest KB-JWT `iat` accepted, seconds before `now`.
    pub max_key_binding_age_secs: i64,
}

/// A verified presentation.
#[derive(Clone)]
pub struct Verified {
    /// The issuer key that signed it.
    pub kid: Option<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `vct`.
    pub vct: Option<String>,
    /// `iat`.
    pub issued_at: Option<i64>,
    /// `exp`.
    pub expires_at: i64,
    /// The disclosed top-level claims (personal data).
    pub disclosed: Map<String, Value>,
    /// The holder key the presentation was bound with.
    pub holder: EcJwk,
    /// `status`, as issued (checked by the caller against a status list).
    pub status: Option<Value>,
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("kid", &self.kid)
            .field("vct", &self.vct)
            .field("disclosed", &self.disclosed.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Disclosures by digest, and which were used.
struct Pool {
    by_digest: HashMap<String, usize>,
    items: Vec<Disclosure>,
    used: Vec<bool>,
    /// Every digest met in the payload, disclosed or not.
    seen: HashSet<String>,
}

impl Pool {
    /// The disclosure for `digest`, once; a digest met twice anywhere in
    /// the payload is an error (RFC 9901 section 7.1).
    fn take(&mut self, digest: &str) -> Result<Option<Disclosure>, SdJwtError> {
        if !self.seen.insert(digest.to_owned()) {
            return Err(SdJwtError::Disclosure("digest appears twice"));
        }
        let Some(&i) = self.by_digest.get(digest) else {
            return Ok(None);
        };
        if let Some(u) = self.used.get_mut(i) {
            *u = true;
        }
        Ok(self.items.get(i).cloned())
    }
}

/// Replaces, in `v`, every `_sd` digest and every `{"...": digest}` array
/// element whose disclosure was presented by the disclosed claim, and
/// drops the rest (RFC 9901 section 7.1, step 3). Returns the names
/// disclosed directly in `v` (when `v` is an object).
fn process(v: &mut Value, pool: &mut Pool) -> Result<Vec<String>, SdJwtError> {
    let mut disclosed = Vec::new();
    match v {
        Value::Object(m) => {
            let digests = match m.remove("_sd") {
                None => Vec::new(),
                Some(Value::Array(a)) => a,
                Some(_) => return Err(SdJwtError::Malformed("_sd is not an array")),
            };
            for (_, child) in m.iter_mut() {
                process(child, pool)?;
            }
            for d in digests {
                let Value::String(d) = d else {
                    return Err(SdJwtError::Malformed("_sd holds a non-string"));
                };
                let Some(disc) = pool.take(&d)? else { continue };
                let Some(name) = disc.name().map(str::to_owned) else {
                    return Err(SdJwtError::Disclosure("array element disclosed as a claim"));
                };
                if m.contains_key(&name) {
                    return Err(SdJwtError::Disclosure("claim name already present"));
                }
                let mut value = disc.value().clone();
                process(&mut value, pool)?;
                disclosed.push(name.clone());
                m.insert(name, value);
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for mut item in std::mem::take(items) {
                let digest = match &item {
                    Value::Object(o) if o.len() == 1 => o.get("...").cloned(),
                    _ => None,
                };
                match digest {
                    Some(Value::String(d)) => {
                        if let Some(disc) = pool.take(&d)? {
                            if disc.name().is_some() {
                                return Err(SdJwtError::Disclosure(
                                    "claim disclosed as an array element",
                                ));
                            }
                            let mut value = disc.value().clone();
                            process(&mut value, pool)?;
                            out.push(value);
                        }
                    }
                    Some(_) => return Err(SdJwtError::Malformed("'...' is not a string")),
                    None => {
                        process(&mut item, pool)?;
                        out.push(item);
                    }
                }
            }
            *items = out;
        }
        _ => {}
    }
    Ok(disclosed)
}

/// A NumericDate claim (RFC 7519 section 2: seconds, which may have a
/// fraction; wallets that write `Date.now() / 1000` send one), rounded
/// down to whole seconds: an `exp` then ends at most a second early, an
/// `iat` or `nbf` reads at most a second older.
fn int_claim(m: &Map<String, Value>, name: &str) -> Result<Option<i64>, SdJwtError> {
    const NOT_A_TIME: SdJwtError = SdJwtError::Malformed("a time claim is not a number of seconds");
    match m.get(name) {
        None => Ok(None),
        Some(v) => match (v.as_i64(), v.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            // Bounded well inside i64 so the cast is exact: years past
            // 292 billion are no time a vault checks against.
            #[allow(clippy::cast_possible_truncation)]
            (None, Some(f)) if f.is_finite() && f.abs() < 9.0e15 => Ok(Some(f.floor() as i64)),
            _ => Err(NOT_A_TIME),
        },
    }
}

/// Whether a JWT's `aud` names `audience`: the one string, or an array
/// holding it (RFC 7519 section 4.1.3).
fn audience_includes(aud: Option<&Value>, audience: &str) -> bool {
    match aud {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

fn str_claim(m: &Map<String, Value>, name: &str) -> Option<String> {
    m.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Verifies a presentation `<jwt>~<disclosure>~…~<kb-jwt>` against the
/// issuer keys `keys` and `expect`.
pub fn verify_presentation(
    text: &str,
    keys: &Jwks,
    expect: &Expectations<'_>,
) -> Result<Verified, SdJwtError> {
    let text = text.trim();
    if text.len() > MAX_PRESENTATION_BYTES || !sd_jwt_alphabet(text) {
        return Err(SdJwtError::Malformed("not an SD-JWT"));
    }
    let cut = text
        .rfind('~')
        .ok_or(SdJwtError::Malformed("no '~' separator"))?;
    let (sd_jwt, kb) = (
        text.get(..=cut).unwrap_or_default(),
        text.get(cut + 1..).unwrap_or_default(),
    );
    if kb.is_empty() {
        return Err(SdJwtError::KeyBinding("missing"));
    }
    let mut parts = sd_jwt.split('~');
    let jwt = parts.next().unwrap_or_default();
    let encoded: Vec<&str> = parts.collect();
    // The split of "<jwt>~a~b~" ends with one empty string.
    let encoded = encoded.split_last().map(|(_, d)| d).unwrap_or_default();
    if encoded.len() > MAX_DISCLOSURES {
        return Err(SdJwtError::Malformed("too many disclosures"));
    }

    // 1. The issuer's signature, before anything in the payload is used.
    let jws = ParsedJws::parse(jwt, expect.typ)?;
    let key = keys.key(jws.kid()).ok_or(SdJwtError::UnknownKey)?;
    jws.verify(key.verifying_key())?;
    let mut payload = jws.payload;

    // 2. Times.
    match payload.get("_sd_alg") {
        None => {}
        Some(Value::String(a)) if a == SD_ALG => {}
        Some(_) => return Err(SdJwtError::Unsupported("_sd_alg other than sha-256")),
    }
    let exp = int_claim(&payload, "exp")?.ok_or(SdJwtError::Malformed("no exp"))?;
    if expect.now >= exp.saturating_add(expect.skew_secs) {
        return Err(SdJwtError::Expired);
    }
    for early in ["iat", "nbf"] {
        if int_claim(&payload, early)?.is_some_and(|t| t > expect.now + expect.skew_secs) {
            return Err(SdJwtError::NotYetValid);
        }
    }

    // 3. Disclosures: each parsed, none twice, each referenced once.
    let mut pool = Pool {
        by_digest: HashMap::new(),
        items: Vec::with_capacity(encoded.len()),
        used: vec![false; encoded.len()],
        seen: HashSet::new(),
    };
    for (i, e) in encoded.iter().enumerate() {
        if e.is_empty() {
            return Err(SdJwtError::Malformed("empty disclosure"));
        }
        let d = Disclosure::parse(e)?;
        if pool.by_digest.insert(d.digest(), i).is_some() {
            return Err(SdJwtError::Disclosure("disclosure presented twice"));
        }
        pool.items.push(d);
    }
    // The registered claims come from the signed payload itself, never
    // from a disclosure (SD-JWT VC: they are not selectively disclosable).
    let holder = payload
        .get("cnf")
        .and_then(|c| c.get("jwk"))
        .ok_or(SdJwtError::KeyBinding("credential has no cnf.jwk"))
        .and_then(EcJwk::from_json)?;
    let issuer = str_claim(&payload, "iss");
    let vct = str_claim(&payload, "vct");
    let issued_at = int_claim(&payload, "iat")?;
    let status = payload.get("status").cloned();
    payload.remove("_sd_alg");
    let mut root = Value::Object(std::mem::take(&mut payload));
    let top = process(&mut root, &mut pool)?;
    if pool.used.iter().any(|u| !u) {
        return Err(SdJwtError::Disclosure("disclosure not referenced"));
    }
    if top.iter().any(|n| REGISTERED_CLAIMS.contains(&n.as_str())) {
        return Err(SdJwtError::Disclosure("a registered claim is disclosed"));
    }
    let Value::Object(claims) = root else {
        return Err(SdJwtError::Malformed("payload"));
    };

    // 4. Key binding.
    let kb = ParsedJws::parse(kb, TYP_KEY_BINDING).map_err(|e| match e {
        SdJwtError::Unsupported(w) | SdJwtError::Malformed(w) => SdJwtError::KeyBinding(w),
        other => other,
    })?;
    kb.verify(holder.verifying_key())
        .map_err(|_| SdJwtError::KeyBinding("signature is not the holder's"))?;
    if kb.payload.get("sd_hash").and_then(Value::as_str) != Some(sha256_b64(sd_jwt).as_str()) {
        return Err(SdJwtError::KeyBinding("sd_hash does not match the SD-JWT"));
    }
    if !audience_includes(kb.payload.get("aud"), expect.audience) {
        return Err(SdJwtError::KeyBinding("audience"));
    }
    if kb.payload.get("nonce").and_then(Value::as_str) != Some(expect.nonce) {
        return Err(SdJwtError::KeyBinding("nonce"));
    }
    let iat = int_claim(&kb.payload, "iat")
        .map_err(|_| SdJwtError::KeyBinding("iat"))?
        .ok_or(SdJwtError::KeyBinding("iat"))?;
    if iat > expect.now + expect.skew_secs
        || iat < expect.now - expect.max_key_binding_age_secs - expect.skew_secs
    {
        return Err(SdJwtError::KeyBinding("iat outside the accepted window"));
    }
    // Optional in a KB-JWT, but binding when the holder set them (RFC 9901
    // section 7.3, RFC 7519 sections 4.1.4-5).
    let kb_exp = int_claim(&kb.payload, "exp").map_err(|_| SdJwtError::KeyBinding("exp"))?;
    if kb_exp.is_some_and(|t| t <= expect.now - expect.skew_secs) {
        return Err(SdJwtError::KeyBinding("expired"));
    }
    let kb_nbf = int_claim(&kb.payload, "nbf").map_err(|_| SdJwtError::KeyBinding("nbf"))?;
    if kb_nbf.is_some_and(|t| t > expect.now + expect.skew_secs) {
        return Err(SdJwtError::KeyBinding("not yet valid"));
    }

    let disclosed = top
        .iter()
        .filter_map(|n| claims.get(n).map(|v| (n.clone(), v.clone())))
        .collect();
    Ok(Verified {
        kid: jws
            .header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        issuer,
        vct,
        issued_at,
        expires_at: exp,
        disclosed,
        holder,
        status,
    })
}

#[cfg(test)]
pub(crate) mod tests;
