//! Key and certificate material read from files a user points the vault
//! or its clients at: a phone's device key and a partner's release key
//! (PKCS#8 PEM), a manifest comparison key (hex), the vault release keys
//! a partner trusts (`--vault-key`, hex lines), and the vault's TLS
//! certificates, private key and CRLs (PEM or DER; a CRL's `nextUpdate`
//! is parsed too). Refusals are errors, never panics.
#![no_main]
use std::io::Write;

use idvault_client::device::DeviceKey;
use idvault_client::{ReleaseKey, ReleaseVerifier};
use idvault_tokenizer::manifest::ComparisonKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = DeviceKey::from_pem(text);
        let _ = ReleaseKey::from_pem(text);
        let _ = ComparisonKey::from_hex(text);
        if let Ok(v) = ReleaseVerifier::from_text(text) {
            assert!(!v.keys().is_empty());
        }
    }
    let Ok(mut f) = tempfile_in_tmp() else {
        return;
    };
    if f.1.write_all(data).and_then(|()| f.1.flush()).is_err() {
        return;
    }
    let _ = idvault_server::tls::read_certs(&f.0);
    let _ = idvault_server::tls::read_key(&f.0);
    let _ = idvault_server::crl::read(&f.0);
    let _ = std::fs::remove_file(&f.0);
});

/// A scratch file of this process (the fuzzer runs one input at a time).
fn tempfile_in_tmp() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let path = std::env::temp_dir().join(format!("idvault-fuzz-keys-{}", std::process::id()));
    let f = std::fs::File::create(&path)?;
    Ok((path, f))
}
