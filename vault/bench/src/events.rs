//! `idvault bench events`: events → delivered commands per second, end to
//! end over mTLS against an in-process server (docs/BENCHMARKS.md).
//!
//! Set-up (timed, reported apart): partner-a creates `subjects` people; for
//! each, partner-a issues an enrollment code, a fresh phone key enrolls
//! through the `wallet` client, and the phone signs LinkEntity for
//! partner-a and partner-b and one rule: partner-a `address.changed` →
//! partner-b `update_address` with the fields `address` and `postcode`.
//!
//! Phase 1, the baseline: `events` PublishEvent calls from partner-a with
//! an event type no rule names, `concurrency` publishers at a time. Each is
//! the full audited event transaction (duplicate check, link check, rule
//! lookup) that ends without a command. Partner-b must then have nothing
//! waiting.
//!
//! Phase 2: partner-b opens a following StreamCommands first; then
//! `events` `address.changed` events are published, each with `address`
//! (`n-<i>`, the correlation key), `postcode` and a third field no rule
//! names, so each writes one command. The consumer de-duplicates on the
//! command id, stamps the arrival of each event's command, and hands the
//! ids to an acknowledger in batches of 64. Delivered commands/s is
//! `events` divided by the time from the first publish to the last command
//! received. Every command must arrive exactly once, carry only the two
//! named fields with the published values, keep its person's order, and
//! be acknowledged; nothing may be waiting afterwards. Any deviation fails
//! the run.
//!
//! Tooling, not library API: errors are boxed ([`BenchError`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idvault_proto::v1 as pb;
use pb::command_service_client::CommandServiceClient;
use pb::consent_service_client::ConsentServiceClient;
use pb::device_request::Action;
use pb::device_service_client::DeviceServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::subject_service_client::SubjectServiceClient;
use tonic::transport::Channel;

use crate::{BenchError, InProcess};
use idvault_client::device::{DeviceKey, unix_now};
use idvault_core::SystemRng;

/// Event type the rule names.
const EVENT_TYPE: &str = "address.changed";
/// Event type no rule names (phase 1).
const IGNORED_TYPE: &str = "address.verified";
/// The rule's command.
const COMMAND: &str = "update_address";
/// Acknowledge this many commands per AckCommands call.
const ACK_BATCH: usize = 64;
/// A following stream silent this long while commands are still missing
/// fails the run.
const IDLE: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct EventsBenchOptions {
    /// People, each with an enrolled phone, two links and one rule.
    pub subjects: usize,
    /// Events per phase.
    pub events: usize,
    /// Concurrent publishers (one mTLS connection each).
    pub concurrency: usize,
    /// Database URL (default: SQLite in a temporary directory).
    pub database_url: Option<String>,
}

/// The figures.
#[derive(Debug, Clone, Default)]
pub struct EventsReport {
    /// Backend label.
    pub backend: &'static str,
    /// People set up.
    pub subjects: usize,
    /// Events per phase.
    pub events: usize,
    /// Concurrent publishers.
    pub concurrency: usize,
    /// Set-up time (six RPCs per person).
    pub setup: Duration,
    /// Phase 1: ignored events accepted per second.
    pub ignored_per_sec: f64,
    /// Phase 2: events (one command each) accepted per second.
    pub accepted_per_sec: f64,
    /// Phase 2: commands received per second, first publish to last command.
    pub delivered_per_sec: f64,
    /// Sorted: publish sent → command received.
    pub from_send: Vec<Duration>,
    /// Sorted: publish answered → command received (zero when the command
    /// came first).
    pub from_answer: Vec<Duration>,
    /// Distinct people the commands were about (pairwise tokens).
    pub people: usize,
    /// Commands acknowledged.
    pub acknowledged: u64,
    /// AckCommands calls.
    pub ack_calls: usize,
}

/// The `p` quantile of sorted durations.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    let i = ((n as f64 * p) as usize).min(n.saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

