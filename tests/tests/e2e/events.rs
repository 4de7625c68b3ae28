//! A person's rules and actions over mTLS: the phone links entities and
//! signs rules, partners publish events, commands go through the durable
//! outbox to the receiving partner, who drains and acknowledges them.
//! Ignored events, field selection, ordering, redelivery across restarts,
//! refusals and suggestions; every outcome checked in the audit log too.

use std::collections::HashSet;

use idvault_tests::idvault_client::device::{DeviceKey, unix_now};
use idvault_tests::idvault_core::SystemRng;
use idvault_tests::idvault_proto::v1 as pb;
use idvault_tests::idvault_proto::v1::command_service_client::CommandServiceClient;
use idvault_tests::idvault_proto::v1::consent_service_client::ConsentServiceClient;
use idvault_tests::idvault_proto::v1::device_service_client::DeviceServiceClient;
use idvault_tests::idvault_proto::v1::event_service_client::EventServiceClient;
use idvault_tests::{Backend, TestVault};
use pb::device_request::Action;
use tonic::Code;
use tonic::transport::Channel;

const A: &str = "spiffe://idvault.dev/partner/partner-a";
const B: &str = "spiffe://idvault.dev/partner/partner-b";
const WALLET: &str = "spiffe://idvault.dev/partner/wallet";

fn reason(s: &tonic::Status) -> &str {
    s.metadata()
        .get("idvault-refusal")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn rule(source: &str, event_type: &str, target: &str, command: &str, fields: &[&str]) -> pb::Rule {
    pb::Rule {
        rule_id: String::new(),
        source: source.into(),
        event_type: event_type.into(),
        target: target.into(),
        command: command.into(),
        fields: fields.iter().map(|f| (*f).into()).collect(),
    }
}

fn field(name: &str, value: &str) -> pb::EventField {
    pb::EventField {
        name: name.into(),
        value: value.into(),
    }
}

/// A person: subject (created by partner-a), partner-a's pairwise token
/// for it, and enrolled phone.
struct Person {
    subject: String,
    token: String,
    key: DeviceKey,
}

struct Ctx {
    tv: TestVault,
    wallet: DeviceServiceClient<Channel>,
}

impl Ctx {
    async fn start(backend: Backend) -> Self {
        Self::on(TestVault::start(backend).await.unwrap()).await
    }

    /// On a vault already started (with a config of the test's own).
    async fn on(tv: TestVault) -> Self {
        let wallet = DeviceServiceClient::new(tv.channel("wallet").await.unwrap());
        Self { tv, wallet }
    }

    /// A new person with `fields`, enrolled with a fresh phone key.
    async fn person(&mut self, name: &str) -> Person {
        let subject = self
            .tv
            .subjects("partner-a")
            .await
            .unwrap()
            .create_subject(pb::CreateSubjectRequest {
                fields: vec![pb::Field {
                    name: "given_name".into(),
                    value: name.into(),
                }],
            })
            .await
            .unwrap()
            .into_inner();
        let (subject, token) = (subject.subject_id, subject.pairwise_token);
        let code = ConsentServiceClient::new(self.tv.channel("partner-a").await.unwrap())
            .issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
                subject_id: subject.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .enrollment_code;
        let key = DeviceKey::generate(&SystemRng::default()).unwrap();
        self.wallet
            .enroll(key.enrollment(&subject, &code).unwrap())
            .await
            .unwrap();
        Person {
            subject,
            token,
            key,
        }
    }

    fn signed(&self, p: &Person, action: Action) -> pb::SignedDeviceRequest {
        p.key
            .sign_request(action, unix_now(), &SystemRng::default())
            .unwrap()
    }

    async fn link(&mut self, p: &Person, entity: &str) -> Result<bool, tonic::Status> {
        let req = self.signed(
            p,
            Action::LinkEntity(pb::LinkEntity {
                entity: entity.into(),
            }),
        );
        self.wallet
            .link_entity(req)
            .await
            .map(|r| r.into_inner().linked)
    }

    async fn set_rules(
        &mut self,
        p: &Person,
        rules: Vec<pb::Rule>,
    ) -> Result<Vec<pb::Rule>, tonic::Status> {
        let req = self.signed(p, Action::SetRules(pb::SetRules { rules }));
        self.wallet
            .set_rules(req)
            .await
            .map(|r| r.into_inner().rules)
    }

    async fn list_rules(&mut self, p: &Person) -> pb::ListRulesResponse {
        let req = self.signed(p, Action::ListRules(pb::ListRules {}));
        self.wallet.list_rules(req).await.unwrap().into_inner()
    }

    /// Links partner-a and partner-b and sets the address rule A → B.
    async fn forward_addresses(&mut self, p: &Person) {
        assert!(self.link(p, A).await.unwrap());
        assert!(self.link(p, B).await.unwrap());
        self.set_rules(
            p,
            vec![rule(
                A,
                "address.changed",
                B,
                "update_address",
                &["address", "postcode"],
            )],
        )
        .await
        .unwrap();
    }

    async fn publish(
        &self,
        partner: &str,
        subject: &str,
        event_type: &str,
        event_id: &str,
        fields: Vec<pb::EventField>,
    ) -> Result<pb::PublishEventResponse, tonic::Status> {
        let subject = pb::publish_event_request::Subject::SubjectId(subject.into());
        self.publish_as(partner, subject, event_type, event_id, fields)
            .await
            .map(tonic::Response::into_inner)
    }

    /// [`Ctx::publish`] naming the person either way, with the response's
    /// metadata (its request id).
    async fn publish_as(
        &self,
        partner: &str,
        subject: pb::publish_event_request::Subject,
        event_type: &str,
        event_id: &str,
        fields: Vec<pb::EventField>,
    ) -> Result<tonic::Response<pb::PublishEventResponse>, tonic::Status> {
        EventServiceClient::new(self.tv.channel(partner).await.unwrap())
            .publish_event(pb::PublishEventRequest {
                subject: Some(subject),
                event_type: event_type.into(),
                event_id: event_id.into(),
                fields,
            })
            .await
    }

    /// `n` address events about `p` from partner-a, all sent at once, each
    /// on its own connection (ids `{prefix}-0`…, address `a{i}`); the
    /// answers in id order.
    async fn publish_at_once(
        &self,
        p: &Person,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<Vec<Result<pb::PublishEventResponse, tonic::Status>>> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let ch = self.tv.channel("partner-a").await?;
            let subject = p.subject.clone();
            let event_id = format!("{prefix}-{i}");
            tasks.push(tokio::spawn(async move {
                EventServiceClient::new(ch)
                    .publish_event(pb::PublishEventRequest {
                        subject: Some(pb::publish_event_request::Subject::SubjectId(subject)),
                        event_type: "address.changed".into(),
                        event_id,
                        fields: vec![field("address", &format!("a{i}"))],
                    })
                    .await
                    .map(tonic::Response::into_inner)
            }));
        }
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await?);
        }
        Ok(out)
    }

    /// Everything `partner` has waiting now (stream without follow).
    async fn drain(&self, partner: &str) -> Vec<pb::Command> {
        let mut c = CommandServiceClient::new(self.tv.channel(partner).await.unwrap());
        let mut s = c
            .stream_commands(pb::StreamCommandsRequest { follow: false })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            out.push(m.command.unwrap());
        }
        out
    }

    async fn ack(&self, partner: &str, ids: Vec<String>) -> u32 {
        CommandServiceClient::new(self.tv.channel(partner).await.unwrap())
            .ack_commands(pb::AckCommandsRequest { command_ids: ids })
            .await
            .unwrap()
            .into_inner()
            .acknowledged
    }

    async fn audit(&self, action: &str) -> Vec<(String, String)> {
        sqlx::query_as::<_, (String, String)>(
            "SELECT outcome, detail FROM audit_log WHERE action = $1 ORDER BY id",
        )
        .bind(action.to_owned())
        .fetch_all(self.tv.db())
        .await
        .unwrap()
    }
}

