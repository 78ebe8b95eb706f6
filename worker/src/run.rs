//! `worker run`: executes a sweep's jobs one after another on this machine
//! and stores each run's files in the local artifact store
//! (`services::Artifacts::local`), with the same key layout the queue
//! workers use. Jobs whose
//! `Results.csv`, `metrics.json` and `spec.json` exist are skipped unless
//! `--force`. At the end the sweep report is rebuilt from every finished
//! run's files.

use std::path::PathBuf;

use anyhow::Context;
use common::artifacts;
use common::job::{DeviceClass, JobMessage};
use common::summary::EpochRecord;
use common::sweep::{Job, Sweep};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use report::sweep::{SweepRun, RUN_FILES};
use services::artifacts::Artifacts;

use crate::engine::pipeline;
use crate::engine::train::Progress;
use crate::engine::trained::RunIds;
use crate::mlflow::{End, EpochSender, JobStart, Sink, TrackingArgs};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The sweep file (TOML).
    sweep: PathBuf,
    /// Directory that receives `sweeps/<sweep>/jobs/<job>/...`.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run only the jobs whose id contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Re-run jobs that already have results.
    #[arg(long)]
    force: bool,
    /// CPU threads for tensor kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// List the expanded jobs and exit.
    #[arg(long)]
    dry_run: bool,
    /// Environment variables specs may use as `${VAR}` besides `*_DIR`
    /// and `*_PATH` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub spec_env: Vec<String>,
    #[command(flatten)]
    pub tracking: TrackingArgs,
}

struct Bars<'a> {
    bar: ProgressBar,
    job: String,
    tracked: Option<EpochSender>,
    /// Where end-of-epoch checkpoints go.
    checkpoints: (&'a Store, String),
}

impl Progress for Bars<'_> {
    fn start_epoch(&mut self, epoch: usize, steps: usize) {
        self.bar.set_length(steps as u64);
        self.bar.set_position(0);
        self.bar.set_prefix(format!("{} epoch {epoch}", self.job));
    }
    fn step(&mut self, _epoch: usize, step: usize, loss: f64) {
        self.bar.set_position(step as u64);
        self.bar.set_message(format!("loss {loss:.4}"));
    }
    fn end_epoch(&mut self, r: &EpochRecord) {
        if let Some(t) = &self.tracked {
            t.send(r);
        }
        let line = format!(
            "{} epoch {}: train loss {:.4}, val loss {:.4}, val acc {:.4}, val macro-F1 {:.4}{} ({:.0}s)",
            self.job,
            r.epoch,
            r.train_loss,
            r.val_loss,
            r.val_accuracy,
            r.val_macro_f1,
            if r.improved { " *" } else { "" },
            r.seconds
        );
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
    fn checkpoint(&mut self, epoch: usize, save: &mut dyn FnMut() -> candle_core::Result<Vec<u8>>) {
        let (store, key) = &self.checkpoints;
        let stored = save()
            .map_err(anyhow::Error::from)
            .and_then(|bytes| store.put(key, bytes));
        if let Err(e) = stored {
            self.bar
                .println(format!("{} epoch {epoch}: no checkpoint: {e:#}", self.job));
        }
    }
}

/// The local artifact store ([`Artifacts::local`], the one `worker serve`
/// and the producer use without a bucket) behind the blocking calls `run`
/// makes.
struct Store {
    artifacts: Artifacts,
    rt: tokio::runtime::Runtime,
}

impl Store {
    fn open(dir: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Store {
            artifacts: Artifacts::local(dir)
                .with_context(|| format!("cannot open {}", dir.display()))?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// One object; `None` when absent or unreadable.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.rt.block_on(self.artifacts.get_opt(key)) {
            Ok(b) => b.map(|b| b.to_vec()),
            Err(e) => {
                eprintln!("cannot read {}: {e}", self.artifacts.url(key));
                None
            }
        }
    }

    fn exists(&self, key: &str) -> bool {
        self.rt
            .block_on(self.artifacts.exists(key))
            .unwrap_or(false)
    }

    /// Stores one object (written to a temporary file, then renamed).
    fn put(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.rt
            .block_on(self.artifacts.put(key, bytes.into()))
            .with_context(|| format!("cannot store {key}"))
    }

    /// Removes one object; an absent one is no error.
    fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.rt
            .block_on(self.artifacts.delete(key))
            .with_context(|| format!("cannot remove {key}"))
    }

    /// Stores a folder's files, its manifest last.
    fn put_all(&self, folder: &str, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        self.rt
            .block_on(self.artifacts.put_all(folder, files))
            .with_context(|| format!("cannot store {folder}"))
    }
}

/// The epoch a checkpoint was written after, when it can be read.
fn checkpoint_epoch(bytes: &[u8]) -> Option<usize> {
    crate::engine::train::checkpoint::Checkpoint::epoch_of(bytes).ok()
}

/// Every finished run of the sweep, read back from the store; a run whose
/// files cannot be read is left out with a warning naming the file.
fn finished_runs(store: &Store, sweep: &Sweep) -> Vec<SweepRun> {
    let folders: Vec<(String, String)> = sweep
        .jobs
        .iter()
        .map(|j| (j.id.clone(), artifacts::job_prefix(&sweep.name, &j.id)))
        .collect();
    let a = &store.artifacts;
    let read = |key: String| async move {
        Ok::<_, std::convert::Infallible>(match a.get_opt(&key).await {
            Ok(b) => b.map(|b| b.to_vec()),
            Err(e) => {
                eprintln!("cannot read {}: {e}", a.url(&key));
                None
            }
        })
    };
    let Ok(got) = store
        .rt
        .block_on(report::sweep::collect_runs(&folders, read));
    for (job, e) in got.unreadable {
        eprintln!("sweep report: {job} left out: {e}");
    }
    got.runs
}

