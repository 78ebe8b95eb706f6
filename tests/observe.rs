//! Where people look at jobs: MLflow runs (a real `mlflow server` with a
//! sqlite store, started on a free port) and the worker's Prometheus
//! `/metrics`, scraped while a real job trains and after it; and a tracker
//! that is down, which must never fail a job.

mod kit;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::summary::RunSummary;
use services::broker::Broker;
use services::mlflow::{Mlflow, Run};
use services::state::StateStore;
use system_tests::{binary, free_port, http_get, parse_metrics, required_env, start_mlflow};

/// A baseline and a dendritic MiniLM job (head trained on the frozen body,
/// 2 epochs, a dendrite set after epoch 1).
fn arms_sweep(dir: &std::path::Path, name: &str, cache: bool) -> std::path::PathBuf {
    let minilm = required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fpb = required_env("FPB_DIR", "the Financial PhraseBank directory");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[sweep]
name = "{name}"
[base.model]
arch = "bert"
path = "{minilm}"
finetune = "head"
cache_features = {cache}
max_len = 48
[base.data]
path = "{fpb}"
[base.train]
epochs = 2
batch_size = 32
lr = 2e-2
warmup = 0.3
[base.tracker]
mode = "fixed"
patience = 1
[base.dendrites]
targets = ["classifier", "pooler.dense"]
max = 1
[grid]
variant = ["baseline", "dendritic"]
"#
        ),
    )
    .unwrap();
    path
}

fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (status, body) = http_get(port, "/metrics").expect("the worker serves /metrics");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} not among the metrics: {m:#?}"))
}

/// The run of `job` in the experiment, and every point of `key` in it.
async fn run_of(client: &Mlflow, exp: &str, job: &str) -> Run {
    let runs = client
        .search_runs(exp, &format!("tags.job_id = '{job}'"))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "one MLflow run per job: {runs:#?}");
    runs.into_iter().next().unwrap()
}

/// `key`'s history in a run as (step, value), in step order.
async fn history(client: &Mlflow, run: &Run, key: &str) -> Vec<(i64, f64)> {
    let mut h: Vec<(i64, f64)> = client
        .metric_history(&run.info.run_id, key)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.step, m.value))
        .collect();
    h.sort_by(|a, b| a.partial_cmp(b).unwrap());
    h
}

