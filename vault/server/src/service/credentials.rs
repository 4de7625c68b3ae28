//! Digital IDs: an SD-JWT VC issued to a person's enrolled device, the
//! issuer keys as a JWK Set, and presentations verified for relying
//! parties (docs/digital-id.md).
//!
//! Issuing is a device-signed call like the person's other calls
//! ([`super::devices`]): the signature is checked over the bytes as sent,
//! then the request is decoded, its window and replay checked. The
//! person's values are read and decrypted from the pool, never under the
//! writer; the issuance policy is asked about the catalogue fields the
//! claims are made from; only the replay record and the audit leaf are
//! written.

use std::collections::BTreeSet;
use std::sync::Arc;

use idvault_core::consent::Refusal;
use idvault_core::device_request::DeviceAction;
use idvault_core::keys::KeyHierarchy;
use idvault_core::sdjwt::{
    self, CredentialSpec, EcJwk, Expectations, IssuerKey, Jwks, TYP_CREDENTIAL, Verified, claims,
};
use idvault_policies::Action;
use zeroize::Zeroizing;

use super::consent::{Signed, refused};
use crate::service::{Caller, Vault, VaultError};

/// A credential issued to a device, sealed to the one-time key of its
/// request.
#[derive(Debug)]
pub struct IssuedCredential {
    /// HPKE encapsulated key.
    pub enc: Vec<u8>,
    /// HPKE ciphertext of `<jwt>~<disclosure>~…~`.
    pub sealed: Vec<u8>,
}

/// Longest nonce a relying party may name.
pub const MAX_NONCE_LEN: usize = 256;
/// Longest audience a relying party may name.
pub const MAX_AUDIENCE_LEN: usize = 512;

