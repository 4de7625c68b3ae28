//! Crash safety of the command outbox: the real `idvault` binary is killed
//! with SIGKILL after an event was accepted and before its command was
//! acknowledged, restarted on the same data, and a de-duplicating consumer
//! then receives every command exactly once, in order, carrying only the
//! fields its rule names. Runs on SQLite and on a fresh PostgreSQL
//! database.
//!
//! PostgreSQL: when it is unreachable the PostgreSQL test says loudly that
//! it DID NOT RUN and passes, unless `CI` is set (or
//! `IDVAULT_REQUIRE_POSTGRES=1`), in which case it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use std::collections::HashSet;
use std::path::Path;

use idvault_client::device::{DeviceKey, unix_now};
use idvault_core::SystemRng;
use idvault_proto::v1 as pb;
use idvault_proto::v1::command_service_client::CommandServiceClient;
use idvault_proto::v1::consent_service_client::ConsentServiceClient;
use idvault_proto::v1::device_service_client::DeviceServiceClient;
use idvault_proto::v1::event_service_client::EventServiceClient;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use pb::device_request::Action;

const A: &str = "spiffe://idvault.dev/partner/partner-a";
const B: &str = "spiffe://idvault.dev/partner/partner-b";

fn field(name: &str, value: &str) -> pb::EventField {
    pb::EventField {
        name: name.into(),
        value: value.into(),
    }
}

fn address(i: u32) -> String {
    format!("{i} Kill Street")
}

