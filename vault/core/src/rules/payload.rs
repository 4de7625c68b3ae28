//! Command payloads in the outbox: the fields a triggered command carries,
//! sealed under a key derived from the subject's data key and bound to the
//! whole command header.
//!
//! Shredding a subject's data key must shred its pending commands, so this
//! module never seals under anything else; it never prints a payload's
//! values, and an opened payload that fails authentication yields nothing.

use zeroize::Zeroizing;

use super::{EventValue, MAX_EVENT_FIELDS, lp};
use crate::crypto::{self, CryptoError, NONCE_LEN, Rng};
use crate::secret::DataKey;
use crate::subject::SubjectId;

const PAYLOAD_KEY_LABEL: &[u8] = b"idvault/v1/command-payload";
const PAYLOAD_AAD_LABEL: &[u8] = b"idvault/v1/command\0";

fn payload_key(dek: &DataKey) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut k = Zeroizing::new([0u8; 32]);
    crypto::hkdf_sha256(&[], dek.expose(), PAYLOAD_KEY_LABEL, k.as_mut())?;
    Ok(k)
}

/// What a sealed command payload is bound to: changing any of it in the
/// outbox makes the payload fail to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandHeader<'a> {
    /// `cmd_…` id.
    pub command_id: &'a str,
    /// Recipient partner name.
    pub recipient: &'a str,
    /// The person.
    pub subject: &'a SubjectId,
    /// The recipient's pairwise token for the person.
    pub pairwise_token: &'a str,
    /// Publisher SPIFFE id.
    pub source: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Command name.
    pub command: &'a str,
    /// Rule id.
    pub rule_id: &'a str,
}

fn payload_aad(h: &CommandHeader<'_>) -> Vec<u8> {
    let mut aad = PAYLOAD_AAD_LABEL.to_vec();
    for part in [
        h.command_id,
        h.recipient,
        h.pairwise_token,
        h.source,
        h.event_type,
        h.command,
        h.rule_id,
    ] {
        lp(&mut aad, part.as_bytes());
    }
    aad.extend_from_slice(h.subject.as_bytes());
    aad
}

/// Seals a command's fields for the outbox under a key derived from the
/// subject's data key (so shredding the subject shreds its pending
/// commands), bound to the whole [`CommandHeader`]. Returns
/// `nonce || ciphertext || tag`.
pub fn seal_payload(
    dek: &DataKey,
    header: &CommandHeader<'_>,
    fields: &[(String, EventValue)],
    rng: &dyn Rng,
) -> Result<Vec<u8>, CryptoError> {
    let mut plain = Zeroizing::new(Vec::new());
    plain.extend_from_slice(
        &u32::try_from(fields.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (n, v) in fields {
        lp(&mut plain, n.as_bytes());
        lp(&mut plain, v.expose().as_bytes());
    }
    let key = payload_key(dek)?;
    let nonce = crypto::random_nonce(rng)?;
    let ct = crypto::aead_seal(&key, &nonce, &payload_aad(header), &plain)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = b.split_at_checked(n)?;
    *b = rest;
    Some(head)
}

fn take_u32(b: &mut &[u8]) -> Option<usize> {
    let v: [u8; 4] = take(b, 4)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(v)).ok()
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let n = take_u32(b)?;
    String::from_utf8(take(b, n)?.to_vec()).ok()
}

/// Opens a payload sealed by [`seal_payload`]. Any change to the bytes or
/// to the header fails.
pub fn open_payload(
    dek: &DataKey,
    header: &CommandHeader<'_>,
    sealed: &[u8],
) -> Result<Vec<(String, EventValue)>, CryptoError> {
    let (nonce, ct) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or(CryptoError::Authentication)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Authentication)?;
    let key = payload_key(dek)?;
    let plain = crypto::aead_open(&key, &nonce, &payload_aad(header), ct)?;
    let mut b: &[u8] = &plain;
    let n = take_u32(&mut b).ok_or(CryptoError::Authentication)?;
    let mut out = Vec::with_capacity(n.min(MAX_EVENT_FIELDS));
    for _ in 0..n {
        let name = take_str(&mut b).ok_or(CryptoError::Authentication)?;
        let value = take_str(&mut b).ok_or(CryptoError::Authentication)?;
        out.push((name, EventValue::new(value)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, B};
    use super::*;
    use crate::crypto::SystemRng;
    use proptest::prelude::*;

    fn dek(b: u8) -> DataKey {
        DataKey::from_bytes([b; 32], 1)
    }

    fn header<'a>(s: &'a SubjectId, id: &'a str) -> CommandHeader<'a> {
        CommandHeader {
            command_id: id,
            recipient: "partner-b",
            subject: s,
            pairwise_token: "pw_abc",
            source: A,
            event_type: "address.changed",
            command: "update_address",
            rule_id: "rul_1",
        }
    }

    #[test]
    fn payload_round_trip_and_binding() {
        let s = SubjectId::from_bytes([9; 16]);
        let fields = vec![
            ("address".to_owned(), EventValue::new("1 High St".into())),
            ("postcode".to_owned(), EventValue::new("AB1 2CD".into())),
        ];
        let rng = SystemRng::default();
        let h = header(&s, "cmd_1");
        let sealed = seal_payload(&dek(1), &h, &fields, &rng).unwrap();
        assert_eq!(open_payload(&dek(1), &h, &sealed).unwrap(), fields);
        let other = SubjectId::from_bytes([8; 16]);
        // Every header part is bound: moving the payload to another
        // command, receiver, person, token, source, type, command or rule
        // fails, as does another key or a cut payload.
        let changed = [
            CommandHeader {
                command_id: "cmd_2",
                ..h
            },
            CommandHeader {
                recipient: "partner-a",
                ..h
            },
            CommandHeader {
                subject: &other,
                ..h
            },
            CommandHeader {
                pairwise_token: "pw_xyz",
                ..h
            },
            CommandHeader { source: B, ..h },
            CommandHeader {
                event_type: "card.lost",
                ..h
            },
            CommandHeader {
                command: "block",
                ..h
            },
            CommandHeader {
                rule_id: "rul_2",
                ..h
            },
        ];
        for c in &changed {
            assert_eq!(
                open_payload(&dek(1), c, &sealed),
                Err(CryptoError::Authentication),
                "{c:?}"
            );
        }
        assert_eq!(
            open_payload(&dek(2), &h, &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            open_payload(&dek(1), &h, &sealed[..10]),
            Err(CryptoError::Authentication)
        );
        // The value never shows in Debug output.
        assert!(!format!("{fields:?}").contains("High"));
    }

    proptest! {
        #[test]
        fn any_flipped_payload_bit_fails(byte in 0usize..64, bit in 0u8..8) {
            let s = SubjectId::from_bytes([3; 16]);
            let fields = vec![("x".to_owned(), EventValue::new("value".into()))];
            let rng = SystemRng::default();
            let h = header(&s, "cmd_9");
            let mut sealed = seal_payload(&dek(4), &h, &fields, &rng).unwrap();
            let i = byte % sealed.len();
            sealed[i] ^= 1 << bit;
            prop_assert!(open_payload(&dek(4), &h, &sealed).is_err());
        }
    }
}