fn ids(c: &[pb::Command]) -> Vec<String> {
    c.iter().map(|c| c.command_id.clone()).collect()
}

/// Events from an entity the person has not linked, or that no rule
/// names, are ignored and audited as such; the publisher is told the same
/// as for a delivered event.
pub async fn unlinked_and_unruled_events_are_ignored(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    // Not linked at all yet.
    let r = ctx
        .publish(
            "partner-a",
            &p.subject,
            "address.changed",
            "e1",
            vec![field("address", "x")],
        )
        .await?;
    assert!(!r.duplicate);
    ctx.forward_addresses(&p).await;
    // Linked, but no rule for this event type.
    ctx.publish("partner-a", &p.subject, "card.lost", "e2", vec![])
        .await?;
    assert!(ctx.drain("partner-b").await.is_empty());
    assert!(ctx.drain("partner-a").await.is_empty());
    // Unlinking partner-a removes the rule naming it; its events are
    // ignored again.
    let req = ctx.signed(
        &p,
        Action::UnlinkEntity(pb::UnlinkEntity { entity: A.into() }),
    );
    let u = ctx.wallet.unlink_entity(req).await?.into_inner();
    assert!(u.unlinked);
    assert_eq!(u.rules_removed, 1);
    ctx.publish(
        "partner-a",
        &p.subject,
        "address.changed",
        "e4",
        vec![field("address", "y")],
    )
    .await?;
    assert!(ctx.drain("partner-b").await.is_empty());
    // What each event did is in the vault's own record, named by the
    // publisher's request; the publisher's records all say the same.
    let outcomes: Vec<String> = ctx
        .audit("EventOutcome")
        .await
        .into_iter()
        .map(|(o, d)| {
            assert_eq!(o, "ok");
            let mut words = d.split_whitespace();
            assert!(words.next().unwrap().starts_with("request="), "{d}");
            words.next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "outcome=ignored_unlinked",
            "outcome=ignored_no_rule",
            "outcome=ignored_unlinked"
        ]
    );
    for (o, d) in ctx.audit("PublishEvent").await {
        assert_eq!(
            (o.as_str(), d.split_whitespace().next()),
            ("ok", Some("accepted"))
        );
        assert!(!d.contains("outcome"), "{d}");
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM command_outbox")
        .fetch_one(ctx.tv.db())
        .await?;
    assert_eq!(n, 0);
    ctx.tv.stop().await
}

/// A command carries only the fields its rule names (those the event
/// had), the receiver's own pairwise token, and no value reaches the audit
/// log or the outbox in clear.
pub async fn command_carries_only_named_fields(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Grace").await;
    ctx.forward_addresses(&p).await;
    ctx.publish(
        "partner-a",
        &p.subject,
        "address.changed",
        "evt-1",
        vec![
            field("address", "221B Baker Street"),
            field("national_id", "QQ123456C"),
            field("mother_maiden_name", "Lovelace"),
        ],
    )
    .await?;
    let cmds = ctx.drain("partner-b").await;
    assert_eq!(cmds.len(), 1);
    let c = &cmds[0];
    assert_eq!(c.command, "update_address");
    assert_eq!(c.event_type, "address.changed");
    assert_eq!(c.source, A);
    assert_eq!(c.subject_seq, 1);
    assert_eq!(c.delivery_attempt, 1);
    assert!(c.command_id.starts_with("cmd_") && c.command_id.len() == 36);
    // postcode is named but the event lacked it: absent, not empty.
    assert_eq!(c.fields, vec![field("address", "221B Baker Street")]);
    // The receiver's pairwise token, never the subject id.
    assert!(c.pairwise_token.starts_with("pw_"));
    assert!(!c.pairwise_token.contains(&p.subject));
    let b_token: String =
        sqlx::query_scalar("SELECT token FROM pairwise_tokens WHERE partner = 'partner-b'")
            .fetch_one(ctx.tv.db())
            .await?;
    assert_eq!(c.pairwise_token, b_token);
    // partner-b can publish about the person with that token too.
    let r = ctx
        .publish_as(
            "partner-b",
            pb::publish_event_request::Subject::PairwiseToken(b_token.clone()),
            "contract.ended",
            "b-1",
            vec![],
        )
        .await?
        .into_inner();
    assert!(!r.duplicate);
    // By subject id, only the creator: partner-b holds a token for the
    // person but was never given the id by the vault, and must not be able
    // to test ids it got elsewhere.
    let r = ctx
        .publish("partner-b", &p.subject, "contract.ended", "b-2", vec![])
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::NotFound);
    // No value in the audit log; the outbox holds only ciphertext.
    let details: Vec<String> = sqlx::query_scalar("SELECT detail FROM audit_log")
        .fetch_all(ctx.tv.db())
        .await?;
    for d in &details {
        for secret in ["Baker", "QQ123456C", "Lovelace"] {
            assert!(!d.contains(secret), "{d}");
        }
    }
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM command_outbox")
        .fetch_all(ctx.tv.db())
        .await?;
    assert_eq!(payloads.len(), 1);
    assert!(!payloads[0].windows(5).any(|w| w == b"Baker"));
    // Deleting the person removes their pending commands (crypto-shredding).
    ctx.tv
        .subjects("partner-a")
        .await?
        .delete_subject(pb::DeleteSubjectRequest {
            subject_id: p.subject.clone(),
        })
        .await?;
    assert!(ctx.drain("partner-b").await.is_empty());
    ctx.tv.stop().await
}

