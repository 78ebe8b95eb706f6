//! `worker run`: executes a sweep's jobs one after another on this machine
//! and stores each run's files through object_store's local file system
//! store, with the same key layout the queue workers use on S3. Jobs whose
//! `Results.csv` already exists are skipped unless `--force`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use common::artifacts::{self, files};
use common::sweep::Sweep;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::engine::job::{self, RunIds};
use crate::engine::report;
use crate::engine::train::{EpochRecord, Progress};

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
    threads: Option<usize>,
    /// List the expanded jobs and exit.
    #[arg(long)]
    dry_run: bool,
}

struct Bars {
    bar: ProgressBar,
    job: String,
}

impl Progress for Bars {
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
}

/// The validation curves of every finished run of the sweep, read back
/// from the store.
async fn read_histories(
    store: &dyn ObjectStore,
    sweep: &Sweep,
) -> anyhow::Result<Vec<report::RunCurve>> {
    let mut out = Vec::new();
    for j in &sweep.jobs {
        let key = StorePath::from(format!(
            "{}/{}",
            artifacts::job_prefix(&sweep.name, &j.id),
            files::METRICS_JSON
        ));
        let Ok(got) = store.get(&key).await else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_slice(&got.bytes().await?)?;
        let points = m["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|r| Some((r["epoch"].as_u64()? as usize, r["val_score"].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let variant = serde_json::to_value(j.spec.variant)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let metric = serde_json::to_value(j.spec.train.metric)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.push(report::RunCurve {
            variant,
            group: j.spec.comparison_group(),
            seed: j.spec.seed,
            metric,
            points,
        });
    }
    Ok(out)
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
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
    let device = crate::parse_device(&args.device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalFileSystem::new_with_prefix(&args.out)
            .with_context(|| format!("cannot open {}", args.out.display()))?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")?
        .progress_chars("=> ");
    let mut rows = Vec::new();
    let mut failed = 0;
    for j in jobs {
        let prefix = artifacts::job_prefix(&sweep.name, &j.id);
        let results_key = StorePath::from(format!("{prefix}/{}", files::RESULTS_CSV));
        if !args.force {
            if let Ok(existing) =
                rt.block_on(async { store.get(&results_key).await?.bytes().await })
            {
                println!("{}: already done (use --force to re-run)", j.id);
                if let Some(row) = String::from_utf8_lossy(&existing).lines().nth(1) {
                    rows.push(row.to_string());
                }
                continue;
            }
        }
        let bar = multi.add(ProgressBar::new(1));
        bar.set_style(style.clone());
        let mut bars = Bars {
            bar: bar.clone(),
            job: j.id.clone(),
        };
        let ids = RunIds {
            sweep: &sweep.name,
            job_id: &j.id,
            config_hash: &j.config_hash,
        };
        let outcome = job::run(&j.spec, &ids, &device, &mut bars);
        bar.finish_and_clear();
        match outcome {
            Ok(out) => {
                rt.block_on(async {
                    for (name, bytes) in &out.files {
                        let key = StorePath::from(format!("{prefix}/{name}"));
                        store
                            .put(&key, PutPayload::from(bytes.clone()))
                            .await
                            .with_context(|| format!("cannot store {key}"))?;
                    }
                    anyhow::Ok(())
                })?;
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
                    args.out.display(),
                    prefix
                );
                rows.push(report::results_row(&j.spec, s));
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: failed: {e}", j.id);
            }
        }
    }
    if !rows.is_empty() {
        let sweep_prefix = artifacts::sweep_prefix(&sweep.name);
        let body = format!("{}\n{}\n", report::RESULTS_HEADER, rows.join("\n"));
        let mut files = vec![(files::RESULTS_CSV.to_string(), body.clone().into_bytes())];
        let histories = rt.block_on(read_histories(store.as_ref(), &sweep))?;
        match report::sweep_files(&sweep.name, &body, &histories) {
            Ok(f) => files.extend(f),
            Err(e) => eprintln!("sweep report: {e}"),
        }
        rt.block_on(async {
            for (name, bytes) in files {
                let key = StorePath::from(format!("{sweep_prefix}/{name}"));
                store.put(&key, PutPayload::from(bytes)).await?;
            }
            anyhow::Ok(())
        })?;
        println!(
            "sweep results: {}/{sweep_prefix}/ (Results.csv, report.md)",
            args.out.display()
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} job(s) failed");
    }
    Ok(())
}
