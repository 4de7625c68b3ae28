//! Log output: human-readable text (the default) or JSON, one object per
//! line (`--log-format json` or `[log] format = "json"`).
//!
//! Every answered call writes one line with target `idvault::access`:
//! request id, partner, SPIFFE id, method, outcome (the gRPC status name)
//! and latency. No line ever holds a value a caller sent or a key: the
//! vault logs ids, names it defines and counts, and its errors are written
//! to carry neither (docs/operations.md, "Logs").

use serde::Deserialize;
use tracing_subscriber::fmt::MakeWriter;

/// What log lines look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `message` and the event's fields at the top level.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format '{s}': use text or json")),
        }
    }
}

/// Installs the process's log subscriber: events `filter` lets through
/// (an `EnvFilter` directive string) written by `writer` in `format`.
/// Fails if one is installed already.
pub fn install<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    }
}
