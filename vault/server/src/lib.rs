//! idvault-server: the vault service behind the `idvault` binary.
//!
//! A request flows one way: [`api`] (tonic; decode, map protobuf to domain
//! types) → [`service`] (identify the partner, one policy decision,
//! validate, run the use case on the pure `idvault_core` and the [`store`],
//! one audited commit) → one status mapping back in [`api`].
//!
//! - [`service`]: the use cases, one module per capability.
//! - [`store`]: the sqlx adapter (SQLite and PostgreSQL); rows stay inside it.
//! - [`api`]: tonic services; all protobuf ↔ domain conversion.
//! - [`tls`], [`config`], [`keyfile`], [`policy`], [`devinit`], [`clock`]:
//!   the edges; [`app`] and [`server`] assemble and run them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod backup;
pub mod clock;
pub mod config;
pub mod crl;
pub mod devinit;
pub mod keyfile;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
pub mod policy;
pub mod server;
pub mod service;
pub mod shredlog;
pub mod sources;
pub mod store;
pub mod tls;
