//! The loop every background job of the vault runs in.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// Runs `step` at `first` and every `period` after it, until `stop` turns
/// true or its sender is gone. A step in progress finishes first; a step
/// that overruns its period delays the next one instead of bunching up
/// the missed ones.
pub(crate) async fn every<F>(
    first: Instant,
    period: Duration,
    mut stop: watch::Receiver<bool>,
    mut step: impl FnMut() -> F,
) where
    F: Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            // Stop first: a stop and a due tick at once end the loop.
            biased;
            r = stop.changed() => if r.is_err() { return },
            _ = tick.tick() => {
                step().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_on_schedule_until_stopped() {
        let (tx, rx) = watch::channel(false);
        let period = Duration::from_secs(10);
        let start = Instant::now();
        let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&runs);
        let job = tokio::spawn(every(start + period, period, rx, move || {
            seen.lock().unwrap().push(start.elapsed().as_secs());
            std::future::ready(())
        }));
        tokio::time::sleep(Duration::from_secs(35)).await;
        tx.send(true).unwrap();
        job.await.unwrap();
        assert_eq!(*runs.lock().unwrap(), [10, 20, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_already_sent_runs_nothing() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        let mut ran = false;
        every(Instant::now(), Duration::from_secs(1), rx, || {
            ran = true;
            std::future::ready(())
        })
        .await;
        assert!(!ran);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_when_the_sender_is_gone() {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        let mut runs = 0;
        let first = Instant::now() + Duration::from_secs(1);
        every(first, Duration::from_secs(1), rx, || {
            runs += 1;
            std::future::ready(())
        })
        .await;
        assert_eq!(runs, 0);
    }
}