impl fmt::Display for EventsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "events over mTLS, {}: {} people (partner-a {EVENT_TYPE} -> partner-b {COMMAND} [address, postcode]), {} events per phase, {} publishers; set-up {:.1} s",
            self.backend,
            self.subjects,
            self.events,
            self.concurrency,
            self.setup.as_secs_f64()
        )?;
        writeln!(
            f,
            "phase 1, ignored (no rule names the event type): {:>8.0} events/s",
            self.ignored_per_sec
        )?;
        writeln!(
            f,
            "phase 2, one command each, accepted:              {:>8.0} events/s  (ratio to ignored {:.2})",
            self.accepted_per_sec,
            self.accepted_per_sec / self.ignored_per_sec
        )?;
        writeln!(
            f,
            "phase 2, first publish -> last command received:  {:>8.0} commands/s",
            self.delivered_per_sec
        )?;
        writeln!(
            f,
            "  publish sent -> command received: p50 {:?}  p99 {:?}  max {:?}",
            quantile(&self.from_send, 0.5),
            quantile(&self.from_send, 0.99),
            self.from_send.last().copied().unwrap_or_default()
        )?;
        writeln!(
            f,
            "  publish answered -> command received: p50 {:?}  p99 {:?}",
            quantile(&self.from_answer, 0.5),
            quantile(&self.from_answer, 0.99)
        )?;
        writeln!(
            f,
            "  checked: {} commands, each event's exactly once, only address and postcode, about {} people in order; {} acknowledged in {} calls; none waiting",
            self.from_send.len(),
            self.people,
            self.acknowledged,
            self.ack_calls
        )
    }
}

fn entity(name: &str) -> String {
    format!(
        "spiffe://{}/partner/{name}",
        idvault_server::devinit::DEV_TRUST_DOMAIN
    )
}

/// The full run: start, set up, both phases, stop (also on failure).
pub async fn run(o: &EventsBenchOptions) -> Result<EventsReport, BenchError> {
    let vault = InProcess::start(o.database_url.clone()).await?;
    let r = phases(o, &vault).await;
    vault.stop().await?;
    r
}

async fn phases(o: &EventsBenchOptions, vault: &InProcess) -> Result<EventsReport, BenchError> {
    let n = o.events.max(1);
    let c = o.concurrency.max(1);
    let t = Instant::now();
    let subjects = Arc::new(setup(vault, o.subjects.max(1), c).await?);
    let setup_time = t.elapsed();

    // Phase 1: linked publisher, no rule for the event type.
    let (_, secs) = publish(vault, &subjects, n, c, IGNORED_TYPE, "ign").await?;
    let ignored_per_sec = n as f64 / secs;
    let waiting = pending(vault).await?;
    if waiting != 0 {
        return Err(format!(
            "{waiting} commands waiting for partner-b after {n} events no rule names"
        )
        .into());
    }

    // Phase 2: the consumer follows before the first publish.
    let mut stream = CommandServiceClient::new(vault.channel("partner-b").await?)
        .stream_commands(pb::StreamCommandsRequest { follow: true })
        .await?
        .into_inner();
    let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
    let acker = tokio::spawn(acknowledge(vault.channel("partner-b").await?, ack_rx));
    let consumer = tokio::spawn(async move {
        let mut c = Consumer::new(n, ack_tx);
        while !c.done() {
            let m = tokio::time::timeout(IDLE, stream.message())
                .await
                .map_err(|_| {
                    format!(
                        "no command for {} s with {} of {n} received (lost from the following stream?)",
                        IDLE.as_secs(),
                        c.distinct()
                    )
                })??
                .ok_or("the following stream ended early")?;
            let cmd = m.command.ok_or("a stream message without a command")?;
            c.receive(cmd, Instant::now())?;
        }
        c.finish()
    });
    let t0 = Instant::now();
    let (stamps, secs) = match publish(vault, &subjects, n, c, EVENT_TYPE, "evt").await {
        Ok(p) => p,
        Err(e) => {
            // Close the following stream, or the server's shutdown waits for it.
            consumer.abort();
            acker.abort();
            return Err(e);
        }
    };
    let accepted_per_sec = n as f64 / secs;
    let got = consumer.await??;
    let delivered_per_sec = n as f64 / got.last.duration_since(t0).as_secs_f64();
    let (acknowledged, ack_calls) = acker.await??;
    if acknowledged != n as u64 {
        return Err(format!("{acknowledged} of {n} commands acknowledged").into());
    }
    let waiting = pending(vault).await?;
    if waiting != 0 {
        return Err(format!("{waiting} commands still waiting after all were acknowledged").into());
    }

    let mut from_send = Vec::with_capacity(n);
    let mut from_answer = Vec::with_capacity(n);
    for (i, (sent, answered)) in stamps.iter().enumerate() {
        let r = got
            .received
            .get(i)
            .copied()
            .flatten()
            .ok_or("a command missing")?;
        from_send.push(r.saturating_duration_since(*sent));
        from_answer.push(r.saturating_duration_since(*answered));
    }
    from_send.sort();
    from_answer.sort();
    Ok(EventsReport {
        backend: vault.backend(),
        subjects: subjects.len(),
        events: n,
        concurrency: c,
        setup: setup_time,
        ignored_per_sec,
        accepted_per_sec,
        delivered_per_sec,
        from_send,
        from_answer,
        people: got.people,
        acknowledged,
        ack_calls,
    })
}

