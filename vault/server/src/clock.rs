//! The one place the server reads the wall clock. Everything else gets
//! time as a [`Clock`] parameter (clippy's `disallowed-methods` enforces
//! it), so expiry, windows and rotation are testable.

use idvault_core::Clock;

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the clock implementation itself
    fn now_millis(&self) -> i64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}
