//! Identity-bridge JSON Lines records.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = idvault_client::bridge_file::parse_json_line(s);
    }
});
