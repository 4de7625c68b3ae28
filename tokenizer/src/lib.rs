//! idvault tokenizer: pure functions that turn identifiers into tokens.
//!
//! - [`ident`]: identifier types and normalisation (E.164, e-mail, …).
//! - [`token`]: stateless HMAC tokens per domain, and entity token format.
//! - [`variants`], [`nicknames`], [`matching`]: normalised variants of
//!   matchable fields and Fellegi–Sunter scoring for blind matching.
//!
//! - [`manifest`]: hash manifests that compare two platforms' exports
//!   without revealing field values.
//! - [`pipeline`]: the multi-core, constant-memory log rewriting pipeline.
//!
//! This crate does no I/O of its own and never logs: it works on strings,
//! bytes and the reader and writer handles given to it, and its errors
//! never carry identifier values.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod em;
pub mod ident;
pub mod json;
pub mod manifest;
pub mod matching;
pub mod nicknames;
pub mod pipeline;
pub mod rewrite;
pub mod token;
pub mod variants;

pub use ident::{IdentifierType, NormalizeError, NormalizeOptions, normalize};
pub use token::DomainKey;
