//! idvault tokenizer: pure functions that turn identifiers into tokens.
//!
//! - [`ident`]: identifier types and normalisation (E.164, e-mail, …).
//! - [`token`]: stateless HMAC tokens per domain, and entity token format.
//! - [`variants`], [`nicknames`], [`matching`]: normalised variants of
//!   matchable fields and Fellegi–Sunter scoring for blind matching.
//!
//! This crate does no I/O and never logs: it works on strings and bytes
//! handed to it, and its errors never carry identifier values.
#![forbid(unsafe_code)]

pub mod ident;
pub mod json;
pub mod matching;
pub mod nicknames;
pub mod rewrite;
pub mod token;
pub mod variants;

pub use ident::{IdentifierType, NormalizeError, NormalizeOptions, normalize};
pub use token::DomainKey;