/// Creates a person (as partner-a), enrolls a phone, links partner-a and
/// partner-b and sets the rule A:address.changed → B:update_address
/// carrying only `address`. Returns the subject id.
async fn set_up_person(server: &Server, dir: &Path) -> String {
    let rng = SystemRng::default();
    let a = server.channel(dir, "partner-a").await;
    let subject = step(
        "CreateSubject",
        SubjectServiceClient::new(a.clone()).create_subject(pb::CreateSubjectRequest {
            fields: vec![pb::Field {
                name: "given_name".into(),
                value: "Ada".into(),
            }],
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .subject_id;
    let code = step(
        "IssueEnrollmentCode",
        ConsentServiceClient::new(a).issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
            subject_id: subject.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .enrollment_code;
    let key = DeviceKey::generate(&rng).unwrap();
    let mut wallet = DeviceServiceClient::new(server.channel(dir, "wallet").await);
    step(
        "Enroll",
        wallet.enroll(key.enrollment(&subject, &code).unwrap()),
    )
    .await
    .unwrap();
    for entity in [A, B] {
        let req = key
            .sign_request(
                Action::LinkEntity(pb::LinkEntity {
                    entity: entity.into(),
                }),
                unix_now(),
                &rng,
            )
            .unwrap();
        let linked = step("LinkEntity", wallet.link_entity(req))
            .await
            .unwrap()
            .into_inner()
            .linked;
        assert!(linked, "{entity} newly linked");
    }
    let req = key
        .sign_request(
            Action::SetRules(pb::SetRules {
                rules: vec![pb::Rule {
                    rule_id: String::new(),
                    source: A.into(),
                    event_type: "address.changed".into(),
                    target: B.into(),
                    command: "update_address".into(),
                    fields: vec!["address".into()],
                }],
            }),
            unix_now(),
            &rng,
        )
        .unwrap();
    let rules = step("SetRules", wallet.set_rules(req))
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(rules.len(), 1);
    subject
}

/// Publishes event `ev-i` as partner-a: the rule's `address` plus fields
/// the rule does not name.
async fn publish(server: &Server, dir: &Path, subject: &str, i: u32) -> pb::PublishEventResponse {
    let mut events = EventServiceClient::new(server.channel(dir, "partner-a").await);
    step(
        "PublishEvent",
        events.publish_event(pb::PublishEventRequest {
            subject: Some(pb::publish_event_request::Subject::SubjectId(
                subject.into(),
            )),
            event_type: "address.changed".into(),
            event_id: format!("ev-{i}"),
            fields: vec![
                field("address", &address(i)),
                field("national_id", "QQ123456C"),
                field("phone", "+44 20 7946 0000"),
            ],
        }),
    )
    .await
    .unwrap()
    .into_inner()
}

/// A consumer that de-duplicates on command id: processes each command
/// once, acknowledges everything it receives.
#[derive(Default)]
struct Consumer {
    seen: HashSet<String>,
    processed: Vec<pb::Command>,
}

impl Consumer {
    /// One non-following stream as partner-b: receives everything pending,
    /// acknowledges each command after processing it. Returns what this
    /// drain received (duplicates included).
    async fn drain(&mut self, server: &Server, dir: &Path) -> Vec<pb::Command> {
        let ch = server.channel(dir, "partner-b").await;
        let mut client = CommandServiceClient::new(ch);
        let mut stream = step(
            "StreamCommands",
            client.stream_commands(pb::StreamCommandsRequest { follow: false }),
        )
        .await
        .unwrap()
        .into_inner();
        let mut received = Vec::new();
        while let Some(m) = step("stream message", stream.message()).await.unwrap() {
            let c = m.command.expect("a command in every stream message");
            if self.seen.insert(c.command_id.clone()) {
                self.processed.push(c.clone());
            }
            let acked = step(
                "AckCommands",
                client.ack_commands(pb::AckCommandsRequest {
                    command_ids: vec![c.command_id.clone()],
                }),
            )
            .await
            .unwrap()
            .into_inner()
            .acknowledged;
            assert_eq!(acked, 1, "first acknowledgement of {}", c.command_id);
            received.push(c);
        }
        received
    }
}

/// Asserts `c` is the command for event `ev-i`, carrying only `address`.
fn assert_command(c: &pb::Command, i: u32) {
    assert_eq!(c.command, "update_address");
    assert_eq!(c.event_type, "address.changed");
    assert_eq!(c.source, A);
    assert_eq!(c.subject_seq, u64::from(i), "{c:?}");
    assert!(c.pairwise_token.starts_with("pw_"), "{c:?}");
    assert_eq!(
        c.fields,
        vec![field("address", &address(i))],
        "only the field the rule names"
    );
    assert!(
        !c.fields
            .iter()
            .any(|f| f.name == "national_id" || f.value.contains("QQ123456C")),
        "{c:?}"
    );
}

async fn kill_and_redeliver(database_url: Option<&str>) {
    let dir = TempDir::new();
    let dir_p = dir.0.as_path();
    run_cli(dir_p, &["init", "--dev"], None);

    // First life: set up the person, accept three events, and let
    // partner-b see (but not acknowledge) the first command.
    let server = Server::start(dir_p, database_url, 1).await;
    let subject = set_up_person(&server, dir_p).await;
    for i in 1..=3 {
        let r = publish(&server, dir_p, &subject, i).await;
        assert!(!r.duplicate, "ev-{i} is new");
    }
    let mut b = CommandServiceClient::new(server.channel(dir_p, "partner-b").await);
    let mut stream = step(
        "StreamCommands",
        b.stream_commands(pb::StreamCommandsRequest { follow: false }),
    )
    .await
    .unwrap()
    .into_inner();
    let first = step("first command", stream.message())
        .await
        .unwrap()
        .expect("a pending command")
        .command
        .expect("a command");
    assert_command(&first, 1);
    assert_eq!(first.delivery_attempt, 1);
    // Crash with the command received and unacknowledged.
    server.kill9();
    drop(stream);
    drop(b);

    // Second life: everything is there exactly once, in order.
    let server = Server::start(dir_p, database_url, 2).await;
    let mut consumer = Consumer::default();
    let got = consumer.drain(&server, dir_p).await;
    let ids: Vec<&str> = got.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(got.len(), 3, "three commands, none twice: {ids:?}");
    assert_eq!(consumer.processed.len(), 3);
    for (c, i) in got.iter().zip(1..) {
        assert_command(c, i);
    }
    assert_eq!(got[0].command_id, first.command_id, "same id on redelivery");
    assert!(
        got[0].delivery_attempt >= 2,
        "redelivery is counted: {}",
        got[0].delivery_attempt
    );
    assert!(
        consumer.drain(&server, dir_p).await.is_empty(),
        "all acknowledged"
    );

    // A fourth event accepted right before a crash, nothing drained.
    let r = publish(&server, dir_p, &subject, 4).await;
    assert!(!r.duplicate);
    server.kill9();

    // Third life: the fourth command is there, once; the event id is
    // still known.
    let server = Server::start(dir_p, database_url, 3).await;
    let got = consumer.drain(&server, dir_p).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_command(&got[0], 4);
    assert_eq!(got[0].delivery_attempt, 1);
    assert_eq!(consumer.processed.len(), 4, "processed exactly once each");
    let seqs: Vec<u64> = consumer.processed.iter().map(|c| c.subject_seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let r = publish(&server, dir_p, &subject, 4).await;
    assert!(r.duplicate, "ev-4 was recorded before the crash");
    assert!(consumer.drain(&server, dir_p).await.is_empty());
    server.kill9();

    // The audit log survived three crashes intact.
    let out = run_cli(dir_p, &["audit", "verify"], database_url);
    assert!(out.contains("audit log intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_command_survives_sigkill_exactly_once() {
    kill_and_redeliver(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_command_survives_sigkill_exactly_once() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    kill_and_redeliver(Some(&db.url)).await;
    db.drop_now().await;
}
