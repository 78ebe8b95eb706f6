//! `worker run` end to end: a short real fine-tuning of MiniLM-L6 on
//! Financial PhraseBank, its artifacts, the skip of finished jobs, the
//! rejection of bad sweeps and missing data with clear messages, and a CPU
//! product library that would end the process skipped with a warning.

use std::process::Command;

use system_tests::{binary, repo_root, required_env};

fn sweep(name: &str, extra_train: &str, data_path: &str) -> String {
    let minilm = required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    format!(
        r#"
[sweep]
name = "{name}"

[base.model]
arch = "bert"
path = "{minilm}"
freeze = ["word_embeddings"]
max_len = 64

[base.data]
path = "{data_path}"

[base.train]
epochs = 1
batch_size = 32
lr = 1e-4
head_lr = 1e-3
{extra_train}
"#
    )
}

/// `worker run FILE --out OUT/runs`.
fn worker_run(file: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    Command::new(binary("worker"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out.join("runs").to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

fn fpb() -> String {
    required_env("FPB_DIR", "the Financial PhraseBank directory")
}

#[test]
fn short_training_run_produces_every_artifact() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("sweep.toml");
    std::fs::write(&file, sweep("e2e", "", &fpb())).unwrap();
    let run = || worker_run(&file, out.path());
    let o = run();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let sweep_dir = out.path().join("runs/sweeps/e2e");
    let jobs: Vec<_> = std::fs::read_dir(sweep_dir.join("jobs")).unwrap().collect();
    assert_eq!(jobs.len(), 1);
    let job = jobs[0].as_ref().unwrap().path();
    for f in [
        "Results.csv",
        "metrics.json",
        "spec.json",
        "history.csv",
        "training_curves.png",
        "confusion_matrix.png",
        "trained.safetensors",
    ] {
        assert!(job.join(f).is_file(), "missing {f}");
    }
    for png in ["training_curves.png", "confusion_matrix.png"] {
        let bytes = std::fs::read(job.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }

    // Results.csv: header + one row whose accuracy is real learning
    // (the majority class is 61% of the test split).
    let csv = std::fs::read_to_string(job.join("Results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    let acc: f64 = col("accuracy").parse().unwrap();
    assert!(acc > 0.85, "one epoch of fine-tuning reached only {acc}");
    assert_eq!(col("variant"), "baseline");
    assert_eq!(col("epochs"), "1");
    assert_eq!(col("total_params"), "22714371");

    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        metrics["data"]["unique"], 2259,
        "5 exact duplicates removed"
    );
    let sizes = metrics["split_sizes"].as_array().unwrap();
    let total: u64 = sizes.iter().map(|s| s.as_u64().unwrap()).sum();
    assert_eq!(total, 2259);
    assert_eq!(metrics["history"].as_array().unwrap().len(), 1);
    assert!(metrics["speed"]["latency_samples"].as_u64().unwrap() >= 50);
    assert!(metrics["speed"]["latency_b1_p50_ms"].as_f64().unwrap() > 0.0);
    let confusion_total: u64 = metrics["test"]["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()))
        .sum();
    assert_eq!(confusion_total, sizes[2].as_u64().unwrap());
    // What computed it: this machine's processor, a CPU product library
    // and the default thread count.
    let arithmetic = &metrics["arithmetic"];
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or(std::env::consts::ARCH, |(_, v)| v.trim());
    assert_eq!(arithmetic["cpu"], model);
    assert!(
        ["mkl", "openblas", "candle"].contains(&arithmetic["gemm"].as_str().unwrap()),
        "{arithmetic}"
    );
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().unwrap().get());
    assert_eq!(arithmetic["threads"], threads);

    // The trained parameters carry the spec that produced them.
    let bytes = std::fs::read(job.join("trained.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    let spec: serde_json::Value = serde_json::from_str(&meta["spec"]).unwrap();
    assert_eq!(spec["train"]["epochs"], 1);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.names().contains(&"classifier.weight"));
    assert!(
        !st.names().iter().any(|n| n.contains("word_embeddings")),
        "frozen weights are not saved"
    );

    // The sweep-level table and the skip of finished jobs.
    assert!(sweep_dir.join("Results.csv").is_file());
    let again = run();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already done"));
}

/// The three arms on a frozen, cached MiniLM body: the restart arm carries
/// out the dendritic arm's restructure (schedule restarted) without adding
/// a set, the dendritic run is also scored with its dendrites knocked out,
/// and the sweep report pairs the arms on (split seed, seed).
#[test]
fn arms_restart_without_sets_and_knock_out_dendrites() {
    let minilm = required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("arms.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[sweep]
name = "arms"
[base.model]
arch = "bert"
path = "{minilm}"
finetune = "head"
cache_features = true
max_len = 64
[base.data]
path = "{fpb}"
[base.train]
epochs = 3
batch_size = 32
lr = 2e-2
warmup = 0.3
[base.tracker]
mode = "fixed"
patience = 1
[base.dendrites]
targets = ["classifier", "pooler.dense"]
max = 1
[arms.baseline]
variant = "baseline"
[arms.dendritic]
variant = "dendritic"
[arms.gated-linear]
variant = "dendritic"
dendrites = {{ activation = "identity" }}
[arms.restart]
variant = "restart"
"#,
            fpb = fpb()
        ),
    )
    .unwrap();
    let o = worker_run(&file, out.path());
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let sweep_dir = out.path().join("runs/sweeps/arms");
    let job_of = |arm: &str| -> (std::path::PathBuf, serde_json::Value) {
        std::fs::read_dir(sweep_dir.join("jobs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find_map(|p| {
                let spec: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(p.join("spec.json")).unwrap())
                        .unwrap();
                (spec["spec"]["arm"] == arm).then_some((p, spec))
            })
            .unwrap_or_else(|| panic!("no {arm} run"))
    };
    let metrics = |arm: &str| -> serde_json::Value {
        let (job, _) = job_of(arm);
        serde_json::from_str(&std::fs::read_to_string(job.join("metrics.json")).unwrap()).unwrap()
    };
    let (base, dend, rest) = (
        metrics("baseline"),
        metrics("dendritic"),
        metrics("restart"),
    );
    let lr_max = |m: &serde_json::Value, e: usize| m["history"][e]["lr_max"].as_f64().unwrap();
    // Epoch 1 is the same phase everywhere; after the switch the restart and
    // dendritic arms warm up again to the peak while the baseline decays.
    assert_eq!(lr_max(&base, 0), lr_max(&rest, 0));
    assert!(lr_max(&rest, 1) > lr_max(&base, 1), "schedule restarted");
    assert_eq!(lr_max(&rest, 1), lr_max(&dend, 1));
    assert_eq!(rest["switch_epochs"][0], 1);
    assert_eq!(dend["switch_epochs"][0], 1);
    assert_eq!(rest["dendrites"], 0, "the restart arm adds no set");
    assert_eq!(rest["dendrite_params"], 0);
    assert_eq!(dend["history"][1]["dendrites"], 1);
    assert!(rest.get("knockout").is_none() && base.get("knockout").is_none());
    // The knock-out re-scores the same test sentences.
    let n_test = dend["split_sizes"][2].as_u64().unwrap() as usize;
    assert_eq!(dend["test_predictions"].as_array().unwrap().len(), n_test);
    assert_eq!(
        dend["knockout"]["test_predictions"]
            .as_array()
            .unwrap()
            .len(),
        n_test
    );
    // Mean ablation re-scores the same sentences too, and Results.csv
    // carries it and the arm under its name.
    let ablated = &dend["knockout"]["mean_ablated"];
    assert_eq!(
        ablated["test_predictions"].as_array().unwrap().len(),
        n_test
    );
    let (gated_dir, gated_spec) = job_of("gated-linear");
    assert_eq!(gated_spec["spec"]["variant"], "dendritic");
    assert_eq!(gated_spec["spec"]["dendrites"]["activation"], "identity");
    let rows = report::results::read(
        "Results.csv",
        &std::fs::read(gated_dir.join("Results.csv")).unwrap(),
    )
    .unwrap();
    assert_eq!(rows[0].arm, "gated-linear");
    let gated = metrics("gated-linear");
    let f1 = gated["knockout"]["mean_ablated"]["test"]["macro_f1"]
        .as_f64()
        .unwrap();
    assert!((rows[0].mean_ablated_macro_f1.unwrap() - f1).abs() < 1e-6);
    let report = std::fs::read_to_string(sweep_dir.join("report.md")).unwrap();
    for needle in [
        "| dendritic − restart (primary) | 1 |",
        "| restart − baseline | 1 |",
        "| dendritic − gated-linear | 1 |",
        "| dendritic − dendritic, mean-ablated | 1 |",
        "| gated-linear − gated-linear, knocked out | 1 |",
        "dendritic, knocked out",
    ] {
        assert!(report.contains(needle), "{needle}\n{report}");
    }
}

#[test]
fn invalid_sweep_is_rejected_before_anything_runs() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("bad.toml");
    let text = sweep("bad", "", &fpb()) + "\n[grid]\n\"train.epochs\" = [1, 0]\n";
    std::fs::write(&file, text).unwrap();
    let runs = out.path().join("runs");
    let o = Command::new(binary("worker"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            runs.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("train.epochs"),
        "{err}"
    );
    assert!(
        !runs.exists(),
        "nothing may be written for a rejected sweep"
    );
}

#[test]
fn missing_data_fails_the_job_naming_the_file() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("nodata.toml");
    std::fs::write(&file, sweep("nodata", "", "/nonexistent/fpb")).unwrap();
    let o = worker_run(&file, out.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/fpb"), "{err}");
}

#[test]
fn producer_expands_the_shipped_sweeps() {
    for (file, jobs) in [
        ("sweeps/quickstart.toml", 1),
        ("sweeps/phi2-fpb.toml", 1),
        ("sweeps/exp1-benchmark.toml", 36),
        ("sweeps/exp1-benchmark-phi2.toml", 45),
        ("sweeps/exp2-pai.toml", 36),
        ("sweeps/exp2-pai-phi2.toml", 45),
        ("sweeps/exp3-tune-branch.toml", 36),
        ("sweeps/exp3-tune-branch-phi2.toml", 12),
        ("sweeps/exp3-verdict.toml", 144),
        ("sweeps/exp4-adapted.toml", 36),
    ] {
        let o = Command::new(binary("producer"))
            .args(["expand", repo_root().join(file).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let listed = String::from_utf8_lossy(&o.stdout).lines().count();
        assert_eq!(listed, jobs, "{file}");
    }
}

/// `worker run` killed after its first epoch's checkpoint resumes there
/// when run again: it says so, trains the epochs left, and leaves no
/// checkpoint behind.
#[test]
fn a_killed_worker_run_resumes_after_its_last_epoch() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("sweep.toml");
    let minilm = required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    std::fs::write(
        &file,
        format!(
            "[sweep]\nname = \"again\"\n[base.model]\narch = \"bert\"\npath = \"{minilm}\"\nfinetune = \"head\"\nmax_len = 48\n\
             [base.data]\npath = \"{}\"\n[base.train]\nepochs = 3\nbatch_size = 32\nlr = 2e-2\n\
             [base.tracker]\nmode = \"never\"\n",
            fpb()
        ),
    )
    .unwrap();
    let jobs = out.path().join("runs/sweeps/again/jobs");
    let mut first = Command::new(binary("worker"))
        .args(["run", file.to_str().unwrap(), "--threads", "2", "--out"])
        .arg(out.path().join("runs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = || -> Option<std::path::PathBuf> {
        let job = std::fs::read_dir(&jobs).ok()?.next()?.ok()?.path();
        // The store writes a temporary file first, then renames it.
        std::fs::read_dir(job.join("checkpoint"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while checkpoint().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        assert!(first.try_wait().unwrap().is_none(), "the run ended first");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let o = worker_run(&file, out.path());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("resuming after epoch 1"), "{stdout}");
    let job = std::fs::read_dir(&jobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let m: common::summary::RunSummary =
        serde_json::from_slice(&std::fs::read(job.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m.resumed_after, Some(1));
    assert_eq!(
        m.history.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(checkpoint().is_none(), "the checkpoint is removed");
}

/// An MKL whose OpenMP runtime (`libiomp5`, pip's `intel-openmp`) is
/// missing ends the process at its first product ("symbol lookup error").
/// The worker skips it with a warning naming it and computes with the next
/// library. Built from the pip-installed MKL (its files linked into a
/// folder without `libiomp5`); where none is installed there is nothing to
/// break, and the test says so.
#[test]
fn an_mkl_without_its_openmp_runtime_is_skipped_not_fatal() {
    let prefix = Command::new("python3")
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .expect("python3");
    let lib = std::path::PathBuf::from(String::from_utf8_lossy(&prefix.stdout).trim()).join("lib");
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let mkl: Vec<_> = std::fs::read_dir(&lib)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|p| name(p).starts_with("libmkl_"))
        .collect();
    let Some(rt) = mkl
        .iter()
        .map(|p| name(p))
        .filter(|n| n.starts_with("libmkl_rt.so."))
        .max()
    else {
        eprintln!(
            "no pip-installed MKL under {}: nothing to test",
            lib.display()
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for p in &mkl {
        std::os::unix::fs::symlink(p, dir.path().join(name(p))).unwrap();
    }
    let chosen = dir.path().join(rt);
    let out = Command::new(binary("worker"))
        .args([
            "bench",
            "--arch",
            "phi",
            "--layers",
            "1",
            "--hidden",
            "64",
            "--heads",
            "2",
            "--intermediate",
            "128",
            "--batch",
            "2",
            "--seq",
            "8",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--latency-samples",
            "1",
            "--throughput-batch",
            "1",
            "--threads",
            "1",
        ])
        .env("WORKER_BLAS", &chosen)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("libiomp5") && err.contains(&*chosen.to_string_lossy()),
        "{err}"
    );
    let bench: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(bench["cpu_gemm"], "mkl", "{bench}");
}