/// Commands of each subject arrive in event order; unacknowledged ones
/// come again on every new stream and after a restart, with the same id;
/// acknowledged ones never; a repeated event id does nothing.
pub async fn ordered_redelivered_until_acknowledged(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p1 = ctx.person("Ada").await;
    let p2 = ctx.person("Alan").await;
    ctx.forward_addresses(&p1).await;
    ctx.forward_addresses(&p2).await;
    for i in 0..4 {
        for (p, tag) in [(&p1, "p1"), (&p2, "p2")] {
            ctx.publish(
                "partner-a",
                &p.subject,
                "address.changed",
                &format!("{tag}-{i}"),
                vec![field("address", &format!("{tag} address {i}"))],
            )
            .await?;
        }
    }
    let again = ctx
        .publish(
            "partner-a",
            &p1.subject,
            "address.changed",
            "p1-0",
            vec![field("address", "x")],
        )
        .await?;
    assert!(again.duplicate);
    let first = ctx.drain("partner-b").await;
    assert_eq!(first.len(), 8, "a repeated event id adds no command");
    for tag in ["p1", "p2"] {
        let mine: Vec<&pb::Command> = first
            .iter()
            .filter(|c| c.fields[0].value.starts_with(tag))
            .collect();
        let seqs: Vec<u64> = mine.iter().map(|c| c.subject_seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let values: Vec<&str> = mine.iter().map(|c| c.fields[0].value.as_str()).collect();
        assert_eq!(
            values,
            (0..4)
                .map(|i| format!("{tag} address {i}"))
                .collect::<Vec<_>>()
        );
    }
    // Not acknowledged: delivered again, same ids, second attempt.
    let second = ctx.drain("partner-b").await;
    assert_eq!(ids(&second), ids(&first));
    assert!(second.iter().all(|c| c.delivery_attempt == 2));
    // Acknowledge the first three; acknowledging twice counts once;
    // another partner cannot acknowledge them.
    let three: Vec<String> = ids(&first)[..3].to_vec();
    assert_eq!(ctx.ack("partner-a", three.clone()).await, 0);
    assert_eq!(ctx.ack("partner-b", three.clone()).await, 3);
    assert_eq!(ctx.ack("partner-b", three).await, 0);
    ctx.tv.restart().await?;
    let after = ctx.drain("partner-b").await;
    assert_eq!(ids(&after), ids(&first)[3..].to_vec());
    assert!(after.iter().all(|c| c.delivery_attempt == 3));
    assert_eq!(ctx.ack("partner-b", ids(&after)).await, 5);
    assert!(ctx.drain("partner-b").await.is_empty());
    // A consumer de-duplicating on command ids saw each command once.
    let distinct: HashSet<String> = ids(&first).into_iter().collect();
    assert_eq!(distinct.len(), 8);
    let audit = ctx.audit("ReceiveCommands").await;
    assert!(audit.iter().any(|(_, d)| d.starts_with("delivered=8 ")));
    assert!(audit.iter().any(|(_, d)| d.starts_with("acknowledged=3 ")));
    ctx.tv.stop().await
}

/// A following stream gets a command written after it opened.
pub async fn following_stream_gets_new_commands(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    ctx.forward_addresses(&p).await;
    let mut c = CommandServiceClient::new(ctx.tv.channel("partner-b").await?);
    let mut s = c
        .stream_commands(pb::StreamCommandsRequest { follow: true })
        .await?
        .into_inner();
    ctx.publish(
        "partner-a",
        &p.subject,
        "address.changed",
        "live-1",
        vec![field("address", "a")],
    )
    .await?;
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), s.message())
        .await
        .expect("a following stream delivers new commands")?
        .unwrap()
        .command
        .unwrap();
    assert_eq!(got.fields, vec![field("address", "a")]);
    // An open following stream does not hold up a graceful shutdown: it
    // ends cleanly and the server stops.
    tokio::time::timeout(std::time::Duration::from_secs(20), ctx.tv.stop())
        .await
        .expect("shutdown with a following stream open")?;
    let end = tokio::time::timeout(std::time::Duration::from_secs(20), s.message()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "the stream ended");
    Ok(())
}

/// Concurrent publishers about one person: commands are numbered in the
/// order their events committed and streamed in that order; a command
/// that cannot be opened is skipped (and audited) without blocking the
/// rest; unlinking the receiver withdraws what still waits for it; a rule
/// set of the documented maximum fits.
pub async fn concurrency_bad_rows_unlink_and_limits(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    let q = ctx.person("Alan").await;
    ctx.forward_addresses(&p).await;
    ctx.forward_addresses(&q).await;
    for r in ctx.publish_at_once(&p, "c", 8).await? {
        r?;
    }
    let got = ctx.drain("partner-b").await;
    assert_eq!(
        got.iter().map(|c| c.subject_seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<u64>>()
    );
    let distinct: HashSet<&str> = got.iter().map(|c| c.fields[0].value.as_str()).collect();
    assert_eq!(distinct.len(), 8);
    assert_eq!(ctx.ack("partner-b", ids(&got)).await, 8);
    // One tampered row: skipped and named in the audit, the next delivered.
    ctx.publish(
        "partner-a",
        &p.subject,
        "address.changed",
        "bad",
        vec![field("address", "x")],
    )
    .await?;
    ctx.publish(
        "partner-a",
        &q.subject,
        "address.changed",
        "good",
        vec![field("address", "y")],
    )
    .await?;
    sqlx::query("UPDATE command_outbox SET command = 'delete_account' WHERE subject_seq = 9")
        .execute(ctx.tv.db())
        .await?;
    let got = ctx.drain("partner-b").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].fields, vec![field("address", "y")]);
    let audit = ctx.audit("ReceiveCommands").await;
    assert!(
        audit.iter().any(|(_, d)| d.contains(" unreadable=cmd_")),
        "{audit:?}"
    );
    assert_eq!(ctx.ack("partner-b", ids(&got)).await, 1);
    // A row whose columns no longer decode (a position out of range) is
    // skipped the same way, not the end of every stream at it.
    ctx.publish(
        "partner-a",
        &q.subject,
        "address.changed",
        "odd",
        vec![field("address", "v")],
    )
    .await?;
    sqlx::query("UPDATE command_outbox SET subject_seq = -1 WHERE subject_seq = 9")
        .execute(ctx.tv.db())
        .await?;
    let got = ctx.drain("partner-b").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].fields, vec![field("address", "v")]);
    assert_eq!(ctx.ack("partner-b", ids(&got)).await, 1);
    sqlx::query("DELETE FROM command_outbox WHERE subject_seq = -1")
        .execute(ctx.tv.db())
        .await?;
    // Unlinking partner-b withdraws the person's commands waiting for it.
    ctx.publish(
        "partner-a",
        &q.subject,
        "address.changed",
        "w",
        vec![field("address", "z")],
    )
    .await?;
    let req = ctx.signed(
        &q,
        Action::UnlinkEntity(pb::UnlinkEntity { entity: B.into() }),
    );
    let u = ctx.wallet.unlink_entity(req).await?.into_inner();
    assert!(u.unlinked && u.rules_removed == 1);
    let left: Vec<String> = ctx
        .drain("partner-b")
        .await
        .iter()
        .flat_map(|c| c.fields.iter().map(|f| f.value.clone()))
        .collect();
    assert!(!left.iter().any(|v| v == "y" || v == "z"), "{left:?}");
    // 64 rules of 32 fields each fit in one signed request.
    let many: Vec<pb::Rule> = (0..64)
        .map(|i| {
            let fields: Vec<String> = (0..32).map(|f| format!("field_{f:02}")).collect();
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            rule(A, &format!("event.{i:02}"), B, "cmd", &fields)
        })
        .collect();
    assert_eq!(ctx.set_rules(&p, many).await?.len(), 64);
    let too_many: Vec<pb::Rule> = (0..65)
        .map(|i| rule(A, &format!("e{i}"), B, "cmd", &[]))
        .collect();
    let r = ctx.set_rules(&p, too_many).await.unwrap_err();
    assert_eq!(reason(&r), "malformed");
    ctx.tv.stop().await
}

