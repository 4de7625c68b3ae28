//! `idvault.v1.EventService` (publishers) and `idvault.v1.CommandService`
//! (receivers draining the outbox).

use std::sync::Arc;
use std::time::Duration;

use idvault_policies::Action;
use idvault_proto::v1 as pb;
use idvault_proto::v1::command_service_server::CommandService;
use idvault_proto::v1::event_service_server::EventService;
use tonic::{Request, Response, Status};

use super::{caller, status, within};
use crate::service::events::{EventOutcome, SubjectRef};

/// How often an idle following stream looks for commands written by
/// other replicas (this process's writes wake it at once).
const POLL: Duration = Duration::from_millis(500);

adapter!(
    /// The publisher-facing event service.
    EventApi
);

#[tonic::async_trait]
impl EventService for EventApi {
    async fn publish_event(
        &self,
        req: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        use pb::publish_event_request::Subject;
        let who = caller(&req)?;
        let m = req.into_inner();
        let subject = match m.subject {
            Some(Subject::SubjectId(s)) => SubjectRef::Id(s),
            Some(Subject::PairwiseToken(t)) => SubjectRef::Pairwise(t),
            None => {
                return Err(self
                    .malformed(
                        &who,
                        (Action::PublishEvent, Action::PublishEvent),
                        "a subject_id or a pairwise_token is required",
                    )
                    .await);
            }
        };
        let event_id = m.event_id.clone();
        let vault = Arc::clone(&self.vault);
        // On its own task: a cancelled call still ends with its event, its
        // commands and its audit record all written, or none of them.
        let fields = m.fields.into_iter().map(|f| (f.name, f.value)).collect();
        let outcome = super::consent::detached(self.deadline, async move {
            vault
                .publish_event(&who, subject, m.event_type, m.event_id, fields)
                .await
        })
        .await?;
        Ok(Response::new(pb::PublishEventResponse {
            event_id,
            duplicate: outcome == EventOutcome::Duplicate,
        }))
    }
}

adapter!(
    /// The receiver-facing command service.
    CommandApi, streams
);

#[tonic::async_trait]
impl CommandService for CommandApi {
    type StreamCommandsStream = super::Replies<pb::StreamCommandsResponse>;

    async fn stream_commands(
        &self,
        req: Request<pb::StreamCommandsRequest>,
    ) -> Result<Response<Self::StreamCommandsStream>, Status> {
        let who = caller(&req)?;
        let follow = req.into_inner().follow;
        // A refused receiver gets a status, not an empty stream.
        let vault = Arc::clone(&self.vault);
        let slot = within(self.deadline, async {
            vault.open_command_stream(&who).await.map_err(status)
        })
        .await?;
        let (tx, rx) = super::replies(crate::service::events::DELIVERY_BATCH as usize);
        let deadline = super::stream_deadline(&who, self.stream_deadline);
        let mut stop = vault.streams_stop_signal();
        tokio::spawn(async move {
            let _slot = slot;
            // Every stream starts from the oldest unacknowledged command.
            let mut cursor = 0u64;
            loop {
                let stopping = *stop.borrow_and_update();
                if stopping || tokio::time::Instant::now() >= deadline {
                    // A drain (`follow` off) cut before it found nothing
                    // left must not end OK: its client would take the
                    // outbox for empty. (A following stream just ends.)
                    if !follow {
                        let cut = if stopping {
                            Status::unavailable(
                                "the vault is stopping; commands may still be waiting",
                            )
                        } else {
                            Status::deadline_exceeded(
                                "the stream's time ran out; commands may still be waiting",
                            )
                        };
                        super::send_final(&tx, cut).await;
                    }
                    return;
                }
                // Registered before the read, so a write that lands
                // between the read and the wait still wakes it.
                let ready = vault.commands_ready().notified();
                tokio::pin!(ready);
                ready.as_mut().enable();
                // Not cut off by the deadline: a batch is bounded, and its
                // audit record must not be lost halfway.
                let batch = match vault.next_commands(&who, cursor).await {
                    Ok(b) => b,
                    Err(e) => {
                        super::send_final(&tx, status(e)).await;
                        return;
                    }
                };
                let idle = batch.commands.is_empty() && batch.next_after == cursor;
                cursor = batch.next_after;
                for d in batch.commands {
                    let msg = pb::StreamCommandsResponse {
                        command: Some(command(d)),
                    };
                    // A receiver that stops reading cannot hold the task.
                    if !super::send_within(&tx, msg, deadline).await {
                        return;
                    }
                }
                if idle {
                    if !follow {
                        return;
                    }
                    tokio::select! {
                        () = &mut ready => {}
                        () = tokio::time::sleep(POLL) => {}
                        () = tokio::time::sleep_until(deadline) => return,
                        () = tx.closed() => return,
                        _ = stop.changed() => return,
                    }
                }
            }
        });
        Ok(Response::new(rx))
    }

    async fn ack_commands(
        &self,
        req: Request<pb::AckCommandsRequest>,
    ) -> Result<Response<pb::AckCommandsResponse>, Status> {
        let who = caller(&req)?;
        let ids = req.into_inner().command_ids;
        let vault = Arc::clone(&self.vault);
        let acknowledged =
            super::consent::detached(
                self.deadline,
                async move { vault.ack_commands(&who, ids).await },
            )
            .await?;
        Ok(Response::new(pb::AckCommandsResponse { acknowledged }))
    }
}

/// A delivered command on the wire.
fn command(d: crate::service::events::Delivered) -> pb::Command {
    let row = d.command;
    let c = row.command;
    pb::Command {
        command_id: c.command_id,
        pairwise_token: c.pairwise_token,
        subject_seq: row.subject_seq,
        command: c.command,
        event_type: c.event_type,
        source: c.source,
        fields: d
            .fields
            .iter()
            .map(|(n, v)| pb::EventField {
                name: n.clone(),
                value: v.expose().to_owned(),
            })
            .collect(),
        created_at_ms: c.created_at_ms,
        rule_id: c.rule_id,
        delivery_attempt: row.deliveries,
    }
}
