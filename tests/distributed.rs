//! The distributed path end to end on the real services: `producer submit`
//! puts a sweep of small real training jobs on RabbitMQ, one `worker serve`
//! process with two CPU slots runs them, state goes to Redis, artifacts to
//! an S3 server (moto_server on a free port). A malformed message on the
//! same queue is dead-lettered with its reason while the worker goes on.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::job::DeviceClass;
use common::queue::Topology;
use common::state::JobState;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use services::broker::{header, Broker, REASON_HEADER};
use services::state::StateStore;
use system_tests::{binary, free_port, required_env, start_moto, Killed};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379";

fn env(ns: &str, port: u16) -> HashMap<String, String> {
    HashMap::from([
        ("AMQP_URL".into(), AMQP.into()),
        ("REDIS_URL".into(), REDIS.into()),
        ("QUEUE_PREFIX".into(), ns.into()),
        ("AWS_BUCKET".into(), "runs".into()),
        ("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ])
}

fn producer(env: &HashMap<String, String>, args: &[&str]) -> (bool, String) {
    let o = Command::new(binary("producer"))
        .args(args)
        .envs(env)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_runs_across_two_slots_and_malformed_messages_are_dead_lettered() {
    let minilm = required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fpb = required_env("FPB_DIR", "the Financial PhraseBank directory");
    let ns = format!("test-dist-{}", std::process::id());
    let port = free_port();
    let _moto = start_moto(port, "runs");
    let env = env(&ns, port);
    let broker = Broker::connect(AMQP, Topology::new(&ns), 3).await.unwrap();
    let state = StateStore::connect(REDIS, &ns).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("dist.toml");
    std::fs::write(
        &sweep,
        format!(
            r#"
[sweep]
name = "dist"
[base.model]
arch = "bert"
path = "{minilm}"
finetune = "head"
max_len = 48
[base.data]
path = "{fpb}"
[base.train]
epochs = 2
batch_size = 64
lr = 2e-2
schedule = "constant"
warmup = 0.0
[base.tracker]
# Smoke mode: one dendrite set after epoch 1, kept to the end.
testing_capacity = true
test_every_epoch = false
[base.dendrites]
targets = ["classifier"]
max = 1
[grid]
variant = ["baseline", "dendritic"]
seed = [0, 1]
"#
        ),
    )
    .unwrap();

    // A malformed message naming one of the sweep's jobs waits on the queue
    // before the sweep is submitted: it is not trusted to name a job, so it
    // must not change that job's state.
    let victim = common::sweep::Sweep::load(&sweep).unwrap().jobs[0]
        .id
        .clone();
    let malformed = format!("{{\"version\": 1, \"job_id\": \"{victim}\", \"oops\": true}}");
    broker
        .publish_raw(DeviceClass::Cpu, malformed.as_bytes())
        .await
        .unwrap();

    let (ok, out) = producer(
        &env,
        &["submit", sweep.to_str().unwrap(), "--device", "cpu"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("4 job(s) queued"), "{out}");
    let (_, out) = producer(&env, &["status", "dist"]);
    assert!(out.contains("no live worker serves it"), "{out}");

    let worker = Killed(
        Command::new(binary("worker"))
            .args([
                "serve",
                "--devices",
                "cpu,cpu",
                "--worker-id",
                "w1",
                "--threads",
                "1",
                "--lease-secs",
                "10",
                "--heartbeat-secs",
                "2",
            ])
            .envs(&env)
            // Shells rarely export it: the worker finds the name itself.
            .env_remove("HOSTNAME")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // The malformed message lands in the dead letters with its reason.
    let (_ch, mut dead) = broker.consume_dead("test-dead").await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(120), dead.next())
        .await
        .expect("a dead letter within 2 minutes")
        .unwrap()
        .unwrap();
    let reason = header(&d.properties, REASON_HEADER).unwrap();
    assert!(
        reason.contains("job_id") || reason.contains("missing field"),
        "{reason}"
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
    // It recorded nothing for the job it named (dead-lettering happens
    // after any record, so the state is final for this message here).
    let victim_state = state.state(&victim).await.unwrap();
    assert_ne!(
        victim_state,
        Some(JobState::Dead),
        "a malformed message marked {victim} dead"
    );

    // Every job succeeds exactly once.
    let deadline = Instant::now() + Duration::from_secs(900);
    let jobs = state.sweep_jobs("dist").await.unwrap();
    assert_eq!(jobs.len(), 4);
    loop {
        let mut done = 0;
        for j in &jobs {
            let h = state.job(j).await.unwrap();
            let st = h.get("state").cloned().unwrap_or_default();
            assert!(
                !["failed", "dead", "cancelled"].contains(&st.as_str()),
                "{j}: {h:?}"
            );
            if st == "succeeded" {
                done += 1;
            }
        }
        if done == jobs.len() {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not finish in time");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut workers_used = std::collections::HashSet::new();
    for j in &jobs {
        let h = state.job(j).await.unwrap();
        assert_eq!(h["attempt"], "1", "{j}");
        assert!(h["artifacts"].ends_with("/attempt-1-g1-w1"), "{h:?}");
        workers_used.insert(h["device"].clone());
        assert!(h.contains_key("val_accuracy"), "progress recorded: {h:?}");
    }
    // A finished job's record and `status` show what its metrics.json says.
    let services = common::config::Services::from_lookup(|k| env.get(k).cloned()).unwrap();
    let s3 = services::artifacts::Artifacts::s3(services.s3.as_ref().unwrap()).unwrap();
    let (_, status) = producer(&env, &["status", "dist"]);
    for j in &jobs {
        let h = state.job(j).await.unwrap();
        let m: common::summary::RunSummary = serde_json::from_slice(
            &s3.get(&format!("{}/metrics.json", h["artifacts"]))
                .await
                .unwrap(),
        )
        .unwrap();
        let f1 = format!("{:.4}", m.test.macro_f1);
        assert_eq!(h["test_macro_f1"], f1, "{h:?}");
        assert_eq!(h["test_accuracy"], format!("{:.4}", m.test.accuracy));
        let epochs = format!("{} (best {})", m.epochs_run, m.best_epoch);
        let row = status.lines().find(|l| l.contains(j.as_str())).unwrap();
        assert!(row.contains(&epochs) && row.contains(&f1), "{row}");
    }
    // The events follow the state changes by a few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let succeeded = loop {
        let n = state
            .events("dist", "0")
            .await
            .unwrap()
            .iter()
            .filter(|(_, e)| e.get("state").map(String::as_str) == Some("succeeded"))
            .count();
        if n >= 4 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(succeeded, 4);

    // Artifacts, report and fetch.
    let (ok, out) = producer(
        &env,
        &[
            "report",
            "dist",
            "--out",
            dir.path().join("rep").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let md = std::fs::read_to_string(dir.path().join("rep/dist/report.md")).unwrap();
    assert!(
        md.contains("| baseline | 2 |") && md.contains("| dendritic | 2 |"),
        "{md}"
    );
    assert!(md.contains("| dendritic − baseline | 2 |"), "{md}");
    let (ok, out) = producer(
        &env,
        &[
            "fetch",
            "dist",
            "--out",
            dir.path().join("f").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let fetched = dir.path().join("f/sweeps/dist");
    assert!(fetched.join("report.md").is_file());
    assert!(fetched.join("Accuracy_Improvement.png").is_file());
    let dendritic = jobs
        .iter()
        .find(|j| j.contains("-001-") || j.contains("-003-"))
        .unwrap();
    let h = state.job(dendritic).await.unwrap();
    assert!(
        dir.path()
            .join("f")
            .join(&h["artifacts"])
            .join("PAI/PAI.png")
            .is_file(),
        "{h:?}"
    );

    // A validate job reloads the trained parameters (dendrites included)
    // and reproduces the run's test scores exactly.
    let (ok, out) = producer(
        &env,
        &["validate", dendritic, "--split", "test", "--device", "cpu"],
    );
    assert!(ok, "{out}");
    let vjob = format!("{dendritic}-validate-test");
    let deadline = Instant::now() + Duration::from_secs(600);
    let vh = loop {
        let vh = state.job(&vjob).await.unwrap();
        match vh.get("state").map(String::as_str) {
            Some("succeeded") => break vh,
            Some("failed") | Some("dead") => panic!("{vh:?}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "validation did not finish");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let (ok, _) = producer(
        &env,
        &[
            "fetch",
            "dist",
            "--out",
            dir.path().join("f2").to_str().unwrap(),
        ],
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("f2")
                .join(&vh["artifacts"])
                .join("validation.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("f2")
                .join(&h["artifacts"])
                .join("metrics.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(v["scores"]["accuracy"], m["test"]["accuracy"], "{v} vs {m}");
    assert_eq!(v["scores"]["confusion"], m["test"]["confusion"]);
    assert_eq!(v["dendrites"], 1, "the dendrite set is reloaded");
    assert_eq!(m["dendrites"], 1);

    // Re-submitting skips what succeeded.
    let (ok, out) = producer(
        &env,
        &["submit", sweep.to_str().unwrap(), "--device", "cpu"],
    );
    assert!(ok && out.contains("0 job(s) queued, 4 skipped"), "{out}");
    let (_, out) = producer(&env, &["workers"]);
    assert!(out.contains("w1") && out.contains("cpu,cpu"), "{out}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(out.contains(host.trim()), "the worker's host in {out}");

    drop(worker);
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// The producer stopped between registering a job and publishing it: the
/// job is `queued` in Redis and its message is nowhere. Submitting the sweep
/// again publishes it (it used to be skipped as queued, for good); once the
/// broker has confirmed it, a further submit skips it.
#[tokio::test(flavor = "multi_thread")]
async fn resubmit_publishes_a_job_registered_but_never_published() {
    let ns = format!("test-unpub-{}", std::process::id());
    let env = env(&ns, free_port());
    let topology = Topology::new(&ns);
    let broker = Broker::connect(AMQP, topology.clone(), 3).await.unwrap();
    let state = StateStore::connect(REDIS, &ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("unpub.toml");
    std::fs::write(
        &sweep,
        "[sweep]\nname = \"unpub\"\n[base.model]\narch = \"bert\"\npath = \"/m\"\n[base.data]\npath = \"/d\"\n",
    )
    .unwrap();
    let job = common::sweep::Sweep::load(&sweep).unwrap().jobs[0]
        .id
        .clone();
    // What a producer that stopped right after registering leaves behind.
    state
        .register_job("unpub", &job, &[("published_at", String::new())])
        .await
        .unwrap();

    let submit = || {
        producer(
            &env,
            &["submit", sweep.to_str().unwrap(), "--device", "cpu"],
        )
    };
    let (ok, out) = submit();
    assert!(ok, "{out}");
    assert!(out.contains("1 job(s) queued, 0 skipped"), "{out}");

    // Audit: queued and confirmed in Redis, exactly its one message on the
    // jobs queue, nothing in the retry or dead-letter queues.
    assert_eq!(state.state(&job).await.unwrap(), Some(JobState::Queued));
    assert!(state.published(&job).await.unwrap());
    let jobs_queue = topology.jobs_queue(DeviceClass::Cpu);
    assert_eq!(broker.queue_counts(&jobs_queue).await.unwrap().0, 1);
    let (ch, mut consumer) = broker
        .consume(DeviceClass::Cpu, "test-unpub")
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the message within 10 s")
        .unwrap()
        .unwrap();
    let msg = common::job::JobMessage::decode(&d.data).unwrap();
    assert_eq!(msg.job_id, job);
    d.ack(BasicAckOptions::default()).await.unwrap();
    ch.close(200, "done".into()).await.unwrap();
    assert_eq!(
        system_tests::queued_messages(&ns, None),
        vec![],
        "messages left in the namespace's queues"
    );

    // Confirmed now: the next submit leaves it alone.
    let (ok, out) = submit();
    assert!(ok, "{out}");
    assert!(out.contains("0 job(s) queued, 1 skipped"), "{out}");
    assert_eq!(broker.queue_counts(&jobs_queue).await.unwrap().0, 0);

    // Its message is gone (consumed above, as a broker that lost it would
    // leave it): `retry --stuck` publishes it again, as no worker holds it.
    let sweep_name = common::sweep::Sweep::load(&sweep).unwrap().name;
    let (ok, out) = producer(&env, &["retry", &sweep_name, "--stuck"]);
    assert!(
        ok && out.contains("1 stuck job(s) published again"),
        "{out}"
    );
    assert_eq!(broker.queue_counts(&jobs_queue).await.unwrap().0, 1);
    assert_eq!(state.state(&job).await.unwrap(), Some(JobState::Queued));

    // A misspelt sweep is an error naming it and the sweep it resembles,
    // for every command that takes one; nothing changes.
    for args in [
        &["status", "unpbu"][..],
        &["cancel", "unpbu"],
        &["retry", "unpbu"],
        &["report", "unpbu"],
    ] {
        let (ok, out) = producer(&env, args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            out.contains("\"unpbu\"") && out.contains("did you mean unpub?"),
            "{args:?}: {out}"
        );
    }
    assert_eq!(state.state(&job).await.unwrap(), Some(JobState::Queued));
    assert_eq!(broker.queue_counts(&jobs_queue).await.unwrap().0, 1);

    state.delete_namespace().await.unwrap();
    broker.delete_topology().await.unwrap();
}

/// One machine without a cloud: no bucket configured, so producer and
/// worker keep the artifacts in a local folder (`ARTIFACTS`, which their
/// `--artifacts` flag overrides: here the environment names a folder that
/// must stay empty); a two-job sweep runs through `worker serve` and
/// `producer report` draws its report from that folder. Audit: both jobs succeeded once, every run file in its
/// attempt folder, the namespace's queues empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_runs_with_rabbitmq_and_redis_only() {
    let ns = format!("test-local-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("artifacts");
    let overridden = dir.path().join("not-this-one");
    let env = HashMap::from([
        ("AMQP_URL".to_string(), AMQP.to_string()),
        ("REDIS_URL".into(), REDIS.into()),
        ("QUEUE_PREFIX".into(), ns.clone()),
        ("ARTIFACTS".into(), overridden.display().to_string()),
    ]);
    let flag = ["--artifacts", store.to_str().unwrap()];
    let minilm = system_tests::required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fpb = system_tests::required_env("FPB_DIR", "the Financial PhraseBank directory");
    let sweep = dir.path().join("local.toml");
    std::fs::write(
        &sweep,
        format!(
            "[sweep]\nname = \"local\"\n[base.model]\narch = \"bert\"\npath = \"{minilm}\"\nfinetune = \"head\"\nmax_len = 48\n\
             [base.data]\npath = \"{fpb}\"\n[base.train]\nepochs = 1\nbatch_size = 32\nlr = 2e-2\n\
             [base.tracker]\ntest_every_epoch = false\n[grid]\nseed = [0, 1]\n"
        ),
    )
    .unwrap();
    let (ok, out) = producer(
        &env,
        &["submit", sweep.to_str().unwrap(), "--device", "cpu"],
    );
    assert!(ok && out.contains("2 job(s) queued"), "{out}");
    let _worker = Killed(
        Command::new(binary("worker"))
            .args([
                "serve",
                "--devices",
                "cpu",
                "--worker-id",
                "solo",
                "--threads",
                "2",
            ])
            .args(flag)
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let state = StateStore::connect(REDIS, &ns).await.unwrap();
    let jobs = state.sweep_jobs("local").await.unwrap();
    assert_eq!(jobs.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(600);
    for j in &jobs {
        loop {
            let h = state.job(j).await.unwrap();
            match h.get("state").map(String::as_str) {
                Some("succeeded") => break,
                Some("failed" | "dead" | "cancelled") => panic!("{j}: {h:?}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "{j} did not finish: {h:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let h = state.job(j).await.unwrap();
        assert_eq!(h["attempt"], "1");
        let folder = store.join(&h["artifacts"]);
        assert!(h["artifacts"].ends_with("/attempt-1-g1-solo"), "{h:?}");
        for f in report::sweep::RUN_FILES.iter().chain(&[
            common::artifacts::files::TRAINED_SAFETENSORS,
            "manifest.json",
        ]) {
            assert!(
                folder.join(f).is_file(),
                "{} missing",
                folder.join(f).display()
            );
        }
        let m: common::summary::RunSummary =
            serde_json::from_slice(&std::fs::read(folder.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(h["test_macro_f1"], format!("{:.4}", m.test.macro_f1));
        // Nothing else of the job: no checkpoint left, no other attempt.
        let job_dir = store.join(common::artifacts::job_prefix("local", j));
        let entries: Vec<_> = std::fs::read_dir(&job_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["attempt-1-g1-solo"], "{}", job_dir.display());
    }
    // An attempt folder without its manifest (a worker died writing it)
    // is not fetched; the whole ones are.
    let ghost = store
        .join(common::artifacts::job_prefix("local", &jobs[0]))
        .join("attempt-9-g9-ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    std::fs::write(ghost.join("metrics.json"), b"{}").unwrap();
    let fetched = dir.path().join("fetched");
    let (ok, out) = producer(
        &env,
        &[
            &flag[..],
            &["fetch", "local", "--out", fetched.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(ok, "{out}");
    for j in &jobs {
        let h = state.job(j).await.unwrap();
        assert!(
            fetched.join(&h["artifacts"]).join("metrics.json").is_file(),
            "{out}"
        );
    }
    assert!(
        !fetched.join(ghost.strip_prefix(&store).unwrap()).exists(),
        "{out}"
    );
    std::fs::remove_dir_all(&ghost).unwrap();
    let out_dir = dir.path().join("report");
    let (ok, out) = producer(
        &env,
        &[
            "report",
            "local",
            "--out",
            out_dir.to_str().unwrap(),
            "--artifacts",
            store.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("2 run(s)"), "{out}");
    assert!(out_dir.join("local/report.md").is_file());
    assert!(store.join("sweeps/local/report.md").is_file());
    assert!(!overridden.exists(), "the flag wins over ARTIFACTS");
    // A parked duplicate comes back from its delay queue and is dropped.
    let drained = Instant::now() + Duration::from_secs(90);
    loop {
        let left = system_tests::queued_messages(&ns, None);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < drained, "messages left: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    state.delete_namespace().await.unwrap();
    Broker::connect(AMQP, Topology::new(&ns), 3)
        .await
        .unwrap()
        .delete_topology()
        .await
        .unwrap();
}
