//! Packets come back from storage: parsing and opening must never panic.
#![no_main]
use idvault_core::packet;
use idvault_core::secret::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = packet::parse(data) {
        let _ = p.open(&DataKey::from_bytes([7; 32], 1));
    }
});
