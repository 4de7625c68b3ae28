//! `idvault.v1.KeyService`: the operator's key lifecycle calls
//! (docs/keys.md, "Rewrap and retire").

use std::sync::Arc;

use idvault_proto::v1 as pb;
use idvault_proto::v1::key_service_server::KeyService;
use tonic::{Request, Response, Status};

use super::{caller, status, within};
use crate::service::rekey::RewrapProgress;

adapter!(
    /// The key lifecycle service.
    KeyApi, streams
);

fn update(target: u32, p: &RewrapProgress) -> pb::RewrapUpdate {
    pb::RewrapUpdate {
        target_version: target,
        phase: p.phase.to_owned(),
        done: p.done,
        total: p.total,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    type RewrapStream = super::Replies<pb::RewrapUpdate>;

    async fn rewrap(
        &self,
        req: Request<pb::RewrapRequest>,
    ) -> Result<Response<Self::RewrapStream>, Status> {
        let who = caller(&req)?;
        let vault = Arc::clone(&self.vault);
        // A bounded progress queue: a slow reader loses progress messages,
        // never the rewrap, which runs on its own task to the end.
        let (ptx, mut prx) = tokio::sync::mpsc::channel::<RewrapProgress>(64);
        let job = within(self.deadline, async {
            vault.start_rewrap(&who, ptx).await.map_err(status)
        })
        .await?;
        let target = self.vault.keys().current_version();
        let (tx, rx) = super::replies(16);
        let deadline = super::stream_deadline(&who, self.stream_deadline);
        tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                if !super::send_within(&tx, update(target, &p), deadline).await {
                    // The caller is gone or too slow; the rewrap goes on.
                    return;
                }
            }
            let last = match job.await {
                Ok(Ok(r)) => pb::RewrapUpdate {
                    target_version: r.target,
                    finished: true,
                    subjects: r.subjects,
                    links: r.links,
                    row_macs: r.row_macs,
                    audit_leaves: r.leaves,
                    batches: r.batches,
                    left_behind: r.left_behind(),
                    ..Default::default()
                },
                Ok(Err(e)) => {
                    super::send_final(&tx, status(e)).await;
                    return;
                }
                Err(_) => {
                    super::send_final(&tx, Status::internal("the rewrap task failed")).await;
                    return;
                }
            };
            let _ = super::send_within(&tx, last, deadline).await;
        });
        Ok(Response::new(rx))
    }
}
