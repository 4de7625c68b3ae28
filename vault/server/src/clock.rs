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

/// A fresh version-7 UUID: 48 bits of the system clock's milliseconds,
/// then 74 random bits. Ids made close in time sort close together, so
/// the B-tree pages their index entries land on are the last few, shared
/// by a whole group commit, instead of one random page each (a page is a
/// WAL frame at COMMIT however little of it changed). Only for keys whose
/// time is no secret from whoever sees them; the time only orders, it is
/// never trusted.
pub(crate) fn time_ordered_id() -> [u8; 16] {
    // 80 bits from the OS generator that fills a version-4 UUID: its bytes
    // 0-5 and 10-13 carry no version or variant bits.
    let v4 = uuid::Uuid::new_v4().into_bytes();
    let mut random = [0u8; 10];
    random[..6].copy_from_slice(&v4[..6]);
    random[6..].copy_from_slice(&v4[10..14]);
    time_ordered_id_from(&random)
}

/// [`time_ordered_id`] with its random bits from `random` (74 of its 80
/// bits are used): for ids a caller receives, drawn from the vault's own
/// generator, whose failure is an error rather than a panic.
pub(crate) fn time_ordered_id_from(random: &[u8; 10]) -> [u8; 16] {
    let millis = u64::try_from(SystemClock.now_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, random)
        .into_uuid()
        .into_bytes()
}