/// Writes the sweep's `Results.csv`, `report.md` and figures.
fn write_sweep_report(store: &Store, sweep: &Sweep, out: &std::path::Path) -> anyhow::Result<()> {
    let runs = finished_runs(store, sweep);
    if runs.is_empty() {
        return Ok(());
    }
    let prefix = artifacts::sweep_prefix(&sweep.name);
    store.put_all(&prefix, &report::sweep::sweep_files(&sweep.name, &runs)?)?;
    println!(
        "sweep results: {}/{prefix}/ (Results.csv, report.md)",
        out.display()
    );
    Ok(())
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let sweep = Sweep::load(&args.sweep)?;
    let jobs: Vec<_> = sweep
        .jobs
        .iter()
        .filter(|j| args.only.as_ref().is_none_or(|o| j.id.contains(o.as_str())))
        .collect();
    if args.dry_run {
        for j in &jobs {
            let axes: Vec<String> = j.axes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{}  {}", j.id, axes.join(" "));
        }
        return Ok(());
    }
    let runner = Runner {
        sweep: &sweep,
        device: crate::engine::device::open(&args.device)?,
        store: Store::open(&args.out)?,
        // MLflow calls run on their own thread while training runs.
        tracking: match Sink::from_args(&args.tracking)? {
            Some(sink) => Some((
                sink,
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?,
            )),
            None => None,
        },
        host: std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
        bars: MultiProgress::new(),
        style: ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")?
            .progress_chars("=> "),
        out: &args.out,
    };
    let mut failed = 0;
    for j in jobs {
        let prefix = artifacts::job_prefix(&sweep.name, &j.id);
        let done = RUN_FILES
            .iter()
            .all(|f| runner.store.exists(&format!("{prefix}/{f}")));
        if !args.force && done {
            println!("{}: already done (use --force to re-run)", j.id);
            continue;
        }
        if !runner.run(j)? {
            failed += 1;
        }
    }
    // The runs are stored: a report that cannot be drawn loses nothing.
    if let Err(e) = write_sweep_report(&runner.store, &sweep, &args.out) {
        eprintln!("sweep report: {e:#}");
    }
    if failed > 0 {
        anyhow::bail!("{failed} job(s) failed");
    }
    Ok(())
}

/// What every job of one `worker run` shares.
struct Runner<'a> {
    sweep: &'a Sweep,
    device: candle_core::Device,
    store: Store,
    tracking: Option<(Sink, tokio::runtime::Runtime)>,
    host: String,
    bars: MultiProgress,
    style: ProgressStyle,
    out: &'a std::path::Path,
}

impl Runner<'_> {
    /// Trains one job (from its checkpoint, when an earlier run stopped
    /// part-way), stores its files and says how it went: `false` when the
    /// job failed, an error when its files could not be stored.
    fn run(&self, j: &Job) -> anyhow::Result<bool> {
        let sweep = &self.sweep.name;
        let prefix = artifacts::job_prefix(sweep, &j.id);
        let bar = self.bars.add(ProgressBar::new(1));
        bar.set_style(self.style.clone());
        let tracker = self.tracking.as_ref().map(|(sink, rt)| {
            let job = JobStart::from_message(
                &JobMessage::train(sweep, j, DeviceClass::Cpu),
                format!("{} (worker run)", self.host),
                1,
            );
            sink.start(job, rt.handle())
        });
        let checkpoint = artifacts::checkpoint_key(sweep, &j.id, &j.config_hash);
        let resume = self.store.get(&checkpoint);
        if let Some(epoch) = resume.as_deref().and_then(checkpoint_epoch) {
            println!("{}: resuming after epoch {epoch}", j.id);
        }
        let mut bars = Bars {
            bar: bar.clone(),
            job: j.id.clone(),
            tracked: tracker.as_ref().map(|t| t.epochs()),
            checkpoints: (&self.store, checkpoint.clone()),
        };
        let ids = RunIds {
            sweep,
            job_id: &j.id,
            config_hash: &j.config_hash,
        };
        let outcome = pipeline::run(&j.spec, &ids, &self.device, &mut bars, resume.as_deref());
        bar.finish_and_clear();
        if let (Some(t), Some((_, rt))) = (tracker, &self.tracking) {
            let end = match &outcome {
                Ok(out) => End::Succeeded {
                    files: out.files.clone(),
                    link: Some(self.out.join(&prefix).display().to_string()),
                },
                Err(e) => End::Failed(e.to_string()),
            };
            rt.block_on(t.finish(end));
        }
        let out = match outcome {
            Ok(out) => out,
            Err(e) => {
                eprintln!("{}: failed: {e}", j.id);
                return Ok(false);
            }
        };
        self.store.put_all(&prefix, &out.files)?;
        self.store.delete(&checkpoint)?;
        let s = &out.summary;
        println!(
            "{}: test accuracy {:.4}, macro-F1 {:.4}, weighted-F1 {:.4}, best epoch {}/{}, {:.0}s training, latency p50 {:.1} ms -> {}/{}",
            j.id,
            s.test.accuracy,
            s.test.macro_f1,
            s.test.weighted_f1,
            s.best_epoch,
            s.epochs_run,
            s.train_seconds,
            s.speed.latency_b1_p50_ms,
            self.out.display(),
            prefix
        );
        for n in &s.notes {
            println!("{}: note: {n}", j.id);
        }
        Ok(true)
    }
}
