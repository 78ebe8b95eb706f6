//! The optional MLflow sink (`--mlflow-uri` or `MLFLOW_TRACKING_URI`):
//! every job is an MLflow run in an experiment named after its sweep, with
//! the flattened spec, config hash, variant, seed and split seed as params,
//! the job id, worker, attempt and comparison group as tags, per-epoch
//! metrics as the epochs end (step = epoch), the final scores and latency,
//! the run's files as artifacts (when the server serves artifacts) and a
//! link to their S3 folder.
//!
//! One MLflow run per job: a later attempt finds the run by its `job_id`
//! tag and carries on in it. A tracker that is down never fails a job: the
//! events of a job go through a channel to one task that sends them in
//! order, retrying (1 s doubling to 30 s) while the server is out of reach;
//! at the job's end the task gets `--mlflow-flush-secs` to catch up, then
//! what is left is dropped with a warning.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

use common::job::{JobKind, JobMessage};
use common::spec::JobSpec;
use common::summary::{EpochRecord, RunSummary, ValidationSummary};
use services::mlflow::{flatten, Metric, Mlflow, MlflowError, RunInfo, RunStatus};
use tokio::sync::mpsc;

/// Largest artifact file sent to MLflow; larger ones are linked only.
const MAX_ARTIFACT_BYTES: usize = 256 << 20;

/// The sink's flags, shared by `worker run` and `worker serve`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TrackingArgs {
    /// MLflow tracking server (`http://host:5000`): every job becomes an
    /// MLflow run. Off when unset.
    #[arg(
        long = "mlflow-uri",
        env = "MLFLOW_TRACKING_URI",
        hide_env_values = true
    )]
    pub mlflow_uri: Option<String>,
    /// Seconds a finished job waits for its MLflow events to be sent
    /// before they are dropped (the job itself never fails for MLflow).
    #[arg(long, default_value_t = 60)]
    pub mlflow_flush_secs: u64,
}

/// Where jobs are tracked.
#[derive(Clone, Debug)]
pub struct Sink {
    client: Mlflow,
    flush: Duration,
}

impl Sink {
    /// The sink the flags ask for (`None` when no URI is set).
    pub fn from_args(a: &TrackingArgs) -> Result<Option<Sink>, MlflowError> {
        let Some(uri) = a.mlflow_uri.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let client = Mlflow::new(uri, Duration::from_secs(30))?;
        tracing::info!(mlflow = %client.shown(), "tracking jobs in MLflow");
        Ok(Some(Sink {
            client,
            flush: Duration::from_secs(a.mlflow_flush_secs),
        }))
    }

    /// Starts tracking one job (on the runtime of `rt`).
    pub fn start(&self, job: JobStart, rt: &tokio::runtime::Handle) -> JobTracker {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Event::Start(Box::new(job), now_ms()));
        let task = rt.spawn(send_all(self.client.clone(), rx));
        JobTracker {
            tx,
            task,
            flush: self.flush,
        }
    }
}

/// What a job is, for its MLflow run.
#[derive(Debug, Clone)]
pub struct JobStart {
    pub sweep: String,
    pub job_id: String,
    pub config_hash: String,
    pub spec: JobSpec,
    pub worker: String,
    pub attempt: u32,
    /// `train` or `validate`.
    pub kind: &'static str,
    /// Extra params (a validate job's source and split).
    pub params: Vec<(String, String)>,
}

impl JobStart {
    /// The MLflow run's description of a queued job (the one builder for
    /// `worker serve`'s jobs and `worker run`'s, which describes each of
    /// its jobs by the message that would queue it).
    pub fn from_message(msg: &JobMessage, worker: String, attempt: u32) -> JobStart {
        let (kind, params) = match &msg.kind {
            JobKind::Train => ("train", Vec::new()),
            JobKind::Validate {
                source,
                split,
                knockout,
            } => (
                "validate",
                vec![
                    ("source".to_string(), source.clone()),
                    ("eval_split".into(), split.to_string()),
                    ("knockout".into(), knockout.to_string()),
                ],
            ),
        };
        JobStart {
            sweep: msg.sweep.clone(),
            job_id: msg.job_id.clone(),
            config_hash: msg.config_hash.clone(),
            spec: msg.spec.clone(),
            worker,
            attempt,
            kind,
            params,
        }
    }
}

