//! Storing a finished attempt's files under its own folder
//! (`attempt-<n>-g<generation>-<worker>/`), from the spool, with its
//! `manifest.json` stored last.

use common::artifacts::job_prefix;
use common::job::JobMessage;
use common::settle::{Attempt, RunEnd};

use super::checkpoints::forget_checkpoint;
use crate::serve::Ctx;

/// Stores the files under this attempt's folder (unique per attempt,
/// generation and worker: a rerun never mixes its files with what an
/// earlier attempt may have left), with a manifest, from the spool: the
/// folder of an earlier run, or `files` written there first.
pub(super) async fn upload(
    ctx: &Ctx,
    msg: &JobMessage,
    at: Attempt,
    spooled: Option<std::path::PathBuf>,
    files: Vec<(String, Vec<u8>)>,
) -> RunEnd {
    let folder = format!(
        "{}/attempt-{}-g{}-{}",
        job_prefix(&msg.sweep, &msg.job_id),
        at.attempt,
        at.generation,
        common::artifacts::sanitize(&ctx.worker_id)
    );
    tracing::info!(job = %msg.job_id, %folder, "storing the run's files");
    let dir = match spooled {
        Some(dir) => dir,
        None => match ctx.spool.save(msg, &files) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(job = %msg.job_id, error = %e, "cannot spool the run's files; uploading from memory");
                return match ctx
                    .artifacts
                    .put_all(&folder, &with_manifest(msg, at, ctx, files))
                    .await
                {
                    Ok(()) => {
                        forget_checkpoint(ctx, msg).await;
                        RunEnd::Succeeded {
                            artifacts: folder,
                            results: Vec::new(),
                        }
                    }
                    Err(e) => RunEnd::Transient(e.to_string()),
                };
            }
        },
    };
    let listed = match services::artifacts::files_under(&dir) {
        Ok(l) => l,
        Err(e) => return RunEnd::Transient(e.to_string()),
    };
    let sizes = listed
        .iter()
        .filter(|(n, _)| n != common::artifacts::files::MANIFEST_JSON)
        .map(|(n, p)| {
            (
                n.as_str(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        });
    let manifest = manifest(msg, at, ctx, sizes);
    if let Err(e) = std::fs::write(dir.join(common::artifacts::files::MANIFEST_JSON), manifest) {
        return RunEnd::Transient(format!("cannot write the manifest: {e}"));
    }
    match ctx.artifacts.put_dir(&folder, &dir).await {
        Ok(()) => {
            ctx.spool.remove(msg);
            forget_checkpoint(ctx, msg).await;
            remove_stale_folders(ctx, msg, &folder, at.generation).await;
            RunEnd::Succeeded {
                artifacts: folder,
                results: Vec::new(),
            }
        }
        Err(e) => RunEnd::Transient(format!("{e} (the run's files wait in the spool)")),
    }
}

/// The attempt's manifest: who wrote it and every file with its size.
pub(super) fn manifest<'a>(
    msg: &JobMessage,
    at: Attempt,
    ctx: &Ctx,
    files: impl Iterator<Item = (&'a str, u64)>,
) -> Vec<u8> {
    let listed: Vec<_> = files
        .map(|(n, bytes)| serde_json::json!({"name": n, "bytes": bytes}))
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "job_id": msg.job_id,
        "config_hash": msg.config_hash,
        "attempt": at.attempt,
        "generation": at.generation,
        "worker": ctx.worker_id,
        "files": listed,
    }))
    .unwrap_or_default()
}

/// The generation in an attempt folder's name (`attempt-<n>-g<gen>-<worker>`).
fn generation_of(folder: &str) -> Option<u64> {
    let name = folder.rsplit('/').next()?.strip_prefix("attempt-")?;
    let (_, rest) = name.split_once('-')?;
    rest.strip_prefix('g')?.split_once('-')?.0.parse().ok()
}

