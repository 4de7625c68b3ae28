//! Progress on a terminal for the long-running commands.

use std::io;
use std::time::{Duration, Instant};

use idvault_tokenizer::pipeline::Summary;

/// A progress bar on stderr when it is a terminal; nothing when piped.
pub(crate) fn progress_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}

/// A bar counting to `total` on stderr when it is a terminal, with the
/// rate and time left; nothing when piped.
pub(crate) fn counting_bar(total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}

/// Formats a progress message: records and records/s so far.
pub(crate) fn progress_message(s: &Summary, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let records = s.rewritten + s.rejected;
    format!(
        "{records} records ({:.0} records/s), {} rejected, {:.1} MiB",
        records as f64 / secs,
        s.rejected,
        s.bytes as f64 / 1048576.0
    )
}