/// How a job ended, for its MLflow run.
#[derive(Debug)]
pub enum End {
    /// Trained or validated; its files and where they are stored.
    Succeeded {
        files: Vec<(String, Vec<u8>)>,
        link: Option<String>,
    },
    /// Will not be retried.
    Failed(String),
    /// Cancelled.
    Killed(String),
    /// Handed back or to be retried: another attempt continues the run.
    Retrying(String),
    /// Another attempt owns the job now: leave its run alone.
    Superseded,
}

enum Event {
    Start(Box<JobStart>, i64),
    Epoch(Box<EpochRecord>, i64),
    End(End, i64),
}

/// Sends epoch records from the training thread.
#[derive(Clone)]
pub struct EpochSender(mpsc::UnboundedSender<Event>);

impl EpochSender {
    pub fn send(&self, r: &EpochRecord) {
        let _ = self.0.send(Event::Epoch(Box::new(r.clone()), now_ms()));
    }
}

/// One job's tracking.
pub struct JobTracker {
    tx: mpsc::UnboundedSender<Event>,
    task: tokio::task::JoinHandle<()>,
    flush: Duration,
}

impl JobTracker {
    pub fn epochs(&self) -> EpochSender {
        EpochSender(self.tx.clone())
    }

    /// Records the end and waits (at most the flush time) for every event
    /// to reach MLflow.
    pub async fn finish(self, end: End) {
        let _ = self.tx.send(Event::End(end, now_ms()));
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(self.flush, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                "MLflow still out of reach after {:?}: the rest of this job's tracking is dropped",
                self.flush
            );
        }
    }
}

fn now_ms() -> i64 {
    common::clock::now_ms() as i64
}

/// The run being tracked, once found or created.
struct Tracked {
    run: RunInfo,
}

/// The longest wait between two tries of one tracking call.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Waits between tries of one tracking call: 1 s, doubling, at most
/// [`MAX_RETRY_WAIT`], without end.
fn retry_waits() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(MAX_RETRY_WAIT)
        .without_max_times()
        .build()
}

/// Sends a job's events in order, each retried while MLflow is out of
/// reach; an event MLflow refuses is logged and skipped.
async fn send_all(client: Mlflow, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut tracked: Option<Tracked> = None;
    let mut warned = false;
    while let Some(ev) = rx.recv().await {
        let last = matches!(ev, Event::End(..));
        let mut waits = retry_waits();
        loop {
            match apply(&client, &mut tracked, &ev).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    if !warned {
                        tracing::warn!(mlflow = %client.shown(), error = %e, "MLflow out of reach; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(waits.next().unwrap_or(MAX_RETRY_WAIT)).await;
                }
                Err(e) => {
                    tracing::warn!(mlflow = %client.shown(), error = %e, "MLflow refused a tracking call; skipped");
                    break;
                }
            }
        }
        // Epoch senders may outlive the job: the end is the last event.
        if last {
            return;
        }
    }
}

async fn apply(
    client: &Mlflow,
    tracked: &mut Option<Tracked>,
    ev: &Event,
) -> Result<(), MlflowError> {
    match ev {
        Event::Start(job, at) => {
            *tracked = Some(start_run(client, job, *at).await?);
            Ok(())
        }
        Event::Epoch(r, at) => match tracked {
            Some(t) => {
                client
                    .log_batch(&t.run.run_id, &epoch_metrics(r, *at), &[], &[])
                    .await
            }
            None => Ok(()),
        },
        Event::End(end, at) => match tracked {
            Some(t) => end_run(client, &t.run, end, *at).await,
            None => Ok(()),
        },
    }
}