/// A run's epoch curve in MLflow is the one in its `metrics.json`.
async fn assert_curves_match(client: &Mlflow, run: &Run, s: &RunSummary) {
    let expected: Vec<(i64, f64)> = s
        .history
        .iter()
        .map(|r| (r.epoch as i64, r.val_macro_f1))
        .collect();
    assert_eq!(history(client, run, "val_macro_f1").await, expected);
    let losses: Vec<(i64, f64)> = s
        .history
        .iter()
        .map(|r| (r.epoch as i64, r.train_loss))
        .collect();
    assert_eq!(history(client, run, "train_loss").await, losses);
    assert_eq!(run.data.metric("test_macro_f1"), Some(s.test.macro_f1));
    assert_eq!(run.data.metric("test_accuracy"), Some(s.test.accuracy));
    assert_eq!(
        run.data.metric("latency_b1_p50_ms"),
        Some(s.speed.latency_b1_p50_ms)
    );
    assert_eq!(run.data.param("config_hash"), Some(s.config_hash.as_str()));
    assert_eq!(run.info.status, "FINISHED");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_tracks_jobs_in_mlflow_and_exposes_prometheus_metrics() {
    let s = kit::setup("observe");
    let mlflow_dir = tempfile::tempdir().unwrap();
    let mlflow_port = free_port();
    let _mlflow = start_mlflow(mlflow_port, mlflow_dir.path());
    let uri = format!("http://127.0.0.1:{mlflow_port}");
    let metrics_port = free_port();
    let name = format!("{}-arms", s.ns);
    let file = arms_sweep(s.dir.path(), &name, false);
    let jobs: Vec<(String, String)> = common::sweep::Sweep::load(&file)
        .unwrap()
        .jobs
        .iter()
        .map(|j| (j.id.clone(), j.config_hash.clone()))
        .collect();
    let _w = kit::worker_with(
        &s,
        "w1",
        "cpu",
        &[
            "--mlflow-uri",
            &uri,
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    kit::submit(&s, &file);
    let state = StateStore::connect(kit::REDIS, &s.ns).await.unwrap();

    // While the first job trains.
    kit::wait_for(&state, &jobs[0].0, 300, kit::training).await;
    let live = scrape(metrics_port);
    assert_eq!(value(&live, "fpb_worker_jobs_running"), 1.0);
    assert!(value(&live, "fpb_worker_training_steps_total") >= 1.0);
    assert!(
        value(
            &live,
            "fpb_worker_training_samples_per_second{device=\"cpu\"}"
        ) > 0.0
    );
    let used = value(
        &live,
        "fpb_worker_device_memory_bytes{device=\"cpu\",kind=\"used\"}",
    );
    let total = value(
        &live,
        "fpb_worker_device_memory_bytes{device=\"cpu\",kind=\"total\"}",
    );
    assert!(used > 100e6 && used < total, "{used} of {total}");

    let mut records = HashMap::new();
    for (job, _) in &jobs {
        let h = kit::wait_for(&state, job, 900, |h| {
            h.get("state").map(String::as_str) == Some("succeeded")
        })
        .await;
        records.insert(job.clone(), h);
    }
    let services = common::config::Services::from_lookup(|k| s.env.get(k).cloned()).unwrap();
    let s3 = services::artifacts::Artifacts::s3(services.s3.as_ref().unwrap()).unwrap();
    let mut summaries = HashMap::new();
    for (job, _) in &jobs {
        let key = format!("{}/metrics.json", records[job]["artifacts"]);
        let bytes = s3.get(&key).await.unwrap();
        let summary: RunSummary = serde_json::from_slice(&bytes).unwrap();
        summaries.insert(job.clone(), summary);
    }

    // Prometheus after both jobs: the counts are the runs' own.
    let done = scrape(metrics_port);
    assert_eq!(value(&done, "fpb_worker_jobs_running"), 0.0);
    assert_eq!(
        value(&done, "fpb_worker_jobs_total{outcome=\"succeeded\"}"),
        2.0
    );
    let steps: usize = summaries.values().map(|s| s.optimizer_steps).sum();
    let epochs: usize = summaries.values().map(|s| s.epochs_run).sum();
    assert_eq!(
        value(&done, "fpb_worker_training_steps_total"),
        steps as f64
    );
    assert_eq!(
        value(&done, "fpb_worker_training_samples_total"),
        (steps * 32) as f64
    );
    assert_eq!(
        value(&done, "fpb_worker_epoch_seconds_count"),
        epochs as f64
    );
    let epoch_secs: f64 = summaries
        .values()
        .flat_map(|s| s.history.iter().map(|r| r.seconds))
        .sum();
    assert!((value(&done, "fpb_worker_epoch_seconds_sum") - epoch_secs).abs() < 1e-6);
    assert!(value(&done, "fpb_worker_lease_renewals_total{result=\"renewed\"}") >= 1.0);
    assert_eq!(value(&done, "fpb_worker_upload_retries_total"), 0.0);

    // MLflow: one run per job in the sweep's experiment, with its curves.
    let client = Mlflow::new(&uri, Duration::from_secs(30)).unwrap();
    let exp = client.experiment_id(&name).await.unwrap();
    assert_eq!(client.search_runs(&exp, "").await.unwrap().len(), 2);
    for (job, hash) in &jobs {
        let run = run_of(&client, &exp, job).await;
        let summary = &summaries[job];
        assert_curves_match(&client, &run, summary).await;
        assert_eq!(run.data.param("config_hash"), Some(hash.as_str()));
        assert_eq!(run.data.tag("worker"), Some("w1"));
        assert_eq!(run.data.tag("attempt"), Some("1"));
        assert_eq!(
            run.data.tag("artifacts").map(String::from),
            Some(format!("s3://runs/{}", records[job]["artifacts"]))
        );
        let files = client.list_artifacts(&run.info.run_id).await.unwrap();
        for f in ["metrics.json", "Results.csv", "trained.safetensors"] {
            assert!(files.iter().any(|p| p == f), "{f} not in {files:?}");
        }
        let variant = run.data.param("variant").unwrap();
        let dendrites = history(&client, &run, "dendrites").await;
        if variant == "dendritic" {
            assert!(summary.dendrites > 0, "{summary:?}");
            assert_eq!(
                dendrites.last().map(|d| d.1),
                Some(summary.dendrites as f64)
            );
            assert_eq!(
                run.data.metric("knockout_test_macro_f1"),
                summary.knockout.as_ref().map(|k| k.test.macro_f1)
            );
            // The PAI figures are a folder of the run.
            assert!(files.iter().any(|p| p == "PAI"), "{files:?}");
        } else {
            assert_eq!(variant, "baseline");
            assert!(dendrites.iter().all(|d| d.1 == 0.0), "{dendrites:?}");
        }
    }

    let broker = Broker::connect(
        kit::AMQP,
        common::queue::Topology::new(&s.ns),
        services.delivery_limit,
    )
    .await
    .unwrap();
    // The audit: each job succeeded once, on w1, at attempt 1, with its
    // files in the one attempt folder Redis points at; no queue holds a
    // message.
    assert_eq!(kit::succeeded_events(&state, &name, 2).await, 2);
    kit::queues_drain(&broker.topology.prefix, None).await;
    for (job, _) in &jobs {
        let h = state.job(job).await.unwrap();
        assert_eq!(
            (
                h["state"].as_str(),
                h["worker"].as_str(),
                h["attempt"].as_str()
            ),
            ("succeeded", "w1", "1"),
            "{h:?}"
        );
        let folder = &h["artifacts"];
        let keys = s3
            .list(&common::artifacts::job_prefix(&name, job))
            .await
            .unwrap();
        assert!(
            keys.iter().all(|k| k.starts_with(&format!("{folder}/"))),
            "files outside the recorded attempt folder: {keys:?}"
        );
        for f in report::sweep::RUN_FILES
            .iter()
            .chain(&[common::artifacts::files::TRAINED_SAFETENSORS])
        {
            assert!(
                keys.contains(&format!("{folder}/{f}")),
                "{f} missing from {keys:?}"
            );
        }
    }
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// `worker run` with an MLflow address; `flush` seconds to catch up.
fn run_tracked(file: &std::path::Path, out: &std::path::Path, uri: &str, flush: u64) -> Command {
    let mut c = Command::new(binary("worker"));
    c.args([
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
        "--threads",
        "2",
        "--mlflow-uri",
        uri,
        "--mlflow-flush-secs",
        &flush.to_string(),
    ]);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tracker_that_is_down_never_fails_a_job_and_reruns_keep_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let name = format!("test-down-{}", std::process::id());
    let file = arms_sweep(dir.path(), &name, true);
    let port = free_port();
    let uri = format!("http://127.0.0.1:{port}");

    // Nothing listens: the jobs succeed, the tracking is given up.
    let o = run_tracked(&file, &out, &uri, 2).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("MLflow out of reach"), "{err}");
    assert!(err.contains("tracking is dropped"), "{err}");

    // The tracker comes up while the jobs run: every event arrives.
    let mut child = run_tracked(&file, &out, &uri, 180)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in lines.map_while(Result::ok) {
            if l.contains("MLflow out of reach") {
                let _ = tx.send(());
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the worker reports MLflow out of reach");
    let mlflow_dir = tempfile::tempdir().unwrap();
    let _mlflow = start_mlflow(port, mlflow_dir.path());
    let started = Instant::now();
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(status.success(), "{err}");
    eprintln!("jobs ended {:?} after MLflow came up", started.elapsed());

    let client = Mlflow::new(&uri, Duration::from_secs(30)).unwrap();
    let exp = client.experiment_id(&name).await.unwrap();
    let sweep = common::sweep::Sweep::load(&file).unwrap();
    let summary = |job: &str| -> RunSummary {
        let p = out
            .join(common::artifacts::job_prefix(&name, job))
            .join("metrics.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    for j in &sweep.jobs {
        let run = run_of(&client, &exp, &j.id).await;
        assert_curves_match(&client, &run, &summary(&j.id)).await;
    }

    // A rerun of the same jobs carries on in the same runs.
    let o = run_tracked(&file, &out, &uri, 180).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        client.search_runs(&exp, "").await.unwrap().len(),
        sweep.jobs.len()
    );
    for j in &sweep.jobs {
        let run = run_of(&client, &exp, &j.id).await;
        let s = summary(&j.id);
        assert_eq!(run.info.status, "FINISHED");
        assert_eq!(run.data.metric("test_macro_f1"), Some(s.test.macro_f1));
        // Both runs' epochs are in the history.
        assert_eq!(
            history(&client, &run, "val_macro_f1").await.len(),
            2 * s.epochs_run
        );
    }
}
