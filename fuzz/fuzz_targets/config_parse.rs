//! The TOML configuration and partner registry.
#![no_main]
use std::path::Path;

use idvault_server::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Config::parse(s, Path::new("fuzz.toml"), Path::new("/fuzz"));
    }
});