/// Rules may name only linked, registered entities, and target only
/// partners that may receive commands; every rule call is
/// device-signed and refused otherwise; suggestions come only from enough
/// similar people and are applied only by a signed SetRules.
pub async fn rules_are_signed_linked_and_suggested(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let me = ctx.person("Ada").await;
    let r = ctx
        .set_rules(
            &me,
            vec![rule(A, "address.changed", B, "update_address", &[])],
        )
        .await
        .unwrap_err();
    assert_eq!(
        (r.code(), reason(&r)),
        (Code::FailedPrecondition, "entity_not_linked")
    );
    let r = ctx
        .link(&me, "spiffe://idvault.dev/partner/nobody")
        .await
        .unwrap_err();
    assert_eq!((r.code(), reason(&r)), (Code::NotFound, "entity_unknown"));
    let r = ctx.link(&me, "partner-a").await.unwrap_err();
    assert_eq!((r.code(), reason(&r)), (Code::InvalidArgument, "malformed"));
    assert!(ctx.link(&me, A).await?);
    assert!(!ctx.link(&me, A).await?, "linking twice changes nothing");
    assert!(ctx.link(&me, B).await?);
    // A bad signature, a replayed request, and a signed action sent to
    // the wrong call are refused.
    let mut req = ctx.signed(&me, Action::ListRules(pb::ListRules {}));
    req.signature[5] ^= 1;
    let r = ctx.wallet.list_rules(req).await.unwrap_err();
    assert_eq!(reason(&r), "bad_signature");
    let req = ctx.signed(&me, Action::ListRules(pb::ListRules {}));
    ctx.wallet.list_rules(req.clone()).await?;
    let r = ctx.wallet.list_rules(req).await.unwrap_err();
    assert_eq!(reason(&r), "request_replayed");
    let req = ctx.signed(&me, Action::ListRules(pb::ListRules {}));
    let r = ctx.wallet.set_rules(req).await.unwrap_err();
    assert_eq!(reason(&r), "wrong_action");
    // Three similar people adopted the address rule; two of them also the
    // card rule; one a rule naming an entity I have not linked.
    let fwd = rule(A, "address.changed", B, "update_address", &["address"]);
    let block = rule(A, "card.lost", B, "block_card", &[]);
    let from_wallet = rule(WALLET, "address.changed", B, "notify", &[]);
    let mut peers = Vec::new();
    for (i, rules) in [
        vec![fwd.clone(), block.clone()],
        vec![fwd.clone(), block.clone()],
        vec![fwd.clone()],
    ]
    .into_iter()
    .enumerate()
    {
        let p = ctx.person(&format!("Peer{i}")).await;
        ctx.link(&p, A).await?;
        ctx.link(&p, B).await?;
        let mut rules = rules;
        if i == 2 {
            ctx.link(&p, WALLET).await?;
            // The wallet may not receive commands: no rule may target it,
            // and the refused set changes nothing.
            let to_wallet = rule(A, "address.changed", WALLET, "notify", &[]);
            let r = ctx
                .set_rules(&p, vec![fwd.clone(), to_wallet])
                .await
                .unwrap_err();
            assert_eq!(
                (r.code(), reason(&r)),
                (Code::FailedPrecondition, "target_cannot_receive")
            );
            assert!(ctx.list_rules(&p).await.rules.is_empty());
            rules.push(from_wallet.clone());
        }
        ctx.set_rules(&p, rules).await?;
        peers.push(p);
    }
    let req = ctx.signed(&me, Action::SuggestRules(pb::SuggestRules {}));
    let s = ctx
        .wallet
        .suggest_rules(req)
        .await?
        .into_inner()
        .suggestions;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].support, 3);
    assert_eq!(s[0].rules.len(), 1);
    assert_eq!(s[0].rules[0].command, "update_address");
    assert!(s[0].confidence > 0.99);
    assert!(!s.iter().flat_map(|x| &x.rules).any(|r| r.source == WALLET));
    // Nothing was applied.
    assert!(ctx.list_rules(&me).await.rules.is_empty());
    // The person adopts it by signing it.
    let stored = ctx.set_rules(&me, s[0].rules.clone()).await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].rule_id, s[0].rules[0].rule_id);
    let listed = ctx.list_rules(&me).await;
    assert_eq!(listed.rules, stored);
    assert_eq!(
        listed
            .entities
            .iter()
            .map(|e| e.entity.as_str())
            .collect::<Vec<_>>(),
        [A, B]
    );
    // The card rule has two adopters only: below the minimum support.
    let req = ctx.signed(&me, Action::SuggestRules(pb::SuggestRules {}));
    let s = ctx
        .wallet
        .suggest_rules(req)
        .await?
        .into_inner()
        .suggestions;
    assert!(s.is_empty(), "{s:?}");
    let audit = ctx.audit("DeviceCall").await;
    assert!(
        audit.iter().any(|(o, d)| o == "ok"
            && d.contains("op=suggest_rules")
            && d.contains("suggestions=1"))
    );
    assert!(
        audit
            .iter()
            .any(|(o, d)| o == "refused" && d.starts_with("entity_not_linked"))
    );
    ctx.tv.stop().await
}

