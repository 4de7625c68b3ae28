//! Tokens: the identity-bridge import into the cross-reference table
//! ([`bridge`]) and log tokenizing and detokenizing through the vault
//! ([`log`]). The pure parts (blind indexes, record plans, token formats)
//! live in `idvault_core::xref` and `idvault_tokenizer`.

pub mod bridge;
pub mod log;
