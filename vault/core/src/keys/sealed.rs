//! The sealed root key file: the key file's text encrypted by a seal (an
//! HSM through PKCS#11 today; a cloud KMS would be another seal).
//!
//! ```text
//! idvault-sealed-root-keys v1
//! seal pkcs11
//! module /usr/lib/softhsm/libsofthsm2.so
//! token-label idvault
//! key-label idvault-root-seal
//! sealed <base64 of nonce ‖ ciphertext ‖ tag>
//! ```
//!
//! Every line before `sealed` is a non-secret parameter of the seal and is
//! authenticated: the seal's AEAD takes the exact bytes of those lines as
//! its associated data ([`SealedKeyFile::aad`]), so an edited token or key
//! label makes the unseal fail rather than silently mean something else.
//! The `module` line is authenticated the same way, but only by the module
//! once loaded: the server therefore loads only an absolute path that
//! nobody but its owner can write (`keyfile::pkcs11`).
//! This module only parses and prints the format; sealing itself happens in
//! the server's key file adapter, which talks to the HSM.

use base64::Engine as _;

use super::KeyError;

/// First line of a sealed root key file.
pub const SEALED_KEY_FILE_HEADER: &str = "idvault-sealed-root-keys v1";
/// Longest sealed file accepted (a key file of thousands of versions).
const MAX_SEALED_LEN: usize = 1 << 20;

/// A parsed sealed root key file.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKeyFile {
    /// The seal's kind (`pkcs11`).
    pub seal: String,
    /// The seal's parameters in file order (`module`, `token-label`, …).
    pub params: Vec<(String, String)>,
    /// What the seal produced: `nonce ‖ ciphertext ‖ tag` for AES-GCM.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedKeyFile")
            .field("seal", &self.seal)
            .field("params", &self.params)
            .field("sealed_len", &self.sealed.len())
            .finish()
    }
}

/// Whether `text` is a sealed key file (by its first line).
pub fn is_sealed(text: &str) -> bool {
    text.lines().next().map(str::trim) == Some(SEALED_KEY_FILE_HEADER)
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_value(s: &str) -> bool {
    !s.is_empty() && s.len() <= 4096 && s.chars().all(|c| !c.is_control())
}

impl SealedKeyFile {
    /// Builds a file; the parameter names and values must be printable
    /// one-line words and values.
    pub fn new(
        seal: &str,
        params: Vec<(String, String)>,
        sealed: Vec<u8>,
    ) -> Result<Self, KeyError> {
        if !valid_word(seal) {
            return Err(KeyError::Malformed("seal kind must be a word"));
        }
        for (k, v) in &params {
            if !valid_word(k) || k == "sealed" || k == "seal" {
                return Err(KeyError::Malformed("bad seal parameter name"));
            }
            if !valid_value(v) || v.trim() != v {
                return Err(KeyError::Malformed("bad seal parameter value"));
            }
        }
        Ok(Self {
            seal: seal.to_owned(),
            params,
            sealed,
        })
    }

    /// The value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The authenticated header: every line before `sealed`, each ending
    /// in `\n`, exactly as [`Self::to_text`] writes them.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = format!("{SEALED_KEY_FILE_HEADER}\nseal {}\n", self.seal);
        for (k, v) in &self.params {
            out.push_str(k);
            out.push(' ');
            out.push_str(v);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::from_utf8(self.aad()).unwrap_or_default();
        out.push_str("sealed ");
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(&self.sealed));
        out.push('\n');
        out
    }

    /// Parses the format. Errors name the line's role, never its content
    /// beyond the parameter name.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_SEALED_LEN {
            return Err(KeyError::Malformed("sealed key file is too large"));
        }
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(SEALED_KEY_FILE_HEADER) {
            return Err(KeyError::Malformed(
                "missing 'idvault-sealed-root-keys v1' header",
            ));
        }
        let seal = match lines.next().and_then(|l| l.split_once(' ')) {
            Some(("seal", kind)) => kind.to_owned(),
            _ => return Err(KeyError::Malformed("second line must be 'seal <kind>'")),
        };
        let mut params = Vec::new();
        let mut sealed = None;
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if sealed.is_some() {
                return Err(KeyError::Malformed("nothing may follow the 'sealed' line"));
            }
            let (k, v) = line
                .split_once(' ')
                .ok_or(KeyError::Malformed("expected '<name> <value>'"))?;
            if k == "sealed" {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.trim_end())
                    .map_err(|_| KeyError::Malformed("'sealed' is not base64"))?;
                sealed = Some(bytes);
            } else {
                if params.iter().any(|(p, _): &(String, String)| p == k) {
                    return Err(KeyError::Malformed("duplicate seal parameter"));
                }
                params.push((k.to_owned(), v.to_owned()));
            }
        }
        let sealed = sealed.ok_or(KeyError::Malformed("missing 'sealed' line"))?;
        let file = Self::new(&seal, params, sealed)?;
        // The header is authenticated byte for byte: refuse any spelling
        // that would not print back the same (stray spaces, CRLF), so what
        // the operator reads is what was sealed.
        if !text.as_bytes().starts_with(&file.aad()) {
            return Err(KeyError::Malformed(
                "sealed key file header is not in canonical form",
            ));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedKeyFile {
        SealedKeyFile::new(
            "pkcs11",
            vec![
                ("module".into(), "/usr/lib/softhsm/libsofthsm2.so".into()),
                ("token-label".into(), "idvault".into()),
                ("key-label".into(), "root seal".into()),
            ],
            vec![1, 2, 3, 250],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_aad() {
        let f = sample();
        let text = f.to_text();
        assert!(is_sealed(&text));
        assert_eq!(SealedKeyFile::parse(&text).unwrap(), f);
        assert_eq!(
            String::from_utf8(f.aad()).unwrap(),
            "idvault-sealed-root-keys v1\nseal pkcs11\nmodule /usr/lib/softhsm/libsofthsm2.so\n\
             token-label idvault\nkey-label root seal\n"
        );
        assert_eq!(f.param("key-label"), Some("root seal"));
        assert!(text.ends_with("sealed AQID+g==\n"));
    }

    #[test]
    fn malformed_files_are_refused() {
        let text = sample().to_text();
        for bad in [
            String::new(),
            "idvault-root-keys v1\n".into(),
            text.replace("seal pkcs11", "kind pkcs11"),
            text.replace("sealed AQID+g==\n", ""),
            text.replace("sealed AQID+g==", "sealed ***"),
            format!("{text}module x\n"),
            text.replace("token-label idvault", "token-label  idvault"),
            text.replace("token-label idvault", "module x"),
            text.replace('\n', "\r\n"),
        ] {
            assert!(SealedKeyFile::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(SealedKeyFile::new("pk cs", vec![], vec![]).is_err());
        assert!(SealedKeyFile::new("p", vec![("sealed".into(), "x".into())], vec![]).is_err());
        assert!(SealedKeyFile::new("p", vec![("a".into(), "x\ny".into())], vec![]).is_err());
    }
}