/// Publishing and receiving are policy-gated (default deny, audited with
/// the deciding policy), bad events are refused and change nothing, and a
/// publisher cannot name a subject it does not know.
pub async fn publish_and_receive_are_policy_gated(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    ctx.forward_addresses(&p).await;
    let r = ctx
        .publish("wallet", &p.subject, "address.changed", "w1", vec![])
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::PermissionDenied);
    let r = CommandServiceClient::new(ctx.tv.channel("wallet").await?)
        .stream_commands(pb::StreamCommandsRequest { follow: false })
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::PermissionDenied);
    let r = CommandServiceClient::new(ctx.tv.channel("wallet").await?)
        .ack_commands(pb::AckCommandsRequest {
            command_ids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::PermissionDenied);
    let denied = ctx.audit("PublishEvent").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].0, "denied");
    assert!(
        denied[0].1.ends_with("policy=default-deny"),
        "{}",
        denied[0].1
    );
    assert!(
        ctx.audit("ReceiveCommands")
            .await
            .iter()
            .all(|(o, d)| o == "denied" && d.ends_with("policy=default-deny"))
    );
    // Bad events: refused, audited, nothing written.
    for (t, id, f) in [
        ("Address Changed", "x1", vec![]),
        ("address.changed", "", vec![]),
        (
            "address.changed",
            "x2",
            vec![field("a", "1"), field("a", "2")],
        ),
        ("address.changed", "x3", vec![field("a", &"v".repeat(1025))]),
    ] {
        let r = ctx
            .publish("partner-a", &p.subject, t, id, f)
            .await
            .unwrap_err();
        assert_eq!(r.code(), Code::InvalidArgument, "{}", r.message());
    }
    // An unknown subject, or one this publisher never met, reads as absent.
    let r = ctx
        .publish(
            "partner-a",
            "6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f",
            "address.changed",
            "x4",
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::NotFound);
    let r = ctx
        .publish("partner-b", &p.subject, "address.changed", "x5", vec![])
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::NotFound);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(ctx.tv.db())
        .await?;
    assert_eq!(n, 0);
    // With the role, an operator's forbid still wins and is named.
    std::fs::write(
        ctx.tv.dir.path().join("policies/freeze.cedar"),
        "@id(\"freeze-events-a\")\nforbid (principal == IdVault::Partner::\"partner-a\", action == IdVault::Action::\"PublishEvent\", resource);\n",
    )?;
    ctx.tv
        .vault
        .reload_policies()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let r = ctx
        .publish("partner-a", &p.subject, "address.changed", "x6", vec![])
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::PermissionDenied);
    let last = ctx.audit("PublishEvent").await.pop().unwrap();
    assert!(last.1.ends_with("policy=freeze-events-a"), "{}", last.1);
    ctx.tv.stop().await
}

/// A database writer without the root key (SECURITY.md) cannot route a
/// person's data by planting links or rules: a rule or link row without
/// the vault's MAC (or with another row's) stops the event with DATA_LOSS,
/// audited as an integrity failure, and no command is written.
pub async fn forged_links_and_rules_route_nothing(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Mallory's target").await;
    assert!(ctx.link(&p, A).await?);
    let subject = uuid::Uuid::parse_str(&p.subject)?.as_bytes().to_vec();
    let plant_rule = async |ctx: &Ctx, mac: Option<Vec<u8>>| {
        sqlx::query(
            "INSERT INTO subject_rules (subject_id, rule_id, source, event_type, target, command, fields, \
             mac_version, mac) VALUES ($1, 'r_planted', $2, 'address.changed', $3, 'update_address', \
             'address', 1, $4)",
        )
        .bind(subject.clone())
        .bind(A)
        .bind(B)
        .bind(mac)
        .execute(ctx.tv.db())
        .await
        .unwrap();
    };
    let refused_as = async |ctx: &Ctx, id: &str, what: &str| {
        let s = ctx
            .publish(
                "partner-a",
                &p.subject,
                "address.changed",
                id,
                vec![field("address", "1 Main St")],
            )
            .await
            .expect_err(what);
        assert_eq!(s.code(), Code::DataLoss, "{what}: {}", s.message());
        let (_, outcome, detail) = ctx.tv.last_audit().await;
        assert_eq!(outcome, "error");
        assert!(detail.contains(&format!("integrity: {what}")), "{detail}");
    };

    // A rule A → B with no MAC, then with the MAC of the person's real link.
    plant_rule(&ctx, None).await;
    refused_as(&ctx, "e1", "rule row MAC").await;
    let link_mac: Vec<u8> =
        sqlx::query_scalar("SELECT mac FROM entity_links WHERE subject_id = $1 AND entity = $2")
            .bind(subject.clone())
            .bind(A)
            .fetch_one(ctx.tv.db())
            .await?;
    sqlx::query("DELETE FROM subject_rules WHERE subject_id = $1")
        .bind(subject.clone())
        .execute(ctx.tv.db())
        .await?;
    plant_rule(&ctx, Some(link_mac)).await;
    refused_as(&ctx, "e2", "rule row MAC").await;

    // A real rule's target edited to another partner.
    sqlx::query("DELETE FROM subject_rules WHERE subject_id = $1")
        .bind(subject.clone())
        .execute(ctx.tv.db())
        .await?;
    assert!(ctx.link(&p, B).await?);
    ctx.set_rules(
        &p,
        vec![rule(
            A,
            "address.changed",
            A,
            "update_address",
            &["address"],
        )],
    )
    .await?;
    sqlx::query("UPDATE subject_rules SET target = $1 WHERE subject_id = $2")
        .bind(B)
        .bind(subject.clone())
        .execute(ctx.tv.db())
        .await?;
    refused_as(&ctx, "e3", "rule row MAC").await;

    // A real rule copied, MAC and all, under a second id (it would fire
    // twice).
    sqlx::query("UPDATE subject_rules SET target = $1 WHERE subject_id = $2")
        .bind(A)
        .bind(subject.clone())
        .execute(ctx.tv.db())
        .await?;
    sqlx::query(
        "INSERT INTO subject_rules (subject_id, rule_id, source, event_type, target, command, \
         fields, mac_version, mac) SELECT subject_id, 'r_copy', source, event_type, target, \
         command, fields, mac_version, mac FROM subject_rules WHERE subject_id = $1",
    )
    .bind(subject.clone())
    .execute(ctx.tv.db())
    .await?;
    refused_as(&ctx, "e4", "rule row MAC").await;
    sqlx::query("DELETE FROM subject_rules WHERE subject_id = $1 AND rule_id = 'r_copy'")
        .bind(subject.clone())
        .execute(ctx.tv.db())
        .await?;
    ctx.publish(
        "partner-a",
        &p.subject,
        "address.changed",
        "e5",
        vec![field("address", "1 Main St")],
    )
    .await
    .expect("the genuine rule alone");
    let sent = ctx.drain("partner-a").await;
    assert_eq!(sent.len(), 1);
    let ids = sent.into_iter().map(|c| c.command_id).collect();
    assert_eq!(ctx.ack("partner-a", ids).await, 1);

    // A link planted for a person who never linked the publisher.
    let q = ctx.person("Quiet").await;
    let q_subject = uuid::Uuid::parse_str(&q.subject)?.as_bytes().to_vec();
    sqlx::query("INSERT INTO entity_links (subject_id, entity, linked_at_ms) VALUES ($1, $2, 1)")
        .bind(q_subject)
        .bind(A)
        .execute(ctx.tv.db())
        .await?;
    let s = ctx
        .publish("partner-a", &q.subject, "address.changed", "q1", vec![])
        .await
        .expect_err("planted link");
    assert_eq!(s.code(), Code::DataLoss);
    assert!(
        ctx.tv
            .last_audit()
            .await
            .2
            .contains("integrity: entity link row MAC")
    );
    // The person's own listing says so too, rather than show the link.
    let req = ctx.signed(&q, Action::ListRules(pb::ListRules {}));
    assert_eq!(
        ctx.wallet.list_rules(req).await.unwrap_err().code(),
        Code::DataLoss
    );

    // Nothing reached anyone.
    assert!(ctx.drain("partner-b").await.is_empty());
    assert!(ctx.drain("partner-a").await.is_empty());
    ctx.tv.stop().await
}

