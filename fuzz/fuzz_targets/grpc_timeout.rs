//! The `grpc-timeout` header value a caller sends (admission control
//! reads it before anything else).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(d) = idvault_server::api::grpc_timeout(s)
    {
        // Capped at a day whatever the digits say.
        assert!(d <= std::time::Duration::from_secs(86_400));
    }
});
