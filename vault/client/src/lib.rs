//! idvault-client: what a partner's or a phone's code needs to talk to the
//! vault, and nothing else. A mobile or partner team can read this crate
//! alone.
//!
//! - [`channel`]: the mTLS gRPC channel ([`connect`], [`PartnerCredentials`]).
//! - [`release`]: opening a consented release sealed to the partner ([`ReleaseKey`]).
//! - [`bridge_file`]: reading an identity-bridge file (JSON Lines or CSV)
//!   into the records `ImportBridge` takes.
//! - [`audit`]: checking the vault's audit log: signed checkpoints,
//!   consistency with the last one kept, inclusion of one's own request.
//! - [`device`]: the phone's P-256 key, enrollment, signed consents and
//!   device requests ([`DeviceKey`]).
//!
//! The wire types are in `idvault-proto`; the signing contexts and formats
//! come from `idvault-core`, so client and vault cannot drift apart.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod bridge_file;
pub mod channel;
pub mod device;
pub mod link_file;
pub mod release;

pub use channel::{ClientError, PartnerCredentials, connect, connect_from};
pub use device::{DeviceKey, GrantRequest, unix_now};
pub use idvault_core::SystemRng;
pub use idvault_core::consent::ReleaseVerifier;
pub use idvault_proto::v1 as pb;
pub use release::{Expected, ReleaseError, ReleaseKey, release_nonce};