/// Eight retries of one event sent at once (a publisher whose first call
/// timed out): every call succeeds, exactly one delivers, the others are
/// answered as duplicates, and the recipient gets one command. On
/// PostgreSQL the retries run side by side until the event's own row
/// orders them; the ones that find it taken roll their commands back.
pub async fn concurrent_retries_of_one_event_deliver_once(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    ctx.forward_addresses(&p).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ch = ctx.tv.channel("partner-a").await?;
        let subject = p.subject.clone();
        tasks.push(tokio::spawn(async move {
            EventServiceClient::new(ch)
                .publish_event(pb::PublishEventRequest {
                    subject: Some(pb::publish_event_request::Subject::SubjectId(subject)),
                    event_type: "address.changed".into(),
                    event_id: "once".into(),
                    fields: vec![field("address", "1 New Street")],
                })
                .await
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        let r = t.await?;
        assert!(r.is_ok(), "{r:?}");
        if !r?.into_inner().duplicate {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 1);
    assert_eq!(ctx.drain("partner-b").await.len(), 1);
    let outcomes: Vec<String> = ctx
        .audit("PublishEvent")
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(outcomes.len(), 8);
    assert!(outcomes.iter().all(|o| o == "ok"), "{outcomes:?}");
    ctx.tv.stop().await
}

/// Each publisher has its own share of a recipient's outbox (the
/// recipient's `outbox_per_source`). An event that would pass it is
/// refused whole (RESOURCE_EXHAUSTED, nothing written, so it can be sent
/// again), concurrent events never take more than the share, another
/// publisher's events to the same recipient go through, and acknowledging
/// makes room again.
pub async fn outbox_share_is_per_publisher(backend: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start_config(backend, |text| {
        let anchor = "name = \"partner-b\"\n";
        assert!(
            text.contains(anchor),
            "no partner-b entry in the dev config"
        );
        text.replacen(anchor, &format!("{anchor}outbox_per_source = 3\n"), 1)
    })
    .await?;
    let mut ctx = Ctx::on(tv).await;
    let p = ctx.person("Ada").await;
    assert!(ctx.link(&p, A).await?);
    assert!(ctx.link(&p, B).await?);
    // One address event makes one command for partner-b; a move makes two
    // for partner-b and one for partner-a.
    ctx.set_rules(
        &p,
        vec![
            rule(A, "address.changed", B, "update_address", &["address"]),
            rule(A, "person.moved", B, "update_address", &["address"]),
            rule(A, "person.moved", B, "send_welcome", &[]),
            rule(A, "person.moved", A, "note_move", &[]),
            rule(B, "note.added", B, "file_note", &["note"]),
        ],
    )
    .await?;
    let address = |v: &str| vec![field("address", v)];
    // Eight concurrent events for a share of three: exactly three written.
    let mut refused = Vec::new();
    for (i, r) in ctx
        .publish_at_once(&p, "a", 8)
        .await?
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(r) => assert!(!r.duplicate),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("outbox_per_source"), "{e:?}");
                refused.push(format!("a-{i}"));
            }
        }
    }
    assert_eq!(refused.len(), 5, "{refused:?}");
    let db = ctx.tv.db().clone();
    let waiting_from = async |source: &str| -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM command_outbox WHERE recipient = 'partner-b' AND source = $1",
        )
        .bind(source.to_owned())
        .fetch_one(&db)
        .await?)
    };
    assert_eq!(waiting_from(A).await?, 3);
    // A refused event wrote nothing, not even its event record.
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE source = $1")
        .bind(A)
        .fetch_one(&db)
        .await?;
    assert_eq!(events, 3);
    // Another publisher's events to the same recipient go through
    // (partner-b knows the person by the token its commands carry).
    let b_token: String =
        sqlx::query_scalar("SELECT token FROM pairwise_tokens WHERE partner = 'partner-b'")
            .fetch_one(&db)
            .await?;
    ctx.publish_as(
        "partner-b",
        pb::publish_event_request::Subject::PairwiseToken(b_token),
        "note.added",
        "b-0",
        vec![field("note", "n")],
    )
    .await?;
    let got = ctx.drain("partner-b").await;
    let commands: Vec<&str> = got.iter().map(|c| c.command.as_str()).collect();
    assert_eq!(
        commands,
        [
            "update_address",
            "update_address",
            "update_address",
            "file_note"
        ]
    );
    assert_eq!(
        got.iter().map(|c| c.subject_seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Room for one after one acknowledgement: a refused event sent again
    // goes through, and a move (two commands to partner-b) is refused
    // whole rather than half delivered.
    assert_eq!(
        ctx.ack("partner-b", vec![got[0].command_id.clone()]).await,
        1
    );
    let again = &refused[0];
    assert!(
        !ctx.publish(
            "partner-a",
            &p.subject,
            "address.changed",
            again,
            address(again)
        )
        .await?
        .duplicate
    );
    assert_eq!(waiting_from(A).await?, 3);
    let ack_one = got[1].command_id.clone();
    assert_eq!(ctx.ack("partner-b", vec![ack_one]).await, 1);
    let moved = ctx
        .publish("partner-a", &p.subject, "person.moved", "m-0", address("m"))
        .await
        .unwrap_err();
    assert_eq!(moved.code(), Code::ResourceExhausted, "{moved:?}");
    assert_eq!(waiting_from(A).await?, 2);
    // Its command to partner-a, which had room, was not written either.
    assert!(ctx.drain("partner-a").await.is_empty());
    let audit = ctx.audit("PublishEvent").await;
    let outcomes: Vec<&str> = audit.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "rate_limited").count(),
        6,
        "{audit:?}"
    );
    ctx.tv.stop().await
}

