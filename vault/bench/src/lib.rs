//! idvault-bench: the benchmarks behind `idvault bench …` and the
//! synthetic people generator they share. Method and figures are in
//! `docs/BENCHMARKS.md`; nothing here is a test (no timing is asserted).
//!
//! - [`packets`]: sealing and verifying chained packets in memory.
//! - [`subjects`]: CreateSubject RPCs over mTLS, RPC/s and latency.
//! - [`tokenize`]: the stateless log tokenizer against a bare loop, and
//!   TokenizeLog in cross-reference mode through the vault.
//! - [`matching`]: blind-matching quality and latency.
//! - [`dataset`]: blind-matching quality on a labelled dataset of the
//!   user's own (a public record-linkage benchmark).
//! - [`cpu`]: the CPU a phase used (machine, process, busiest thread).
//! - [`consent`]: grant verification and consented releases.
//! - [`credentials`]: digital IDs issued, presented and verified.
//! - [`events`]: events to delivered commands.
//! - [`manifest`]: hash manifests built, diffed and summarised at scale.
//! - [`synth`]: synthetic people with realistic typos and variants.
//! - [`inprocess`]: a real vault on port 0 for the end-to-end ones.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Benchmarks measure wall time: reading the clock is their job.
#![allow(clippy::disallowed_methods)]

pub mod consent;
pub mod cpu;
pub mod credentials;
pub mod dataset;
pub mod events;
pub mod inprocess;
pub mod manifest;
pub mod matching;
pub mod packets;
pub mod rekey;
pub mod rpc;
pub mod subjects;
pub mod synth;
pub mod tokenize;

pub use inprocess::InProcess;

/// Errors of the benchmarks (a boxed error: this is tooling, not a
/// library API).
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
