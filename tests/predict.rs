//! `worker predict` end to end: a short dendritic MiniLM run (frozen,
//! cached body; dendrites in the pooler and the classifier) labels its own
//! test sentences exactly as the run scored them, from its folder and from
//! S3; a folder without trained parameters, another base model and a run
//! saved before base models were recorded are handled with clear messages.
//! (LoRA merging is checked in process by `worker/tests/classify.rs`.)

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::summary::{RunSummary, SpecFile};
use system_tests::{binary, free_port, repo_root, required_env, start_moto};

/// `worker predict ARGS` with extra environment and optional stdin.
fn predict(args: &[&str], env: &[(&str, String)], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary("worker"))
        .arg("predict")
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// One output line.
struct Line {
    text: String,
    label: String,
    probs: Vec<f64>,
}

const LABELS: [&str; 3] = ["negative", "neutral", "positive"];

/// Parses predict's output, checking each line's form: three
/// probabilities summing to 1 whose largest is the label.
fn lines(o: &Output) -> Vec<Line> {
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let probs: Vec<f64> = LABELS
                .iter()
                .map(|k| v["probabilities"][k].as_f64().unwrap())
                .collect();
            assert_eq!(v["probabilities"].as_object().unwrap().len(), 3, "{l}");
            let sum: f64 = probs.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{l}");
            let label = v["label"].as_str().unwrap().to_string();
            let argmax = (0..3).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
            assert_eq!(LABELS[argmax], label, "{l}");
            Line {
                text: v["text"].as_str().unwrap().to_string(),
                label,
                probs,
            }
        })
        .collect()
}

/// The same labels, and probabilities equal up to batching's rounding.
fn assert_same(a: &[Line], b: &[Line]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.text, &x.label), (&y.text, &y.label));
        for (p, q) in x.probs.iter().zip(&y.probs) {
            assert!(
                (p - q).abs() < 1e-4,
                "{}: {:?} vs {:?}",
                x.text,
                x.probs,
                y.probs
            );
        }
    }
}

/// Copies `trained.safetensors` to `to` with the metadata key `drop` left out.
fn without_metadata(from: &Path, to: &Path, drop: &str) {
    let bytes = std::fs::read(from).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = header.metadata().clone().unwrap();
    assert!(meta.remove(drop).is_some(), "no {drop} recorded");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let out = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
    std::fs::write(to, out).unwrap();
}

/// The run every test reads: trained once per test process, under the
/// target folder's scratch space, with its test sentences and what
/// `worker predict` prints for them from the run's folder.
struct Fixture {
    job: PathBuf,
    scratch: PathBuf,
    metrics: RunSummary,
    sentences: Vec<String>,
    file: PathBuf,
    local: Vec<Line>,
}

fn fixture() -> &'static Fixture {
    static RUN: OnceLock<Fixture> = OnceLock::new();
    RUN.get_or_init(|| {
        let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("predict");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        let job = trained_run(&scratch);
        let metrics: RunSummary =
            serde_json::from_slice(&std::fs::read(job.join("metrics.json")).unwrap()).unwrap();
        let spec: SpecFile =
            serde_json::from_slice(&std::fs::read(job.join("spec.json")).unwrap()).unwrap();
        // The run's test sentences, split again from its spec.
        let (split, _) = worker::engine::load::load_splits(&spec.spec).unwrap();
        let gold: Vec<usize> = split.test.iter().map(|e| e.label).collect();
        assert_eq!(gold, metrics.test_labels, "the same test split");
        let sentences: Vec<String> = split.test.into_iter().map(|e| e.text).collect();
        let file = scratch.join("test.txt");
        std::fs::write(&file, sentences.join("\n") + "\n").unwrap();
        let local = lines(&predict(
            &[
                "--run",
                job.to_str().unwrap(),
                "--file",
                file.to_str().unwrap(),
                "--threads",
                "2",
            ],
            &[],
            None,
        ));
        Fixture {
            job,
            scratch,
            metrics,
            sentences,
            file,
            local,
        }
    })
}