/// The publisher's own audit record, which `GetInclusionProof` hands back
/// to it, reads the same whether its event was delivered or ignored: what
/// the event did is in the vault's record, which the publisher cannot
/// fetch by index or by request id.
pub async fn publisher_leaf_does_not_tell_the_outcome(backend: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::tlog::leaf::AuditLeaf;
    use idvault_tests::idvault_proto::v1::audit_service_client::AuditServiceClient;
    use pb::get_inclusion_proof_request::Leaf;

    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    ctx.forward_addresses(&p).await;
    use pb::publish_event_request::Subject;
    let mut requests = Vec::new();
    // Delivered (a rule names it), then ignored (no rule for the type),
    // then ignored again, the person named by the publisher's token.
    for (event_type, event_id, subject) in [
        (
            "address.changed",
            "d-1",
            Subject::SubjectId(p.subject.clone()),
        ),
        ("card.lost", "i-1", Subject::SubjectId(p.subject.clone())),
        ("card.lost", "i-2", Subject::PairwiseToken(p.token.clone())),
    ] {
        let resp = ctx
            .publish_as(
                "partner-a",
                subject,
                event_type,
                event_id,
                vec![field("address", "1 High St")],
            )
            .await?;
        let id = resp
            .metadata()
            .get("idvault-request-id")
            .expect("request id header")
            .to_str()?
            .to_owned();
        requests.push(id);
    }
    assert_eq!(ctx.drain("partner-b").await.len(), 1);
    ctx.tv.checkpointed().await?;
    let mut audit = AuditServiceClient::new(ctx.tv.channel("partner-a").await?);
    let mut own = Vec::new();
    for id in &requests {
        let proof = audit
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                leaf: Some(Leaf::RequestId(id.clone())),
                tree_size: 0,
            })
            .await?
            .into_inner();
        let leaf = AuditLeaf::decode(&proof.leaf)?;
        assert_eq!(
            (leaf.action.as_str(), leaf.outcome.as_str()),
            ("PublishEvent", "ok")
        );
        own.push((leaf.detail, leaf.subject));
    }
    assert_eq!(own[0], own[1], "the publisher's records differ: {own:?}");
    assert_eq!(own[0].1.as_deref(), Some(p.subject.as_str()));
    // Named by its token, neither the person's vault id nor a policy
    // decided on that person is in the record.
    assert_eq!(
        (own[2].0.as_str(), &own[2].1),
        ("accepted", &None),
        "{own:?}"
    );
    let own: Vec<String> = own.into_iter().map(|(d, _)| d).collect();
    assert!(!own[0].contains("outcome"), "{own:?}");
    // The vault's records say what happened, each naming its request.
    let vault: Vec<(Option<i64>, String)> = sqlx::query_as(
        "SELECT idx, detail FROM audit_log WHERE action = 'EventOutcome' ORDER BY id",
    )
    .fetch_all(ctx.tv.db())
    .await?;
    assert_eq!(vault.len(), 3);
    assert!(vault[0].1.starts_with(&format!(
        "request={} outcome=delivered commands=1",
        requests[0]
    )));
    assert!(
        vault[1]
            .1
            .starts_with(&format!("request={} outcome=ignored_no_rule", requests[1]))
    );
    assert!(
        vault[2]
            .1
            .starts_with(&format!("request={} outcome=ignored_no_rule", requests[2]))
    );
    // … and are not the publisher's to read.
    for (idx, _) in &vault {
        let idx = u64::try_from(idx.expect("sequenced"))?;
        let err = audit
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                leaf: Some(Leaf::LeafIndex(idx)),
                tree_size: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    // The log still verifies with the public key alone.
    let v = ctx.tv.verify_audit().await?;
    assert!(
        matches!(
            v,
            idvault_tests::idvault_server::service::AuditVerdict::Intact { pending: 0, .. }
        ),
        "{v:?}"
    );
    ctx.tv.stop().await
}

/// Once the policies stop a partner from receiving commands, rules may
/// no longer target it and rules to it that people set before are not
/// suggested; rules from it (it may still publish) are unaffected.
pub async fn rules_target_only_receivers(backend: Backend) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let fwd = rule(A, "address.changed", B, "update_address", &["address"]);
    for i in 0..3 {
        let p = ctx.person(&format!("Peer{i}")).await;
        ctx.forward_addresses(&p).await;
    }
    let me = ctx.person("Ada").await;
    assert!(ctx.link(&me, A).await?);
    assert!(ctx.link(&me, B).await?);
    let req = ctx.signed(&me, Action::SuggestRules(pb::SuggestRules {}));
    let s = ctx
        .wallet
        .suggest_rules(req)
        .await?
        .into_inner()
        .suggestions;
    assert_eq!(s.len(), 1, "{s:?}");
    std::fs::write(
        ctx.tv.dir.path().join("policies").join("review.cedar"),
        r#"@id("partner-b-receives-nothing")
forbid (
  principal == IdVault::Partner::"partner-b",
  action == IdVault::Action::"ReceiveCommands",
  resource
);
"#,
    )?;
    ctx.tv.restart().await?;
    let mut ctx = Ctx::on(ctx.tv).await;
    let req = ctx.signed(&me, Action::SuggestRules(pb::SuggestRules {}));
    let s = ctx
        .wallet
        .suggest_rules(req)
        .await?
        .into_inner()
        .suggestions;
    assert!(s.is_empty(), "{s:?}");
    let r = ctx.set_rules(&me, vec![fwd]).await.unwrap_err();
    assert_eq!(
        (r.code(), reason(&r)),
        (Code::FailedPrecondition, "target_cannot_receive")
    );
    assert!(ctx.list_rules(&me).await.rules.is_empty());
    let back = rule(B, "address.changed", A, "update_address", &["address"]);
    assert_eq!(ctx.set_rules(&me, vec![back]).await?.len(), 1);
    ctx.tv.stop().await
}