/// Finds the job's run (a retried job) or creates it, marks it running and
/// logs its params and tags.
async fn start_run(client: &Mlflow, job: &JobStart, at: i64) -> Result<Tracked, MlflowError> {
    let experiment = client.experiment_id(&job.sweep).await?;
    let tags = vec![
        ("job_id".to_string(), job.job_id.clone()),
        ("sweep".into(), job.sweep.clone()),
        ("kind".into(), job.kind.into()),
        ("worker".into(), job.worker.clone()),
        ("attempt".into(), job.attempt.to_string()),
        ("comparison_group".into(), job.spec.comparison_group()),
        ("variant".into(), variant_name(&job.spec)),
        ("mlflow.source.name".into(), "fpb-dendrites worker".into()),
    ];
    let run = match client.find_run(&experiment, "job_id", &job.job_id).await? {
        Some(r) => {
            client
                .set_status(&r.info.run_id, RunStatus::Running, None)
                .await?;
            r.info
        }
        None => {
            client
                .create_run(&experiment, &job.job_id, &tags, at)
                .await?
        }
    };
    client
        .log_batch(&run.run_id, &[], &job_params(job), &tags)
        .await?;
    Ok(Tracked { run })
}

/// The flattened spec and the ids a run is compared by.
fn job_params(job: &JobStart) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(&job.spec) {
        flatten("", &v, &mut out);
    }
    out.retain(|(k, _)| k != "variant" && k != "seed");
    out.extend([
        ("config_hash".to_string(), job.config_hash.clone()),
        ("variant".into(), variant_name(&job.spec)),
        ("seed".into(), job.spec.seed.to_string()),
        ("split_seed".into(), job.spec.data.split.seed.to_string()),
    ]);
    out.extend(job.params.iter().cloned());
    out
}

