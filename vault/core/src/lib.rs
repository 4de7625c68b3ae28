//! idvault-core: keys, packets, subjects, the audit transparency log, consent and rule
//! checks, matching plans and the partner registry's domain types.
//!
//! Everything here works on bytes and values. It must never open a socket,
//! touch a file or a database, or read the clock or the OS RNG directly:
//! time and randomness come in as [`Clock`] and [`Rng`] parameters so that
//! expiry, rotation and nonces are testable. The store and the gRPC API are
//! thin adapters around this crate; its dependency list (no tokio, sqlx,
//! tonic, hyper) is what proves it. The one OS source it names,
//! [`SystemRng`], is only ever passed in by the binary.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod consent;
pub mod crypto;
pub mod device_request;
pub mod keys;
pub mod matching;
pub mod packet;
pub mod partner;
pub mod receipt;
pub mod records;
pub mod rowmac;
pub mod rules;
pub mod sdjwt;
pub mod secret;
pub mod shred;
pub mod subject;
pub mod tlog;
pub mod transaction;
pub mod xref;

// The protobuf boundary; its public items are re-exported from `consent`
// and `rules`.
pub mod wire;

pub use crypto::{Clock, Rng, SystemRng};