/// An event that is only ignored never waits for the person's row, where
/// the person's own calls queue: a partner that knows the person cannot
/// stall them by publishing about them, linked or not (SECURITY.md,
/// hostile partner). An event with a rule to fire still waits for the
/// person's calls. A deletion waits for the ignored events under way and
/// removes their rows; one that comes while it waits finds nobody, so
/// events cannot hold a deletion off.
pub async fn ignored_events_hold_no_ones_row(backend: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::subject::SubjectId;
    use idvault_tests::idvault_proto::v1::subject_service_client::SubjectServiceClient;

    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    let pg = backend == Backend::Postgres;
    let id = SubjectId::parse(&p.subject)?;
    // What a call of the person's holds until rolled back: their row, as
    // the per-subject guard takes it. On SQLite the one writer orders
    // everything, and a held write would stop it: there the test checks
    // the outcomes only.
    let db = ctx.tv.db().clone();
    let hold_row = async || {
        let mut held = db.begin().await?;
        if pg {
            sqlx::query("SELECT subject_id FROM subjects WHERE subject_id = $1 FOR NO KEY UPDATE")
                .bind(id.as_bytes().to_vec())
                .fetch_one(&mut *held)
                .await?;
        }
        anyhow::Ok(held)
    };
    // Until some call in this database waits for a row's lock
    // (`transactionid`, `tuple`), or else for an advisory lock.
    let someone_waits = async |for_row: bool| {
        let sql = if for_row {
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND wait_event IN ('transactionid', 'tuple') AND datname = current_database()"
        } else {
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND wait_event = 'advisory' AND datname = current_database()"
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let waiting: i64 = sqlx::query_scalar(sql).fetch_one(&db).await?;
                if waiting > 0 {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("nothing waited for the held lock"))?
    };
    async fn publish(
        ctx: &Ctx,
        p: &Person,
        event_type: &str,
        event_id: &str,
    ) -> Result<Result<pb::PublishEventResponse, tonic::Status>, tokio::time::error::Elapsed> {
        let fields = vec![field("address", "x")];
        let call = ctx.publish("partner-a", &p.subject, event_type, event_id, fields);
        tokio::time::timeout(std::time::Duration::from_secs(10), call).await
    }

    let held = hold_row().await?;
    let r = publish(&ctx, &p, "address.changed", "e1")
        .await
        .map_err(|_| anyhow::anyhow!("an unlinked publisher waited for the person's row"))??;
    assert!(!r.duplicate);
    held.rollback().await?;
    ctx.forward_addresses(&p).await;
    let held = hold_row().await?;
    publish(&ctx, &p, "card.lost", "e2")
        .await
        .map_err(|_| anyhow::anyhow!("an event without a rule waited for the person's row"))??;
    // With a rule to fire, the event waits for the row, then delivers.
    let firing = {
        let ch = ctx.tv.channel("partner-a").await?;
        let subject = p.subject.clone();
        tokio::spawn(async move {
            EventServiceClient::new(ch)
                .publish_event(pb::PublishEventRequest {
                    subject: Some(pb::publish_event_request::Subject::SubjectId(subject)),
                    event_type: "address.changed".into(),
                    event_id: "e3".into(),
                    fields: vec![field("address", "y")],
                })
                .await
        })
    };
    if pg {
        someone_waits(true).await?;
    }
    held.rollback().await?;
    firing.await??;
    assert_eq!(ctx.drain("partner-b").await.len(), 1);

    // A deletion while an ignored event is under way (on PostgreSQL: the
    // shared hold it takes on the person's deletion lock, here held by
    // the test) waits for it; an event that comes meanwhile reads the
    // person as absent and writes nothing.
    let mut event = db.begin().await?;
    if pg {
        let (class, key) = idvault_tests::idvault_server::store::subject_lock(&id);
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
            .bind(class)
            .bind(key)
            .execute(&mut *event)
            .await?;
    }
    let deleting = {
        let mut subjects: SubjectServiceClient<Channel> = ctx.tv.subjects("partner-a").await?;
        let subject = p.subject.clone();
        tokio::spawn(async move {
            subjects
                .delete_subject(pb::DeleteSubjectRequest {
                    subject_id: subject,
                })
                .await
        })
    };
    if pg {
        someone_waits(false).await?;
        let refused = publish(&ctx, &p, "card.lost", "e4")
            .await
            .map_err(|_| anyhow::anyhow!("an event waited for a deletion"))?
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        // The event under way writes its row (as an ignored event would)
        // and commits; the deletion then removes it.
        sqlx::query(
            "INSERT INTO events (source, event_id, subject_id, event_type, outcome, commands, \
             accepted_at_ms) VALUES ($1, 'e5', $2, 'card.lost', 'ignored_no_rule', 0, 0)",
        )
        .bind(A)
        .bind(id.as_bytes().to_vec())
        .execute(&mut *event)
        .await?;
    }
    event.commit().await?;
    deleting.await??;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE subject_id = $1")
        .bind(id.as_bytes().to_vec())
        .fetch_one(&db)
        .await?;
    assert_eq!(left, 0, "no event row outlives the person");
    let outcomes: Vec<String> = ctx
        .audit("EventOutcome")
        .await
        .into_iter()
        .map(|(_, d)| d.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(
        outcomes,
        [
            "outcome=ignored_unlinked",
            "outcome=ignored_no_rule",
            "outcome=delivered"
        ]
    );
    ctx.tv.stop().await
}

/// An unlink withdraws the person's waiting commands in id order, the
/// order an acknowledgement takes them in: the recipient acknowledging
/// some of them at that moment waits for the unlink or the unlink for it,
/// never each for a row the other holds (on PostgreSQL that was a
/// deadlock, and one of the two calls failed).
pub async fn unlink_and_acknowledgement_take_commands_in_one_order(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut ctx = Ctx::start(backend).await;
    let p = ctx.person("Ada").await;
    ctx.forward_addresses(&p).await;
    for i in 0..8 {
        let r = ctx
            .publish(
                "partner-a",
                &p.subject,
                "address.changed",
                &format!("o{i}"),
                vec![field("address", &format!("a{i}"))],
            )
            .await?;
        assert!(!r.duplicate);
    }
    // In id order, with their positions: two commands whose positions
    // run the other way (with 8 random ids, all but certain to exist).
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT command_id, seq FROM command_outbox WHERE recipient = 'partner-b' ORDER BY command_id",
    )
    .fetch_all(ctx.tv.db())
    .await?;
    assert_eq!(rows.len(), 8);
    let pair = (0..rows.len())
        .flat_map(|i| (i + 1..rows.len()).map(move |j| (i, j)))
        .find(|&(i, j)| rows[i].1 > rows[j].1);
    let unlink = ctx.signed(
        &p,
        Action::UnlinkEntity(pb::UnlinkEntity { entity: B.into() }),
    );
    let mut wallet = DeviceServiceClient::new(ctx.tv.channel("wallet").await?);
    let pg = backend == Backend::Postgres;
    let (Some((i, j)), true) = (pair, pg) else {
        // SQLite's one writer orders everything: the unlink alone.
        let u = wallet.unlink_entity(unlink).await?.into_inner();
        assert!(u.unlinked);
        assert!(ctx.drain("partner-b").await.is_empty());
        return ctx.tv.stop().await;
    };
    let (first, second) = (rows[i].0.clone(), rows[j].0.clone());
    // An acknowledgement in progress: it took the lower id and is about
    // to take the higher one.
    let lock = "SELECT command_id FROM command_outbox WHERE command_id = $1 FOR UPDATE";
    let mut ack = ctx.tv.db().begin().await?;
    sqlx::query(lock)
        .bind(first.clone())
        .fetch_one(&mut *ack)
        .await?;
    let unlinking = tokio::spawn(async move { wallet.unlink_entity(unlink).await });
    // Once the unlink waits for a row (in this database):
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND wait_event IN ('transactionid', 'tuple') AND datname = current_database()",
            )
            .fetch_one(ctx.tv.db())
            .await?;
            if waiting > 0 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the unlink never waited for the held command"))??;
    let took = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sqlx::query(lock).bind(second).fetch_one(&mut *ack),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the unlink holds a command the acknowledgement needs"))?;
    took?;
    ack.rollback().await?;
    let u = unlinking.await??.into_inner();
    assert!(u.unlinked);
    assert!(ctx.drain("partner-b").await.is_empty());
    ctx.tv.stop().await
}
