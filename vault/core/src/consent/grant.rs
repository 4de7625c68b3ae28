//! Consent grants: what a verified grant says, the limits on its lifetime,
//! its time window, and the checks on purposes and field names.
//!
//! A [`Grant`] only ever comes from bytes whose signature verified (see
//! `decode_grant`); this module never decodes wire bytes and never reads
//! the clock: `now` is a parameter.

use super::{CHALLENGE_LEN, ID_LEN, MAX_AUDIENCE_LEN, MAX_PURPOSE_LEN, Refusal};
use crate::crypto::{HASH_LEN, sha256};
use crate::subject::{FieldName, SubjectId};

/// Limits applied to grants and device requests (`[consent]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentLimits {
    /// Longest lifetime of a single-use grant, seconds.
    pub max_single_use_secs: i64,
    /// Longest lifetime of a standing grant, seconds.
    pub max_standing_secs: i64,
    /// Clock skew tolerated on `issued_at`, seconds.
    pub skew_secs: i64,
    /// Lifetime of a challenge, seconds: a grant is first presented while
    /// the challenge it names lives, so one presented later than this
    /// (plus the skew) after its `issued_at` is refused whatever the
    /// challenge row says.
    pub challenge_ttl_secs: i64,
}

impl Default for ConsentLimits {
    fn default() -> Self {
        Self {
            max_single_use_secs: 600,
            max_standing_secs: 365 * 24 * 3600,
            skew_secs: 120,
            challenge_ttl_secs: 300,
        }
    }
}

impl ConsentLimits {
    /// How long a consent withdrawn before it was presented must stay
    /// refused, in seconds. A grant signed before the withdrawal names a
    /// challenge the vault issued before it, on its own clock, and a
    /// presentation needs that challenge unexpired: at most the challenge
    /// lifetime after the withdrawal. Check 10a
    /// ([`Grant::check_window`]) bounds it too, without the challenge row
    /// (which a database writer could plant), when the phone's clock is
    /// within the skew: `issued_at` at most the skew past the withdrawal,
    /// presentable until the lifetime and the skew after that. The larger
    /// of the two, which this is, also covers clocks that differ between
    /// replicas by up to the skew.
    pub fn withdrawal_secs(&self) -> i64 {
        self.challenge_ttl_secs
            .saturating_add(self.skew_secs.saturating_mul(2))
    }
}

/// A verified and validated consent grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Consent id.
    pub consent_id: [u8; ID_LEN],
    /// Subject.
    pub subject: SubjectId,
    /// Audience: the partner's SPIFFE id.
    pub audience: String,
    /// Purpose code.
    pub purpose: String,
    /// Consented fields, sorted, each once.
    pub fields: Vec<FieldName>,
    /// Challenge.
    pub challenge: [u8; CHALLENGE_LEN],
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Standing (true) or single-use.
    pub standing: bool,
}

/// Whether `p` is a purpose code: 1-64 of `a-z 0-9 . _ -`.
pub fn valid_purpose(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_PURPOSE_LEN
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Parses field names: catalogue names, at least one, each once; sorted.
pub fn parse_field_names<S: AsRef<str>>(names: &[S]) -> Option<Vec<FieldName>> {
    if names.is_empty() || names.len() > crate::subject::MAX_FIELDS_PER_REQUEST {
        return None;
    }
    let mut out = names
        .iter()
        .map(|n| FieldName::parse(n.as_ref()).ok())
        .collect::<Option<Vec<_>>>()?;
    out.sort();
    let n = out.len();
    out.dedup();
    (out.len() == n).then_some(out)
}

/// Whether `a` can be a grant's audience: 1 to [`MAX_AUDIENCE_LEN`] bytes.
/// (Whether it is the calling partner is checked when the grant is used.)
pub(crate) fn valid_audience(a: &str) -> bool {
    !a.is_empty() && a.len() <= MAX_AUDIENCE_LEN
}

impl Grant {
    /// Checks the grant's window at `now` (Unix seconds): issued no later
    /// than `now + skew`, not expired, and no longer-lived than its kind
    /// allows.
    pub fn check_window(&self, now: i64, limits: &ConsentLimits) -> Result<(), Refusal> {
        let lifetime = self.expires_at.saturating_sub(self.issued_at);
        let max = if self.standing {
            limits.max_standing_secs
        } else {
            limits.max_single_use_secs
        };
        if lifetime <= 0 || lifetime > max {
            return Err(Refusal::LifetimeTooLong);
        }
        if self.issued_at > now.saturating_add(limits.skew_secs) {
            return Err(Refusal::NotYetValid);
        }
        if now >= self.expires_at {
            return Err(Refusal::Expired);
        }
        // The challenge it names has expired by now, whatever the stored
        // challenge row says (a database writer could plant or revive
        // one): a signed grant cannot be presented again long after.
        let presentable_until = self
            .issued_at
            .saturating_add(limits.challenge_ttl_secs)
            .saturating_add(limits.skew_secs);
        if now > presentable_until {
            return Err(Refusal::ChallengeExpired);
        }
        Ok(())
    }
}

/// SHA-256 of the signed grant bytes: the receipt's `grant_hash`.
pub fn grant_hash(grant_bytes: &[u8]) -> [u8; HASH_LEN] {
    sha256(&[grant_bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_presentable_only_while_its_challenge_lives() {
        let limits = ConsentLimits::default();
        let g = Grant {
            consent_id: [1; crate::consent::ID_LEN],
            subject: crate::subject::SubjectId::from_bytes([2; 16]),
            audience: "spiffe://a".into(),
            purpose: "kyc".into(),
            fields: Vec::new(),
            challenge: [3; 32],
            issued_at: 1_000,
            expires_at: 1_000 + 86_400,
            standing: true,
        };
        let last = 1_000 + limits.challenge_ttl_secs + limits.skew_secs;
        assert_eq!(g.check_window(last, &limits), Ok(()));
        // Long before its own expiry, but its challenge is gone: a signed
        // grant kept by a partner cannot be presented again later.
        assert_eq!(
            g.check_window(last + 1, &limits),
            Err(Refusal::ChallengeExpired)
        );
        // A withdrawal made when the grant already existed (its issued_at
        // at most the skew ahead of the vault's clock) outlasts the last
        // moment it could be presented.
        let withdrawn_at = g.issued_at - limits.skew_secs;
        assert_eq!(withdrawn_at + limits.withdrawal_secs(), last);
    }
    use crate::wire::decode_grant;
    use crate::wire::tests::sample_grant;
    use prost::Message;

    #[test]
    fn windows() {
        let l = ConsentLimits::default();
        let g = decode_grant(&sample_grant().encode_to_vec()).unwrap();
        assert_eq!(g.check_window(1_795_000_000, &l), Ok(()));
        assert_eq!(g.check_window(1_795_000_299, &l), Ok(()));
        assert_eq!(g.check_window(1_795_000_300, &l), Err(Refusal::Expired));
        assert_eq!(g.check_window(1_794_999_880, &l), Ok(()), "within skew");
        assert_eq!(g.check_window(1_794_999_879, &l), Err(Refusal::NotYetValid));
        let mut long = g.clone();
        long.expires_at = long.issued_at + 601;
        assert_eq!(
            long.check_window(1_795_000_000, &l),
            Err(Refusal::LifetimeTooLong)
        );
        long.standing = true;
        assert_eq!(long.check_window(1_795_000_000, &l), Ok(()));
        let mut backwards = g;
        backwards.expires_at = backwards.issued_at;
        assert_eq!(
            backwards.check_window(1_795_000_000, &l),
            Err(Refusal::LifetimeTooLong)
        );
    }
}