/// The arm's name as sweeps spell it (`baseline`, `dendritic`, ...).
fn variant_name(spec: &JobSpec) -> String {
    serde_json::to_value(spec.variant)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn metric(key: &str, value: f64, at: i64, step: usize) -> Metric {
    Metric {
        key: key.to_string(),
        value,
        timestamp: at,
        step: step as i64,
    }
}

/// An epoch's metrics, at step = epoch.
fn epoch_metrics(r: &EpochRecord, at: i64) -> Vec<Metric> {
    let s = r.epoch;
    vec![
        metric("train_loss", r.train_loss, at, s),
        metric("val_loss", r.val_loss, at, s),
        metric("val_accuracy", r.val_accuracy, at, s),
        metric("val_macro_f1", r.val_macro_f1, at, s),
        metric("lr", r.lr, at, s),
        metric("lr_max", r.lr_max, at, s),
        metric("dendrites", r.dendrites as f64, at, s),
        metric("dendrite_params", r.dendrite_params as f64, at, s),
        metric("epoch_seconds", r.seconds, at, s),
    ]
}

/// A finished run's scores (`metrics.json`), at step = its best epoch.
fn final_metrics(s: &RunSummary, at: i64) -> Vec<Metric> {
    let b = s.best_epoch;
    let mut m = vec![
        metric("test_accuracy", s.test.accuracy, at, b),
        metric("test_macro_f1", s.test.macro_f1, at, b),
        metric("test_weighted_f1", s.test.weighted_f1, at, b),
        metric("best_val_accuracy", s.val.accuracy, at, b),
        metric("best_val_macro_f1", s.val.macro_f1, at, b),
        metric("best_epoch", b as f64, at, b),
        metric("epochs_run", s.epochs_run as f64, at, b),
        metric("latency_b1_p50_ms", s.speed.latency_b1_p50_ms, at, b),
        metric("latency_b1_p95_ms", s.speed.latency_b1_p95_ms, at, b),
        metric("throughput_b64_per_s", s.speed.throughput_b64_per_s, at, b),
        metric("train_seconds", s.train_seconds, at, b),
        metric("trainable_params", s.trainable_params as f64, at, b),
        metric("final_dendrites", s.dendrites as f64, at, b),
    ];
    if let Some(k) = &s.knockout {
        m.push(metric("knockout_test_accuracy", k.test.accuracy, at, b));
        m.push(metric("knockout_test_macro_f1", k.test.macro_f1, at, b));
        if let Some(a) = &k.mean_ablated {
            m.push(metric("mean_ablated_test_accuracy", a.test.accuracy, at, b));
            m.push(metric("mean_ablated_test_macro_f1", a.test.macro_f1, at, b));
        }
    }
    m
}

/// A validation's scores (`validation.json`).
fn validation_metrics(v: &ValidationSummary, at: i64) -> Vec<Metric> {
    let p = if v.split == "test" { "test" } else { "val" };
    vec![
        metric(&format!("{p}_accuracy"), v.scores.accuracy, at, 0),
        metric(&format!("{p}_macro_f1"), v.scores.macro_f1, at, 0),
        metric("latency_b1_p50_ms", v.speed.latency_b1_p50_ms, at, 0),
        metric("latency_b1_p95_ms", v.speed.latency_b1_p95_ms, at, 0),
    ]
}

async fn end_run(client: &Mlflow, run: &RunInfo, end: &End, at: i64) -> Result<(), MlflowError> {
    let (status, outcome) = match end {
        End::Succeeded { files, link } => {
            let metrics = final_scores(files, at);
            let mut tags = vec![("outcome".to_string(), "succeeded".to_string())];
            if let Some(l) = link {
                tags.push(("artifacts".into(), l.clone()));
            }
            client.log_batch(&run.run_id, &metrics, &[], &tags).await?;
            for (name, bytes) in files {
                if bytes.len() > MAX_ARTIFACT_BYTES {
                    continue;
                }
                if !client.upload_artifact(run, name, bytes.clone()).await? {
                    break;
                }
            }
            return client
                .set_status(&run.run_id, RunStatus::Finished, Some(at))
                .await;
        }
        End::Failed(why) => (RunStatus::Failed, format!("failed: {why}")),
        End::Killed(why) => (RunStatus::Killed, format!("cancelled: {why}")),
        End::Retrying(why) => (RunStatus::Scheduled, format!("retrying: {why}")),
        End::Superseded => return Ok(()),
    };
    let outcome: String = outcome.chars().take(4000).collect();
    client
        .log_batch(&run.run_id, &[], &[], &[("outcome".into(), outcome)])
        .await?;
    let end_ms = (status != RunStatus::Scheduled).then_some(at);
    client.set_status(&run.run_id, status, end_ms).await
}

/// The scores among a finished job's files (`metrics.json` of a training,
/// `validation.json` of a validation).
fn final_scores(files: &[(String, Vec<u8>)], at: i64) -> Vec<Metric> {
    let find = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b);
    if let Some(s) = find(common::artifacts::files::METRICS_JSON)
        .and_then(|b| serde_json::from_slice::<RunSummary>(b).ok())
    {
        return final_metrics(&s, at);
    }
    find(common::artifacts::files::VALIDATION_JSON)
        .and_then(|b| serde_json::from_slice::<ValidationSummary>(b).ok())
        .map(|v| validation_metrics(&v, at))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_carry_the_flat_spec_and_the_comparison_ids_once() {
        let mut spec: JobSpec =
            toml::from_str("[model]\narch = \"bert\"\npath = \"/m\"\n[data]\npath = \"/d\"\n")
                .unwrap();
        spec.seed = 4;
        spec.data.split.seed = 2;
        let job = JobStart {
            sweep: "s".into(),
            job_id: "j".into(),
            config_hash: "abc".into(),
            spec,
            worker: "w".into(),
            attempt: 1,
            kind: "train",
            params: vec![],
        };
        let p = job_params(&job);
        let get = |k: &str| {
            p.iter()
                .filter(|(x, _)| x == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("seed"), vec!["4"]);
        assert_eq!(get("split_seed"), vec!["2"]);
        assert_eq!(get("data.split.seed"), vec!["2"]);
        assert_eq!(get("config_hash"), vec!["abc"]);
        assert_eq!(get("variant"), vec!["baseline"]);
        assert!(p.iter().any(|(k, _)| k == "train.lr"), "{p:?}");
    }
}
