//! idvault: a privacy-preserving identity vault and tokenization service.
//!
//! - [`core`]: keys, packets, subjects and audit chaining; pure, no I/O.
//! - [`store`]: the sqlx adapter (SQLite and PostgreSQL).
//! - [`service`]: the use cases; ask the policy, run the core, write the store
//!   ([`xref`], [`logtok`], [`matching`], [`consent`], [`events`] hold the
//!   token, matching, consent and rules ones).
//! - [`api`]: tonic services; map protobuf to the service and errors to status.
//! - [`tls`], [`config`], [`keyfile`], [`devinit`], [`server`]: the edges.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bench;
pub mod bench_consent;
pub mod bench_events;
pub mod bench_match;
pub mod bridge_file;
pub mod client;
pub mod config;
pub mod consent;
pub mod core;
pub mod device;
pub mod devinit;
pub mod events;
pub mod keyfile;
pub mod logtok;
pub mod matching;
pub mod policy;
pub mod server;
pub mod service;
pub mod store;
pub mod synth;
pub mod tls;
pub mod tokenize;
pub mod xref;