/// The next index below `n`, if any.
fn take(next: &AtomicUsize, n: usize) -> Option<usize> {
    let i = next.fetch_add(1, Ordering::Relaxed);
    (i < n).then_some(i)
}

/// `n` people set up by `c` workers; their subject ids in order.
async fn setup(vault: &InProcess, n: usize, c: usize) -> Result<Vec<String>, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (a, wallet) = (
            vault.channel("partner-a").await?,
            vault.channel("wallet").await?,
        );
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(i) = take(&next, n) {
                out.push((i, person(a.clone(), wallet.clone(), i).await?));
            }
            Ok::<_, BenchError>(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

/// One person: created by partner-a, phone enrolled, partner-a and
/// partner-b linked, the address rule signed.
async fn person(a: Channel, wallet: Channel, i: usize) -> Result<String, BenchError> {
    let rng = SystemRng::default();
    let subject = SubjectServiceClient::new(a.clone())
        .create_subject(pb::CreateSubjectRequest {
            fields: vec![
                pb::Field {
                    name: "given_name".into(),
                    value: format!("Person{i}"),
                },
                pb::Field {
                    name: "family_name".into(),
                    value: "Events".into(),
                },
            ],
        })
        .await?
        .into_inner()
        .subject_id;
    let code = ConsentServiceClient::new(a)
        .issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
            subject_id: subject.clone(),
        })
        .await?
        .into_inner()
        .enrollment_code;
    let key = DeviceKey::generate(&rng)?;
    let mut w = DeviceServiceClient::new(wallet);
    w.enroll(key.enrollment(&subject, &code)?).await?;
    for name in ["partner-a", "partner-b"] {
        let req = key.sign_request(
            Action::LinkEntity(pb::LinkEntity {
                entity: entity(name),
            }),
            unix_now(),
            &rng,
        )?;
        if !w.link_entity(req).await?.into_inner().linked {
            return Err(format!("{name} was already linked to a new person").into());
        }
    }
    let rule = pb::Rule {
        rule_id: String::new(),
        source: entity("partner-a"),
        event_type: EVENT_TYPE.into(),
        target: entity("partner-b"),
        command: COMMAND.into(),
        fields: vec!["address".into(), "postcode".into()],
    };
    let req = key.sign_request(
        Action::SetRules(pb::SetRules { rules: vec![rule] }),
        unix_now(),
        &rng,
    )?;
    let stored = w.set_rules(req).await?.into_inner().rules;
    if stored.len() != 1 {
        return Err(format!("{} rules stored instead of 1", stored.len()).into());
    }
    Ok(subject)
}

fn postcode(i: usize) -> String {
    format!("PC{:04}", i % 10_000)
}