/// The issuer keys of every root key version, oldest first: a credential
/// signed under an older version verifies until it expires.
pub fn issuer_jwks(keys: &KeyHierarchy) -> Result<Jwks, VaultError> {
    let mut out = Vec::new();
    for v in keys.versions() {
        match keys.issuer_key(v) {
            Ok(k) => out.push((k.kid().to_owned(), k.jwk().clone())),
            // A version the provider no longer holds signs nothing new and
            // its credentials cannot be checked here either.
            Err(idvault_core::keys::KeyError::UnknownVersion(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Jwks::new(out))
}

impl Vault {
    /// Issues a digital ID to the device that signed `s` (a DeviceRequest
    /// whose action is `IssueCredential`).
    pub async fn issue_credential(
        &self,
        caller: &Caller,
        s: Signed,
    ) -> Result<IssuedCredential, VaultError> {
        self.handle(caller, Action::IssueCredential, async |req| {
            let (device, call) = self
                .verified_device_request(req, &s, |a| {
                    matches!(a, DeviceAction::IssueCredential { .. })
                })
                .await?;
            let subject = device.subject;
            let DeviceAction::IssueCredential {
                claims: wanted,
                response_key,
            } = &call.action
            else {
                return Err(refused(Refusal::WrongAction));
            };
            let now = self.now_secs();
            // A replay is refused before the decrypt and the signature.
            if self.store().device_request_seen(&call.request_id).await? {
                return Err(refused(Refusal::RequestReplayed));
            }

            let (_, values) = self.newest_fields(&subject).await?;
            let pairs: Vec<_> = values.iter().map(|(n, v)| (*n, v.expose())).collect();
            let wanted = (!wanted.is_empty()).then_some(wanted.as_slice());
            let made = claims::person_claims(&pairs, claims::civil_date(now), wanted);
            if made.is_empty() {
                return Err(VaultError::BadRequest(
                    "the person has no field any asked-for claim is made from".into(),
                ));
            }
            // The issuance policy sees the catalogue fields the claims
            // disclose (an operator may forbid, say, national_id).
            let held: BTreeSet<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
            let fields: Vec<&str> = made
                .iter()
                .flat_map(|(n, _)| claims::claim_fields(n).iter().copied())
                .filter(|f| held.contains(f))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            req.decide_on_subject(&subject, &fields)?;

            let issuer = self.issuer_key()?;
            let holder = EcJwk::from_sec1(&device.public_key)
                .map_err(|_| VaultError::Integrity("stored device key"))?;
            let cfg = self.credential_settings();
            let expires_at = now + i64::from(cfg.lifetime_days) * 86_400;
            let names: Vec<String> = made.iter().map(|(n, _)| n.clone()).collect();

            let mut tx = self.begin().await?;
            // The per-subject guard first (locked on PostgreSQL, in the
            // order deletion takes its locks): a deletion racing this
            // issuance either waits for it and revokes the new credential,
            // or has happened and the person is gone.
            tx.subject(&subject).await?.ok_or(VaultError::NotFound)?;
            self.still_active(&mut tx, &device).await?;
            // `[credentials] max_per_device`: see its comment.
            let cap = cfg.max_per_device;
            if tx
                .unexpired_credentials_of_device(&device.device_id, now, cap)
                .await?
                >= i64::from(cap)
            {
                return Err(VaultError::Limit(
                    "this device holds as many digital IDs that have not expired as a device \
                     may ([credentials] max_per_device); no more until some expire",
                ));
            }
            if !tx
                .insert_device_request(&call.request_id, &device.device_id, self.now_millis())
                .await?
            {
                return Err(refused(Refusal::RequestReplayed));
            }
            // Its place in a status list is taken in the same transaction
            // that records the issuance: no credential without its entry.
            let (status, new_list) = self
                .place_credential(&mut tx, &subject, &device.device_id, expires_at)
                .await?;
            let spec = CredentialSpec {
                issuer: &cfg.issuer,
                vct: &cfg.vct,
                issued_at: now,
                expires_at,
                holder: &holder,
                status: Some(status.to_claim()),
            };
            let credential: Zeroizing<String> = sdjwt::issue(&issuer, &spec, made, self.rng())
                .map_err(|_| VaultError::Internal("credential signing"))?;
            // Sealed to the phone's one-time key: the wallet app relaying
            // the answer and any TLS-terminating proxy see ciphertext only.
            let (enc, sealed) = idvault_core::consent::seal_credential(
                response_key,
                &call.request_id,
                &device.device_id,
                credential.as_bytes(),
                self.rng(),
            )
            .map_err(|_| VaultError::Internal("credential sealing"))?;
            drop(credential);
            let detail = format!(
                "op=issue_credential device={} kid={} claims={} expires_at={expires_at} status={}#{}",
                device.device_id,
                issuer.kid(),
                names.join(","),
                status.uri,
                status.idx
            );
            self.commit(tx, req, Some(&subject), detail).await?;
            if new_list {
                self.status_list_started(&status.uri);
                self.status_changed();
            }
            Ok(IssuedCredential { enc, sealed })
        })
        .await
    }

    /// The issuer keys as a JWK Set (`GetIssuerKeys`).
    pub async fn issuer_keys(&self, caller: &Caller) -> Result<Arc<Jwks>, VaultError> {
        self.handle(caller, Action::GetIssuerKeys, async |_| self.issuer_jwks())
            .await
    }

    /// Verifies a presentation for a relying party. `audience` empty means
    /// the caller's own SPIFFE identity; otherwise it must be that identity
    /// or one of the partner's `presentation_audiences`: a partner cannot
    /// have the vault vouch for a presentation meant for another.
    pub async fn verify_credential(
        &self,
        caller: &Caller,
        presentation: &str,
        audience: &str,
        nonce: &str,
    ) -> Result<Verified, VaultError> {
        self.handle(caller, Action::VerifyPresentation, async |req| {
            if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
                return Err(VaultError::BadRequest(format!(
                    "nonce must be 1..={MAX_NONCE_LEN} bytes"
                )));
            }
            if audience.len() > MAX_AUDIENCE_LEN {
                return Err(VaultError::BadRequest(format!(
                    "audience must be at most {MAX_AUDIENCE_LEN} bytes"
                )));
            }
            let audience = if audience.is_empty() {
                caller.spiffe_id.as_str()
            } else if req.partner.owns_audience(audience) {
                audience
            } else {
                return Err(VaultError::BadRequest(
                    "the audience must be the caller's SPIFFE id or one of its registered presentation_audiences".into(),
                ));
            };
            let keys = self.issuer_jwks()?;
            let expect = Expectations {
                typ: TYP_CREDENTIAL,
                audience,
                nonce,
                now: self.now_secs(),
                skew_secs: i64::from(self.consent_settings().clock_skew_seconds),
                max_key_binding_age_secs: i64::from(
                    self.credential_settings().max_presentation_age_seconds,
                ),
            };
            let v = sdjwt::verify_presentation(presentation, &keys, &expect)
                .map_err(VaultError::Credential)?;
            self.check_status(&v).await?;
            // Names only: the values are the person's data.
            let detail = format!(
                "kid={} vct={} disclosed={}",
                v.kid.as_deref().unwrap_or("-"),
                v.vct.as_deref().unwrap_or("-"),
                v.disclosed.keys().cloned().collect::<Vec<_>>().join(",")
            );
            let tx = self.begin().await?;
            self.commit(tx, req, None, detail).await?;
            Ok(v)
        })
        .await
    }

    /// The signing key of the current root key version, made once per
    /// version (each copy left behind would be the private key in freed
    /// memory).
    pub(crate) fn issuer_key(&self) -> Result<Arc<IssuerKey>, VaultError> {
        let v = self.keys().current_version();
        super::per_version(&self.issuer_key, v, || Ok(self.keys().issuer_key(v)?))
    }

    /// The JWK Set, made once per current root key version.
    fn issuer_jwks(&self) -> Result<Arc<Jwks>, VaultError> {
        let v = self.keys().current_version();
        super::per_version(&self.issuer_jwks, v, || issuer_jwks(self.keys()))
    }
}