fn trained_run(out: &Path) -> PathBuf {
    let minilm = required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fpb = required_env("FPB_DIR", "the Financial PhraseBank directory");
    let file = out.join("predict.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[sweep]
name = "predict"
[base.model]
arch = "bert"
path = "{minilm}"
finetune = "head"
cache_features = true
max_len = 64
[base.data]
path = "{fpb}"
[base.train]
epochs = 2
batch_size = 32
lr = 2e-2
schedule = "constant"
warmup = 0.0
[base.tracker]
# Smoke mode: one dendrite set after epoch 1, kept to the end.
testing_capacity = true
[base.dendrites]
targets = ["classifier", "pooler.dense"]
max = 1
init_scale = 0.1
[grid]
variant = ["dendritic"]
"#
        ),
    )
    .unwrap();
    let o = Command::new(binary("worker"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out.join("runs").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let jobs: Vec<PathBuf> = std::fs::read_dir(out.join("runs/sweeps/predict/jobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(jobs.len(), 1);
    jobs[0].clone()
}

/// From the run's folder, the test sentences get the run's own labels, in
/// input order; the dendrites the run kept take part.
#[test]
fn the_runs_test_sentences_get_the_runs_labels() {
    let f = fixture();
    assert_eq!(f.metrics.dendrites, 1, "the kept network has its dendrites");
    // Without its dendrites the network labels some sentences otherwise: a
    // load that lost them would show below.
    let knockout = f.metrics.knockout.as_ref().unwrap();
    assert_ne!(knockout.test_predictions, f.metrics.test_predictions);
    assert_eq!(f.local.len(), f.sentences.len());
    for (l, s) in f.local.iter().zip(&f.sentences) {
        assert_eq!(&l.text, s);
    }
    let labels: Vec<usize> = f
        .local
        .iter()
        .map(|l| LABELS.iter().position(|x| *x == l.label).unwrap())
        .collect();
    assert_eq!(labels, f.metrics.test_predictions);
}

#[test]
fn a_folder_without_trained_parameters_is_named_with_what_it_holds() {
    let f = fixture();
    let partial = f.scratch.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for name in ["metrics.json", "spec.json"] {
        std::fs::copy(f.job.join(name), partial.join(name)).unwrap();
    }
    let o = predict(
        &["--run", partial.to_str().unwrap(), "--text", "Sales rose."],
        &[],
        None,
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{} is not a complete run: trained.safetensors is missing (it holds metrics.json, spec.json)",
            partial.display()
        )),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

/// Another base model is refused before anything is built, naming the run,
/// the model it was trained on and the one found.
#[test]
fn another_base_model_is_refused() {
    let f = fixture();
    let run = f.job.to_str().unwrap();
    let tiny = repo_root().join("tests/fixtures/tiny-bert");
    let tiny = tiny.to_str().unwrap();
    let o = predict(
        &["--run", run, "--model-dir", tiny, "--text", "Sales rose."],
        &[],
        None,
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    for needle in [
        &format!("{run} was trained on another model"),
        "hidden 384, 6 layers, vocab 30522",
        &format!("but {tiny} holds tiny-bert (bert, hidden 16, 2 layers, vocab 128"),
        "the weights and tokenizer differ",
        "--model-dir",
    ] {
        assert!(err.contains(needle), "{needle}\n{err}");
    }
    assert!(o.stdout.is_empty());
}

/// A run saved before the base model was recorded still loads on its own
/// model (its tensors checked by name and shape) and is refused on
/// another.
#[test]
fn a_run_without_a_recorded_base_model_is_checked_by_its_tensors() {
    let f = fixture();
    let old = f.scratch.join("old");
    std::fs::create_dir_all(&old).unwrap();
    without_metadata(
        &f.job.join("trained.safetensors"),
        &old.join("trained.safetensors"),
        "base_model",
    );
    let old = old.to_str().unwrap();
    let tiny = repo_root().join("tests/fixtures/tiny-bert");
    let o = predict(
        &[
            "--run",
            old,
            "--model-dir",
            tiny.to_str().unwrap(),
            "--text",
            "x",
        ],
        &[],
        None,
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{old}: its trained parameters do not fit the model in"
        )) && err.contains("classifier.weight")
            && err.contains("tiny-bert"),
        "{err}"
    );
    let mut args = vec!["--run", old];
    for s in &f.sentences[..3] {
        args.extend(["--text", s.as_str()]);
    }
    let o = predict(&args, &[], None);
    assert!(
        text(&o.stderr).contains("records no base model"),
        "{}",
        text(&o.stderr)
    );
    assert_same(&lines(&o), &f.local[..3]);
}

/// The run stored as a job's attempt, as `worker serve` stores it, predicts
/// the same from S3 (sentences from standard input); the job folder above
/// the attempt says which attempt to take.
#[test]
fn a_run_in_s3_predicts_the_same() {
    let f = fixture();
    let port = free_port();
    let _moto = start_moto(port, "runs");
    let endpoint = format!("http://127.0.0.1:{port}");
    let s3 = [
        ("AWS_ENDPOINT", endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        // The address names the bucket and the key: these do not apply.
        ("AWS_BUCKET", "elsewhere".to_string()),
        ("ARTIFACT_PREFIX", "nowhere".to_string()),
    ];
    let cfg = common::config::S3Config {
        endpoint: Some(endpoint),
        bucket: "runs".into(),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some(common::config::Secret::new("test")),
        allow_http: true,
        prefix: "exp".into(),
    };
    let store = services::artifacts::Artifacts::s3(&cfg).unwrap();
    let folder = "sweeps/predict/jobs/j/attempt-1-g1-w1";
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.put_dir(folder, &f.job))
        .unwrap();
    let uri = format!("s3://runs/exp/{folder}");
    let input = std::fs::read_to_string(&f.file).unwrap();
    let from_s3 = lines(&predict(&["--run", &uri, "--file", "-"], &s3, Some(&input)));
    assert_same(&from_s3, &f.local);

    let job = "s3://runs/exp/sweeps/predict/jobs/j";
    let o = predict(&["--run", job, "--text", "x"], &s3, None);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("{job} is not a complete run"))
            && err.contains("attempt-1-g1-w1 (pass one of them as --run)"),
        "{err}"
    );
}