/// Publishes events `0..n` of `event_type` as partner-a from `c`
/// connections, event `i` about person `i % people`. Returns each event's
/// (sent, answered) instants and the seconds from the first send to the
/// last answer.
async fn publish(
    vault: &InProcess,
    subjects: &Arc<Vec<String>>,
    n: usize,
    c: usize,
    event_type: &'static str,
    prefix: &'static str,
) -> Result<(Vec<(Instant, Instant)>, f64), BenchError> {
    let mut channels = Vec::with_capacity(c);
    for _ in 0..c {
        channels.push(vault.channel("partner-a").await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for ch in channels {
        let (next, subjects) = (Arc::clone(&next), Arc::clone(subjects));
        tasks.push(tokio::spawn(async move {
            let mut client = EventServiceClient::new(ch);
            let mut out = Vec::new();
            while let Some(i) = take(&next, n) {
                let subject = subjects
                    .get(i % subjects.len().max(1))
                    .ok_or("no people")?
                    .clone();
                let event_id = format!("{prefix}-{i}");
                let req = pb::PublishEventRequest {
                    subject: Some(pb::publish_event_request::Subject::SubjectId(subject)),
                    event_type: event_type.into(),
                    event_id: event_id.clone(),
                    fields: vec![
                        pb::EventField {
                            name: "address".into(),
                            value: format!("n-{i}"),
                        },
                        pb::EventField {
                            name: "postcode".into(),
                            value: postcode(i),
                        },
                        pb::EventField {
                            name: "other".into(),
                            value: format!("not forwarded {i}"),
                        },
                    ],
                };
                let sent = Instant::now();
                let r = client.publish_event(req).await?.into_inner();
                let answered = Instant::now();
                if r.duplicate || r.event_id != event_id {
                    return Err(format!("event {event_id} answered as {r:?}").into());
                }
                out.push((i, sent, answered));
            }
            Ok::<_, BenchError>(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await??);
    }
    let secs = t.elapsed().as_secs_f64();
    all.sort_by_key(|(i, _, _)| *i);
    if all.len() != n {
        return Err(format!("{} of {n} events published", all.len()).into());
    }
    Ok((all.into_iter().map(|(_, s, a)| (s, a)).collect(), secs))
}

/// How many commands partner-b has waiting (a stream without follow).
async fn pending(vault: &InProcess) -> Result<usize, BenchError> {
    let mut s = CommandServiceClient::new(vault.channel("partner-b").await?)
        .stream_commands(pb::StreamCommandsRequest { follow: false })
        .await?
        .into_inner();
    let mut n = 0;
    while s.message().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Acknowledges each batch as it comes; returns (acknowledged, calls).
async fn acknowledge(
    ch: Channel,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
) -> Result<(u64, usize), BenchError> {
    let mut c = CommandServiceClient::new(ch);
    let (mut acknowledged, mut calls) = (0u64, 0usize);
    while let Some(ids) = rx.recv().await {
        let n = ids.len();
        let r = c
            .ack_commands(pb::AckCommandsRequest { command_ids: ids })
            .await?
            .into_inner();
        if r.acknowledged as usize != n {
            return Err(format!("{} of a batch of {n} acknowledged", r.acknowledged).into());
        }
        acknowledged += u64::from(r.acknowledged);
        calls += 1;
    }
    Ok((acknowledged, calls))
}

/// What the consumer saw.
struct Received {
    /// Arrival of each event's command, by event index.
    received: Vec<Option<Instant>>,
    /// Arrival of the last one.
    last: Instant,
    /// Distinct pairwise tokens.
    people: usize,
}

/// The draining partner: checks each command and batches its id for
/// acknowledgement.
struct Consumer {
    seen: HashSet<String>,
    received: Vec<Option<Instant>>,
    order: HashMap<String, u64>,
    batch: Vec<String>,
    ack: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
    last: Option<Instant>,
}

impl Consumer {
    fn new(n: usize, ack: tokio::sync::mpsc::UnboundedSender<Vec<String>>) -> Self {
        Self {
            seen: HashSet::with_capacity(n),
            received: vec![None; n],
            order: HashMap::new(),
            batch: Vec::with_capacity(ACK_BATCH),
            ack,
            last: None,
        }
    }

    fn distinct(&self) -> usize {
        self.seen.len()
    }

    fn done(&self) -> bool {
        self.seen.len() == self.received.len()
    }

    fn receive(&mut self, c: pb::Command, at: Instant) -> Result<(), BenchError> {
        let id = c.command_id.clone();
        if !self.seen.insert(id.clone()) {
            return Err(format!("command {id} received twice on one stream").into());
        }
        if c.delivery_attempt != 1 || c.command != COMMAND || c.event_type != EVENT_TYPE {
            return Err(format!(
                "command {id}: attempt {}, command {:?}, event type {:?}",
                c.delivery_attempt, c.command, c.event_type
            )
            .into());
        }
        if c.source != entity("partner-a") {
            return Err(format!("command {id} from {:?}", c.source).into());
        }
        let mut names: Vec<&str> = c.fields.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        if names != ["address", "postcode"] {
            return Err(format!("command {id} carries the fields {names:?}").into());
        }
        let value = |name: &str| {
            c.fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.value.as_str())
        };
        let i: usize = value("address")
            .and_then(|a| a.strip_prefix("n-"))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| format!("command {id}: no event index in its address"))?;
        if value("postcode") != Some(postcode(i).as_str()) {
            return Err(format!("command {id}: postcode of another event").into());
        }
        let slot = self
            .received
            .get_mut(i)
            .ok_or_else(|| format!("command {id} for an event never published"))?;
        if slot.replace(at).is_some() {
            return Err(format!("event {i} produced a second command ({id})").into());
        }
        let last = self.order.entry(c.pairwise_token).or_insert(0);
        if c.subject_seq <= *last {
            return Err(format!(
                "command {id}: person's sequence {} after {}",
                c.subject_seq, *last
            )
            .into());
        }
        *last = c.subject_seq;
        self.last = Some(at);
        self.batch.push(id);
        if self.batch.len() == ACK_BATCH || self.done() {
            self.ack
                .send(std::mem::take(&mut self.batch))
                .map_err(|_| "the acknowledger stopped")?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Received, BenchError> {
        Ok(Received {
            last: self.last.ok_or("no command received")?,
            people: self.order.len(),
            received: self.received,
        })
    }
}
