//! Validate jobs: a finished run's trained parameters fetched from the
//! store and scored again on a split (with or without the dendrite terms).

use common::job::JobMessage;

use super::join_error;
use crate::engine::error::JobError;
use crate::engine::pipeline;
use crate::serve::best_effort;
use crate::serve::Ctx;

/// The artifact key of the trained parameters a validate job names: a job
/// id (of a succeeded job) or `s3://<bucket>/<key>` in the configured bucket.
pub(super) async fn trained_key(ctx: &Ctx, source: &str) -> Result<String, JobError> {
    if let Some(rest) = source.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| JobError::Spec(format!("bad S3 URI {source:?}")))?;
        let Some(prefix) = ctx
            .artifacts
            .location
            .strip_prefix(&format!("s3://{bucket}"))
        else {
            return Err(JobError::Spec(format!(
                "{source} is not in this worker's bucket ({})",
                ctx.artifacts.location
            )));
        };
        let prefix = prefix.trim_matches('/');
        let key = if prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&format!("{prefix}/")).unwrap_or(key)
        };
        return Ok(key.to_string());
    }
    let r = ctx
        .state
        .record(source)
        .await
        .map_err(|e| JobError::Transient(e.to_string()))?;
    match r {
        Some(r) if r.state == Some(common::state::JobState::Succeeded) => Ok(format!(
            "{}/{}",
            r.artifacts,
            common::artifacts::files::TRAINED_SAFETENSORS
        )),
        Some(r) => Err(JobError::Spec(format!(
            "job {source} is {}, not succeeded",
            r.state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into())
        ))),
        None => Err(JobError::Spec(format!("no job {source:?}"))),
    }
}

/// Scores a finished run's trained parameters again; the files to store.
pub(super) async fn validate(
    ctx: &Ctx,
    device: &str,
    msg: &JobMessage,
    source: &str,
    what: pipeline::Rescore,
    heard: impl Fn() + Send + 'static,
) -> Result<Vec<(String, Vec<u8>)>, JobError> {
    let key = trained_key(ctx, source).await?;
    let bytes = ctx.artifacts.get(&key).await.map_err(|e| match e {
        services::artifacts::ArtifactError::Store(object_store::Error::NotFound { .. }) => {
            JobError::Spec(format!("{key} not found"))
        }
        e => JobError::Transient(e.to_string()),
    })?;
    let tmp = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile()
        .map_err(|e| JobError::Transient(e.to_string()))?;
    std::fs::write(tmp.path(), &bytes).map_err(|e| JobError::Transient(e.to_string()))?;
    let spec = msg.spec.clone();
    let path = tmp.path().to_path_buf();
    let (source, job_id, device_name) =
        (source.to_string(), msg.job_id.clone(), device.to_string());
    let (summary, files) = tokio::task::spawn_blocking(move || {
        let device =
            crate::engine::device::open(&device_name).map_err(|e| JobError::Spec(e.to_string()))?;
        crate::engine::beat::with(heard, || {
            pipeline::validate(&spec, &path, &source, what, &job_id, &device)
        })
    })
    .await
    .map_err(join_error)??;
    drop(tmp);
    let sent = ctx
        .state
        .set_fields(
            &msg.job_id,
            &[
                ("val_accuracy", format!("{:.4}", summary.scores.accuracy)),
                ("val_macro_f1", format!("{:.4}", summary.scores.macro_f1)),
            ],
        )
        .await;
    best_effort("recording validation scores", &msg.job_id, sent);
    Ok(files)
}