/// Once the job's outcome is `kept` (stored by this attempt, of generation
/// `generation`, or an earlier one it records), removes the job's other
/// attempt folders that can never be recorded: the whole ones of earlier
/// generations (a fence refuses them) and the partial ones (no
/// `manifest.json`: a worker killed while it uploaded) of this generation
/// or earlier. A later generation's folder is left alone: it may be
/// uploading. Readers skip all of these anyway
/// ([`common::artifacts::complete_keys`], the folder a record names); this
/// keeps the store to one folder per finished job. Best effort.
pub(super) async fn remove_stale_folders(ctx: &Ctx, msg: &JobMessage, kept: &str, generation: u64) {
    let Ok(keys) = ctx
        .artifacts
        .list(&job_prefix(&msg.sweep, &msg.job_id))
        .await
    else {
        return;
    };
    let suffix = format!("/{}", common::artifacts::files::MANIFEST_JSON);
    let whole: std::collections::HashSet<&str> = keys
        .iter()
        .filter_map(|k| k.strip_suffix(&suffix))
        .collect();
    let kept = format!("{kept}/");
    for k in &keys {
        let Some(folder) = k
            .find("/attempt-")
            .and_then(|i| k[i + 1..].find('/').map(|j| &k[..i + 1 + j]))
        else {
            continue;
        };
        let Some(g) = generation_of(folder) else {
            continue;
        };
        let stale = !k.starts_with(&kept)
            && if whole.contains(folder) {
                g < generation
            } else {
                g <= generation
            };
        if stale {
            if let Err(e) = ctx.artifacts.delete(k).await {
                tracing::warn!(key = %k, error = %e, "cannot remove a stale attempt folder's file");
            }
        }
    }
}

/// A whole attempt folder of this job stored by an earlier attempt of the
/// same configuration (its `manifest.json` names the config hash): the
/// job's files are already stored, so this attempt records them instead of
/// training again. That happens when Redis lost the success record after
/// the delivery was acknowledged (a crash or failover before the write
/// reached its disk or replica): the job reads `running` again and the
/// reconciler publishes it. The oldest such folder wins; a store that
/// cannot be read means training.
pub(super) async fn stored_run(ctx: &Ctx, msg: &JobMessage) -> Option<String> {
    let keys = match ctx
        .artifacts
        .list(&job_prefix(&msg.sweep, &msg.job_id))
        .await
    {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(job = %msg.job_id, error = %e, "cannot list the job's stored files; training");
            return None;
        }
    };
    let suffix = format!("/{}", common::artifacts::files::MANIFEST_JSON);
    let mut folders: Vec<String> = common::artifacts::complete_keys(&keys)
        .iter()
        .filter_map(|k| k.strip_suffix(&suffix))
        .filter(|f| {
            f.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("attempt-"))
        })
        .map(String::from)
        .collect();
    folders.sort_unstable();
    for folder in folders {
        let Ok(Some(bytes)) = ctx.artifacts.get_opt(&format!("{folder}{suffix}")).await else {
            continue;
        };
        let hash = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|m| m.get("config_hash")?.as_str().map(String::from));
        if hash.as_deref() == Some(msg.config_hash.as_str()) {
            return Some(folder);
        }
    }
    None
}

/// In-memory files plus their manifest (when the spool cannot be written).
pub(super) fn with_manifest(
    msg: &JobMessage,
    at: Attempt,
    ctx: &Ctx,
    mut files: Vec<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let m = manifest(
        msg,
        at,
        ctx,
        files.iter().map(|(n, b)| (n.as_str(), b.len() as u64)),
    );
    files.push((common::artifacts::files::MANIFEST_JSON.into(), m));
    files
}

/// The files of a spooled run, read back (those that can be).
pub(super) fn read_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    services::artifacts::files_under(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, path)| std::fs::read(path).ok().map(|b| (name, b)))
        .collect()
}

/// What a run's `metrics.json` (in `files`, or in the spooled folder)
/// says a reader of the job's record wants: the epochs run, the best
/// epoch and the test scores at it. Nothing for a validate job.
pub(super) fn results_of(
    files: &[(String, Vec<u8>)],
    spooled: Option<&std::path::Path>,
) -> Vec<(&'static str, String)> {
    let name = common::artifacts::files::METRICS_JSON;
    let bytes = match spooled {
        Some(dir) => std::fs::read(dir.join(name)).ok(),
        None => files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone()),
    };
    let Some(s) =
        bytes.and_then(|b| serde_json::from_slice::<common::summary::RunSummary>(&b).ok())
    else {
        return Vec::new();
    };
    vec![
        ("epochs_run", s.epochs_run.to_string()),
        ("best_epoch", s.best_epoch.to_string()),
        ("test_accuracy", format!("{:.4}", s.test.accuracy)),
        ("test_macro_f1", format!("{:.4}", s.test.macro_f1)),
    ]
}

#[cfg(test)]
mod tests {
    use super::generation_of;

    #[test]
    fn generation_is_read_from_the_folder_name() {
        assert_eq!(
            generation_of("sweeps/s/jobs/j/attempt-1-g12-host-1-ab"),
            Some(12)
        );
        assert_eq!(generation_of("attempt-3-g1-w"), Some(1));
        assert_eq!(generation_of("sweeps/s/jobs/j/checkpoint"), None);
        assert_eq!(generation_of("attempt-x"), None);
    }
}
