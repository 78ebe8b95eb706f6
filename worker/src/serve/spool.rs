//! A finished run's files on local disk until they are stored: uploads
//! stream from here (in parts when large), and an S3 outage longer than the
//! upload retries sends the job to a retry that, on this worker, uploads
//! the spooled files instead of training again. One folder per job and
//! config hash under `<spool>/<namespace>/`, written whole (a temporary
//! folder of its own per save, synced, renamed into place), removed once
//! stored, and pruned while serving when its job ran elsewhere. Beside
//! them, each training job's latest end-of-epoch checkpoint
//! (`<job>-<hash>.checkpoint`, replaced whole), kept until the job's files
//! are stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::artifacts::sanitize;
use common::job::JobMessage;

/// The spool of one namespace.
#[derive(Clone)]
pub(super) struct Spool {
    root: PathBuf,
}

impl Spool {
    pub fn new(base: &Path, namespace: &str) -> Spool {
        Spool {
            root: base.join(sanitize(namespace)),
        }
    }

    fn dir(&self, msg: &JobMessage) -> PathBuf {
        self.root
            .join(format!("{}-{}", sanitize(&msg.job_id), msg.config_hash))
    }

    /// Writes the run's files; their folder. Each save writes a fresh
    /// temporary folder of its own (so that saves of different jobs, or of
    /// the same job, never share one), syncs every file to disk, then
    /// renames the folder into place and syncs the namespace folder: after a
    /// crash the job's folder is either absent or whole.
    pub fn save(&self, msg: &JobMessage, files: &[(String, Vec<u8>)]) -> std::io::Result<PathBuf> {
        use std::io::Write;
        let dir = self.dir(msg);
        std::fs::create_dir_all(&self.root)?;
        let partial = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(&self.root)?;
        for (name, bytes) in files {
            let path = partial.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(&path)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(partial.path(), &dir)?;
        // Renamed away: nothing left for the guard to delete.
        drop(partial.keep());
        std::fs::File::open(&self.root)?.sync_all()?;
        Ok(dir)
    }

    /// The folder of a run of this job and spec finished earlier and not
    /// stored yet.
    pub fn find(&self, msg: &JobMessage) -> Option<PathBuf> {
        let dir = self.dir(msg);
        dir.is_dir().then_some(dir)
    }

    pub fn remove(&self, msg: &JobMessage) {
        removed(&self.dir(msg), std::fs::remove_dir_all(self.dir(msg)));
    }

    fn checkpoint_path(&self, msg: &JobMessage) -> PathBuf {
        self.root.join(format!(
            "{}-{}.checkpoint",
            sanitize(&msg.job_id),
            msg.config_hash
        ))
    }

    /// Replaces the job's checkpoint with `bytes`: a temporary file of its
    /// own, synced, renamed into place, the folder synced.
    pub fn save_checkpoint(&self, msg: &JobMessage, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.root)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.root)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.checkpoint_path(msg))
            .map_err(|e| e.error)?;
        std::fs::File::open(&self.root)?.sync_all()
    }

    /// The job's latest checkpoint, when this worker wrote one.
    pub fn checkpoint(&self, msg: &JobMessage) -> Option<Vec<u8>> {
        std::fs::read(self.checkpoint_path(msg)).ok()
    }

    pub fn remove_checkpoint(&self, msg: &JobMessage) {
        let path = self.checkpoint_path(msg);
        removed(&path, std::fs::remove_file(&path));
    }

    /// Removes what has waited longer than `age` (its job ran elsewhere).
    pub fn prune(&self, age: Duration) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > age);
            if old {
                let path = e.path();
                let r = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed(&path, r);
            }
        }
    }
}

/// Logs a spool file that could not be removed (it stays until the next
/// prune); an absent one is no error.
fn removed(path: &Path, r: std::io::Result<()>) {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a spool file");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(job: &str) -> JobMessage {
        let s = common::sweep::Sweep::parse(
            "t.toml",
            "[sweep]\nname = \"t\"\n[base.model]\narch = \"bert\"\npath = \"/m\"\n[base.data]\npath = \"/d\"\n",
        )
        .unwrap();
        let mut m = JobMessage::train(&s.name, &s.jobs[0], common::job::DeviceClass::Cpu);
        m.job_id = job.into();
        m
    }

    #[test]
    fn saves_finds_and_removes_a_run() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "ns");
        let (a, b) = (message("a"), message("b"));
        assert!(spool.find(&a).is_none());
        let dir = spool
            .save(
                &a,
                &[
                    ("metrics.json".into(), b"{}".to_vec()),
                    ("PAI/PAI.png".into(), vec![1, 2]),
                ],
            )
            .unwrap();
        assert_eq!(spool.find(&a), Some(dir.clone()));
        assert!(spool.find(&b).is_none(), "another job's run is not found");
        assert_eq!(std::fs::read(dir.join("PAI/PAI.png")).unwrap(), vec![1, 2]);
        // Saved again (a rerun): replaced whole.
        spool
            .save(&a, &[("metrics.json".into(), b"[]".to_vec())])
            .unwrap();
        assert!(!dir.join("PAI").exists());
        spool.remove(&a);
        assert!(spool.find(&a).is_none());
        spool.save(&b, &[]).unwrap();
        spool.save_checkpoint(&b, b"epoch 1").unwrap();
        spool.save_checkpoint(&b, b"epoch 2").unwrap();
        assert_eq!(spool.checkpoint(&b).as_deref(), Some(&b"epoch 2"[..]));
        assert!(spool.checkpoint(&a).is_none(), "another job's checkpoint");
        spool.prune(Duration::from_secs(3600));
        assert!(spool.find(&b).is_some(), "recent runs are kept");
        assert!(
            spool.checkpoint(&b).is_some(),
            "recent checkpoints are kept"
        );
        std::thread::sleep(Duration::from_millis(20));
        spool.prune(Duration::from_millis(10));
        assert!(spool.find(&b).is_none());
        assert!(spool.checkpoint(&b).is_none());
        assert_eq!(
            std::fs::read_dir(base.path().join("ns")).unwrap().count(),
            0
        );
    }

    /// Jobs of a sweep whose name holds a dot, saved from two threads at
    /// once, many times: each folder holds exactly its own files.
    #[test]
    fn concurrent_saves_of_a_dotted_sweep_keep_their_own_files() {
        let base = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::new(base.path(), "ns"));
        let threads: Vec<_> = ["a.b/000", "a.b/001"]
            .into_iter()
            .map(|job| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    let msg = message(job);
                    for round in 0..200u32 {
                        let own = format!("{job} {round}").into_bytes();
                        let dir = spool
                            .save(
                                &msg,
                                &[
                                    ("metrics.json".into(), own.clone()),
                                    ("PAI/PAI.png".into(), own.clone()),
                                ],
                            )
                            .unwrap_or_else(|e| panic!("{job} round {round}: {e}"));
                        for f in ["metrics.json", "PAI/PAI.png"] {
                            assert_eq!(
                                std::fs::read(dir.join(f)).ok(),
                                Some(own.clone()),
                                "{job} round {round}: {f}"
                            );
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(base.path().join("ns"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only the two jobs' folders are left: {names:?}"
        );
    }
}
