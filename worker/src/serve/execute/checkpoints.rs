//! A training job's checkpoints on a queue worker: each one spooled as
//! it is written and uploaded to `sweeps/<sweep>/jobs/<job>/checkpoint/`
//! (the latest wins), read back by the next attempt ([`resume_from`]) and
//! removed once the job's files are stored ([`forget_checkpoint`]).

use std::time::Duration;

use common::artifacts::checkpoint_key;
use common::job::JobMessage;

use crate::serve::spool::Spool;
use crate::serve::Ctx;

/// Where a training job's checkpoints go: the spool at once, then S3 by
/// [`upload_checkpoints`] (the latest one; one still uploading when the
/// next comes is replaced).
pub(super) struct Checkpoints {
    pub spool: Spool,
    pub msg: JobMessage,
    pub latest: tokio::sync::watch::Sender<Option<bytes::Bytes>>,
}

impl Checkpoints {
    /// Spools the checkpoint `save` writes after `epoch` and hands it to
    /// the uploader; a checkpoint that cannot be written is skipped.
    pub fn save(&self, epoch: usize, save: &mut dyn FnMut() -> candle_core::Result<Vec<u8>>) {
        let bytes = match save() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(job = %self.msg.job_id, epoch, error = %e, "cannot write a checkpoint");
                return;
            }
        };
        if let Err(e) = self.spool.save_checkpoint(&self.msg, &bytes) {
            tracing::warn!(job = %self.msg.job_id, epoch, error = %e, "cannot spool the checkpoint");
        }
        self.latest.send_replace(Some(bytes.into()));
    }
}

/// How long a finished run waits for its last checkpoint's upload.
pub(super) const CHECKPOINT_UPLOAD_WAIT: Duration = Duration::from_secs(60);

/// Uploads each checkpoint the training thread hands over, until it is done.
pub(super) async fn upload_checkpoints(
    artifacts: services::artifacts::Artifacts,
    key: String,
    mut latest: tokio::sync::watch::Receiver<Option<bytes::Bytes>>,
) {
    while latest.changed().await.is_ok() {
        let Some(bytes) = latest.borrow_and_update().clone() else {
            continue;
        };
        if let Err(e) = artifacts.put(&key, bytes).await {
            tracing::warn!(key, error = %e, "cannot store the checkpoint; it waits in the spool");
        }
    }
}

/// The newest checkpoint of this job and configuration: this worker's
/// spool, else the store.
pub(super) async fn resume_from(ctx: &Ctx, msg: &JobMessage) -> Option<Vec<u8>> {
    if let Some(b) = ctx.spool.checkpoint(msg) {
        return Some(b);
    }
    let key = checkpoint_key(&msg.sweep, &msg.job_id, &msg.config_hash);
    match ctx.artifacts.get_opt(&key).await {
        Ok(b) => b.map(|b| b.to_vec()),
        Err(e) => {
            tracing::warn!(job = %msg.job_id, error = %e, "cannot read the job's checkpoint; training from the start");
            None
        }
    }
}

/// The job's files are stored: its checkpoints are of no further use.
pub(super) async fn forget_checkpoint(ctx: &Ctx, msg: &JobMessage) {
    ctx.spool.remove_checkpoint(msg);
    let key = checkpoint_key(&msg.sweep, &msg.job_id, &msg.config_hash);
    if let Err(e) = ctx.artifacts.delete(&key).await {
        tracing::warn!(key, error = %e, "cannot remove the job's checkpoint");
    }
}
