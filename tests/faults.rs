//! Exactly-once outcomes under faults, on the real services: a redelivery
//! while the holder lives (two slots of one worker and a second worker
//! racing for it), a worker frozen past its lease and resumed, a job that
//! keeps crashing its worker, a SIGTERM hand-back, Redis restarted empty
//! in the middle of a job, S3 down for longer than the upload retries, and a
//! Redis that forgets its last writes (a start, then a success).
//! Every scenario ends with the same audit: the job succeeded once (one `succeeded` event, one attempt folder in
//! S3 with every file), and no queue of the namespace (jobs, delay, dead
//! letters) holds a message.

mod kit;

use std::process::Command;
use std::time::{Duration, Instant};

use common::queue::Topology;
use kit::*;
use services::broker::Broker;
use services::state::StateStore;
use system_tests::{binary, free_port};

fn state_is(h: &std::collections::HashMap<String, String>, s: &str) -> bool {
    h.get("state").map(String::as_str) == Some(s)
}

/// Every broker connection is closed while a job trains on one of three
/// slots: the broker redelivers the job, the other slots (a sibling of the
/// holder, and a second worker) find its lease held and park the delivery
/// instead of running it, and the holder, still training, records the
/// outcome. One start, one success.
#[tokio::test(flavor = "multi_thread")]
async fn redelivery_while_the_holder_lives_is_parked_not_run_twice() {
    let s = setup("race");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "race", 2, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("race").await.unwrap().remove(0);
    let _a = worker_with(&s, "wa", "cpu,cpu", &[]);
    let _b = worker(&s, "wb");
    let h = wait_for(&state, &job, 300, training).await;
    let holder = h["worker"].clone();
    let o = Command::new("rabbitmqctl")
        .args(["close_all_connections", "connection closed by a test"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("rabbitmqctl (the RabbitMQ server's CLI) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["worker"], holder, "the holder finished its own run");
    assert_eq!(h["generation"], "1", "started once: {h:?}");
    assert_eq!(starts(&state, "race", &job).await, vec!["1"]);
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "race", &job, &holder, 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// A worker frozen (SIGSTOP) past its lease: the reconciler of a second
/// worker finds the job running with no lease and publishes it again, the
/// second worker starts it as generation 2. The first one, resumed, finds
/// its lease gone, stops, and records nothing; generation 2 succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn frozen_worker_is_superseded_and_cannot_commit() {
    let s = setup("freeze");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "freeze", 2, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("freeze").await.unwrap().remove(0);
    let a = worker(&s, "wa");
    wait_for(&state, &job, 300, training).await;
    signal(&a.0, "STOP");
    let _b = worker_with(
        &s,
        "wb",
        "cpu",
        &["--reconcile-secs", "2", "--reconcile-grace-secs", "8"],
    );
    let h = wait_for(&state, &job, 300, |h| {
        h.get("worker").map(String::as_str) == Some("wb") && training(h)
    })
    .await;
    assert_eq!(h["generation"], "2", "{h:?}");
    signal(&a.0, "CONT");
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["generation"], "2", "{h:?}");
    assert_eq!(starts(&state, "freeze", &job).await, vec!["1", "2"]);
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "freeze", &job, "wb", 1).await;
    drop(a);
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// A job that kills its worker every time (SIGKILL while it trains): once
/// more attempts were abandoned than the delivery limit allows, it is
/// recorded `dead` with the reason instead of looping for ever; `producer
/// retry` brings it back and it succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn crash_looping_job_is_recorded_dead_and_retry_brings_it_back() {
    let mut s = setup("crashloop");
    s.env.insert("QUEUE_DELIVERY_LIMIT".into(), "1".into());
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "crashloop", 1, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("crashloop").await.unwrap().remove(0);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut w = worker(&s, &format!("crash{kills}"));
        let generation = (kills + 1).to_string();
        let h = wait_for(&state, &job, 300, |h| {
            state_is(h, "dead") || (h.get("generation") == Some(&generation) && training(h))
        })
        .await;
        if state_is(&h, "dead") {
            break;
        }
        w.0.kill().unwrap();
        w.0.wait().unwrap();
        kills += 1;
        assert!(Instant::now() < deadline && kills <= 4, "never dead: {h:?}");
    }
    assert_eq!(kills, 2, "dead after the second abandoned attempt");
    let h = state.job(&job).await.unwrap();
    assert!(
        h["error"].contains("abandoned by 2 attempt(s)") || h["error"].contains("delivery_limit"),
        "{h:?}"
    );

    let o = Command::new(binary("producer"))
        .args(["retry", &job])
        .envs(&s.env)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 job(s) queued again"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let _w = worker(&s, "steady");
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["attempt"], "2", "{h:?}");
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 1)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "crashloop", &job, "steady", 2).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// SIGTERM stops the worker within seconds and hands its job back by
/// republishing it (not a nack-requeue, which would count toward the
/// delivery limit): the job is `queued` again at the same attempt, and the
/// next worker runs it to success.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_the_job_back() {
    let s = setup("sigterm");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "sigterm", 2, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("sigterm").await.unwrap().remove(0);
    let mut a = worker(&s, "wa");
    wait_for(&state, &job, 300, training).await;
    let t0 = Instant::now();
    signal(&a.0, "TERM");
    let status = a.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let h = state.job(&job).await.unwrap();
    assert_eq!(h["state"], "queued", "{h:?}");
    assert!(h["error"].contains("handed back"), "{h:?}");
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    let (ready, _) = broker
        .queue_counts(&broker.topology.jobs_queue(common::job::DeviceClass::Cpu))
        .await
        .unwrap();
    assert_eq!(ready, 1, "the handed-back message waits on the work queue");
    let _b = worker(&s, "wb");
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["generation"], "2", "{h:?}");
    audit(&s.env, &state, &broker, "sigterm", &job, "wb", 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// Redis is replaced by an empty one while a job trains (its record and
/// lease are gone): the holder finds its lease lost and stops without
/// recording or storing anything, its delivery is parked, and when it
/// comes back the job is registered again from its message and runs once
/// to success.
#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_empty_mid_job_reruns_it_once() {
    let mut s = setup("redisempty");
    let port = free_port();
    let mut redis = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    s.env.insert("REDIS_URL".into(), url.clone());
    let state = StateStore::connect(&url, &s.ns).await.unwrap();
    let file = sweep(&s, "redisempty", 1, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("redisempty").await.unwrap().remove(0);
    let _w = worker(&s, "wr");
    wait_for(&state, &job, 300, training).await;
    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    let _redis = start_redis(port);
    let h = wait_succeeded_through_restart(&state, &job, 600).await;
    assert_eq!(h["generation"], "1", "the record started afresh: {h:?}");
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "redisempty", &job, "wr", 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// S3 stays down longer than the upload retries: the job goes to a retry
/// with its files kept in the worker's spool, and the retry stores them
/// without training again (one epoch trained in all).
#[tokio::test(flavor = "multi_thread")]
async fn s3_outage_longer_than_the_upload_retries_does_not_retrain() {
    let s = setup("s3long");
    let port: u16 = s.env["AWS_ENDPOINT"]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "s3long", 1, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("s3long").await.unwrap().remove(0);
    let spool = s.dir.path().join("spool");
    let _w = worker_with(
        &s,
        "ws",
        "cpu",
        &[
            "--retry-delay-secs",
            "1",
            "--spool-dir",
            spool.to_str().unwrap(),
        ],
    );
    wait_for(&state, &job, 300, training).await;
    let Setup {
        _moto,
        env,
        ns,
        dir,
        ..
    } = s;
    drop(_moto);
    // The upload gives up (about a minute of retries): the job waits for
    // its second attempt, its files in the spool.
    let h = wait_for(&state, &job, 600, |h| {
        h.get("attempt").map(String::as_str) == Some("2")
    })
    .await;
    assert!(h["error"].contains("wait in the spool"), "{h:?}");
    let _moto = system_tests::start_moto(port, "runs");
    let h = wait_for(&state, &job, 300, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["attempt"], "2", "{h:?}");
    let epochs = state
        .events("s3long", "0")
        .await
        .unwrap()
        .iter()
        .filter(|(_, e)| e.get("job") == Some(&job) && e.contains_key("val_accuracy"))
        .count();
    assert_eq!(epochs, 1, "trained once");
    let broker = Broker::connect(AMQP, Topology::new(&ns), 3).await.unwrap();
    audit(&env, &state, &broker, "s3long", &job, "ws", 2).await;
    assert_eq!(
        std::fs::read_dir(spool.join(&ns)).unwrap().count(),
        0,
        "the spool is emptied once the files are stored"
    );
    drop(dir);
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// The broker (a node of the test's own) restarts while a job trains on
/// one of two workers, then that worker is SIGKILLed: the durable message
/// comes back, the other worker parks it while the lease is held, and
/// takes the job over (generation 2) once the holder is gone.
#[tokio::test(flavor = "multi_thread")]
async fn broker_restarted_mid_job_then_the_holder_killed() {
    let mut s = setup("rmqrestart");
    let rmq = PrivateBroker::start("rmqrestart");
    s.env.insert("AMQP_URL".into(), rmq.url());
    s.env.insert("TEST_RABBITMQ_NODE".into(), rmq.node.clone());
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "rmqrestart", 4, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("rmqrestart").await.unwrap().remove(0);
    let mut a = worker(&s, "wa");
    let mut b = worker(&s, "wb");
    let h = wait_for(&state, &job, 300, training).await;
    rmq.restart();
    let holder = h["worker"].clone();
    let (holder_proc, other) = if holder == "wa" {
        (&mut a, "wb")
    } else {
        (&mut b, "wa")
    };
    assert!(
        state_is(&state.job(&job).await.unwrap(), "running"),
        "the holder trains on through the broker's restart"
    );
    holder_proc.0.kill().unwrap();
    holder_proc.0.wait().unwrap();
    let h = wait_for(&state, &job, 900, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["worker"], other, "{h:?}");
    assert_eq!(h["generation"], "2", "{h:?}");
    assert_eq!(starts(&state, "rmqrestart", &job).await, vec!["1", "2"]);
    let broker = Broker::connect(&rmq.url(), Topology::new(&s.ns), 3)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "rmqrestart", &job, other, 1).await;
    drop(broker);
    state.delete_namespace().await.unwrap();
}

/// A spec naming a secret of the worker's environment (`data.path =
/// "${AWS_SECRET_ACCESS_KEY}"`) fails at once with an error that names the
/// variable and never its value: not in Redis, not in `producer status`,
/// not in the worker's log. The worker goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_spec_reading_a_secret_fails_without_printing_it() {
    let mut s = setup("secret");
    let secret = format!("s3cr3t-{}-do-not-print", std::process::id());
    s.env.insert("AWS_SECRET_ACCESS_KEY".into(), secret.clone());
    let minilm = system_tests::required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let file = s.dir.path().join("secret.toml");
    std::fs::write(
        &file,
        format!(
            "[sweep]\nname = \"secret\"\n[base.model]\narch = \"bert\"\npath = \"{minilm}\"\nfinetune = \"head\"\n\
             [base.data]\npath = \"${{AWS_SECRET_ACCESS_KEY}}\"\n"
        ),
    )
    .unwrap();
    submit(&s, &file);
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let job = state.sweep_jobs("secret").await.unwrap().remove(0);
    let log = s.dir.path().join("worker.log");
    let _w = system_tests::Killed(
        Command::new(binary("worker"))
            .args(["serve", "--devices", "cpu", "--worker-id", "wsec"])
            .env("RUST_LOG", "debug")
            .envs(&s.env)
            .stdout(std::fs::File::create(s.dir.path().join("worker.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let h = wait_for(&state, &job, 120, |h| state_is(h, "failed")).await;
    assert!(h["error"].contains("AWS_SECRET_ACCESS_KEY"), "{h:?}");
    let everything = format!("{h:?}");
    assert!(
        !everything.contains(&secret),
        "Redis holds the secret: {h:?}"
    );
    let o = Command::new(binary("producer"))
        .args(["status", "secret"])
        .envs(&s.env)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
    let events = format!("{:?}", state.events("secret", "0").await.unwrap());
    assert!(!events.contains(&secret));
    queues_drain(&s.ns, None).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("AWS_SECRET_ACCESS_KEY"),
        "the log names the variable"
    );
    assert!(
        !logged.contains(&secret),
        "the worker's log holds the secret"
    );
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// Redis is out of reach for more than twice the lease while a job trains,
/// twice: first it stops answering (SIGSTOP, connections hang), then it is
/// down (SIGKILL, connections refused) and restarted from its append-only
/// file. Each time the lease expired meanwhile, and the attempt, still the
/// job's (same generation and token), takes it again instead of giving the
/// job up. One attempt, generation 1, one series of epochs, no retraining.
#[tokio::test(flavor = "multi_thread")]
async fn redis_unreachable_past_the_lease_does_not_stop_the_job() {
    let mut s = setup("redispause");
    let mut redis = ForgetfulRedis::start();
    let url = redis.url();
    s.env.insert("REDIS_URL".into(), url.clone());
    let state = StateStore::connect(&url, &s.ns).await.unwrap();
    // Full fine-tuning: an epoch long enough to outlast the outage.
    let minilm = system_tests::required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fpb = system_tests::required_env("FPB_DIR", "the Financial PhraseBank directory");
    let file = s.dir.path().join("redispause.toml");
    std::fs::write(
        &file,
        format!(
            "[sweep]\nname = \"redispause\"\n[base.model]\narch = \"bert\"\npath = \"{minilm}\"\nfinetune = \"full\"\nmax_len = 32\n\
             [base.data]\npath = \"{fpb}\"\n[base.train]\nepochs = 2\nbatch_size = 32\n\
             [base.tracker]\ntest_every_epoch = false\n[grid]\nseed = [0]\n"
        ),
    )
    .unwrap();
    submit(&s, &file);
    let job = state.sweep_jobs("redispause").await.unwrap().remove(0);
    let _w = worker(&s, "wp");
    let first = wait_for(&state, &job, 300, training).await;
    // Lease 6 s: 15 s without Redis lets it expire.
    redis.signal("STOP");
    tokio::time::sleep(Duration::from_secs(15)).await;
    redis.signal("CONT");
    let h = wait_for(&state, &job, 120, |h| {
        training(h) && h.get("lease_token") == Some(&first["lease_token"])
    })
    .await;
    assert_eq!(h["generation"], "1", "{h:?}");
    redis.down();
    tokio::time::sleep(Duration::from_secs(15)).await;
    redis.up();
    let h = wait_succeeded_through_restart(&state, &job, 600).await;
    assert_eq!(h["generation"], "1", "the attempt kept the job: {h:?}");
    assert_eq!(
        h.get("takeovers").map(String::as_str).unwrap_or("0"),
        "0",
        "{h:?}"
    );
    let running: Vec<_> = state
        .events("redispause", "0")
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.get("state").map(String::as_str) == Some("running"))
        .collect();
    assert_eq!(running.len(), 1, "one start: {running:?}");
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "redispause", &job, "wp", 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// A worker SIGKILLed while it trains epoch 3 of 4: the next attempt, on
/// another worker, resumes from the checkpoint stored after epoch 2 (it
/// trains epochs 3 and 4 only) and ends with the metrics of a run that
/// never stopped (`worker run` of the same sweep, same threads); the
/// checkpoint is gone once the job's files are stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_resumes_after_its_last_epoch() {
    let s = setup("resume");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "resume", 4, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("resume").await.unwrap().remove(0);
    let hash = common::sweep::Sweep::load(&file).unwrap().jobs[0]
        .config_hash
        .clone();
    let services = common::config::Services::from_lookup(|k| s.env.get(k).cloned()).unwrap();
    let s3 = services::artifacts::Artifacts::s3(services.s3.as_ref().unwrap()).unwrap();
    let checkpoint = common::artifacts::checkpoint_key("resume", &job, &hash);
    let mut a = worker(&s, "ka");
    wait_for(&state, &job, 600, |h| {
        h.get("epoch").map(String::as_str) == Some("3")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s3.exists(&checkpoint).await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint stored after epoch 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&a.0, "KILL");
    a.0.wait().unwrap();
    let _b = worker(&s, "kb");
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["generation"], "2", "{h:?}");
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    // The audit also finds no file outside the attempt folder: the
    // checkpoint was removed.
    audit(&s.env, &state, &broker, "resume", &job, "kb", 1).await;
    assert!(!s3.exists(&checkpoint).await.unwrap());
    let resumed: common::summary::RunSummary = serde_json::from_slice(
        &s3.get(&format!("{}/metrics.json", h["artifacts"]))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(resumed.resumed_after, Some(2));
    assert_eq!(resumed.epochs_run, 4);
    // The same sweep, never stopped.
    let out = s.dir.path().join("whole");
    let o = Command::new(binary("worker"))
        .args(["run", file.to_str().unwrap(), "--threads", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole: common::summary::RunSummary = serde_json::from_slice(
        &std::fs::read(
            out.join(common::artifacts::job_prefix("resume", &job))
                .join("metrics.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(resumed.test, whole.test);
    assert_eq!(resumed.val, whole.val);
    assert_eq!(resumed.test_predictions, whole.test_predictions);
    assert_eq!(resumed.best_epoch, whole.best_epoch);
    let curve = |r: &common::summary::RunSummary| -> Vec<(f64, f64, f64)> {
        r.history
            .iter()
            .map(|e| (e.train_loss, e.val_loss, e.val_macro_f1))
            .collect()
    };
    assert_eq!(curve(&resumed), curve(&whole));
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// A job whose evaluation, knock-out pass and latency measurement outlast
/// `--stall-secs` many times over, beside a second worker and a reconciler
/// ready to take stalled jobs over: every loop that takes time signals
/// progress, so the lease holds and the first attempt finishes the job.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_evaluation_is_progress_not_a_stall() {
    let s = setup("slowval");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let minilm = system_tests::required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fpb = system_tests::required_env("FPB_DIR", "the Financial PhraseBank directory");
    let file = s.dir.path().join("slowval.toml");
    std::fs::write(
        &file,
        format!(
            "[sweep]\nname = \"slowval\"\n[base]\nvariant = \"dendritic\"\n[base.model]\narch = \"bert\"\npath = \"{minilm}\"\nfinetune = \"head\"\nmax_len = 128\n\
             [base.data]\npath = \"{fpb}\"\nagreement = \"50Agree\"\n[base.train]\nepochs = 1\nbatch_size = 32\nlr = 2e-2\n\
             [base.tracker]\ntest_every_epoch = true\n[grid]\nseed = [0]\n"
        ),
    )
    .unwrap();
    submit(&s, &file);
    let job = state.sweep_jobs("slowval").await.unwrap().remove(0);
    let reconcile = ["--reconcile-secs", "1", "--reconcile-grace-secs", "3"];
    // A batch must beat within the stall (a 32 x 128 MiniLM step took up
    // to 7 s on two cores without a BLAS library); every pass over a split
    // outlasts it, the pass over the training split (mean ablation) many
    // times.
    let mut flags = vec!["--stall-secs", "10"];
    flags.extend(reconcile);
    let _a = worker_with(&s, "sa", "cpu", &flags);
    wait_for(&state, &job, 300, |h| state_is(h, "running")).await;
    let _b = worker_with(&s, "sb", "cpu", &reconcile);
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    assert_eq!(h["generation"], "1", "{h:?}");
    assert_eq!(starts(&state, "slowval", &job).await, vec!["1"]);
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "slowval", &job, "sa", 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// A poison job whose data file never yields a byte (a FIFO: the read
/// blocks for ever, as on a hung network mount) beside a job that trains,
/// on a worker with two slots: each worker hands the other job back and
/// exits (status 70) once the poison made no progress for stall + lease;
/// restarted each time, the poison is recorded dead after the limit and
/// the other job succeeds once.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_job_restarts_its_worker_until_it_is_dead() {
    let mut s = setup("poison");
    s.env.insert("QUEUE_DELIVERY_LIMIT".into(), "1".into());
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let minilm = system_tests::required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fifo = s.dir.path().join("fifo");
    std::fs::create_dir(&fifo).unwrap();
    let made = Command::new("mkfifo")
        .arg(fifo.join("Sentences_AllAgree.txt"))
        .status()
        .unwrap();
    assert!(made.success());
    let poison_file = s.dir.path().join("poison.toml");
    std::fs::write(
        &poison_file,
        format!(
            "[sweep]\nname = \"poison\"\n[base.model]\narch = \"bert\"\npath = \"{minilm}\"\nfinetune = \"head\"\n\
             [base.data]\npath = \"{}\"\n[grid]\nseed = [0]\n",
            fifo.display()
        ),
    )
    .unwrap();
    submit(&s, &poison_file);
    submit(&s, &sweep(&s, "steady", 2, "0"));
    let poison = state.sweep_jobs("poison").await.unwrap().remove(0);
    let steady = state.sweep_jobs("steady").await.unwrap().remove(0);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut exits = 0;
    loop {
        let mut w = worker_with(&s, &format!("p{exits}"), "cpu,cpu", &["--stall-secs", "1"]);
        let ended = loop {
            assert!(
                Instant::now() < deadline,
                "poison {:?}",
                state.job(&poison).await
            );
            if let Some(status) = w.0.try_wait().unwrap() {
                break Some(status);
            }
            let (p, t) = (
                state.job(&poison).await.unwrap(),
                state.job(&steady).await.unwrap(),
            );
            if state_is(&p, "dead") && state_is(&t, "succeeded") {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        match ended {
            Some(status) => {
                assert_eq!(status.code(), Some(70), "a hung worker's status");
                exits += 1;
                assert!(exits <= 4, "the poison is never dead");
            }
            None => break,
        }
    }
    assert_eq!(exits, 2, "dead after the second abandoned attempt");
    let p = state.job(&poison).await.unwrap();
    assert!(
        p["error"].contains("abandoned by 2 attempt(s)") || p["error"].contains("delivery_limit"),
        "{p:?}"
    );
    let t = state.job(&steady).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 1)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "steady", &steady, &t["worker"], 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// Redis loses its last writes (killed and started again from its files
/// as they were a moment before: a host crash under `appendfsync everysec`,
/// or a failover to a replica a little behind). First a job's start is
/// lost: the attempt that trains finds its lease gone, stops and parks its
/// delivery, and the job starts again and succeeds once. Then a job's
/// success is lost after its delivery was acknowledged: the job reads
/// `running` again, the reconciler publishes it once its lease has expired,
/// and the next attempt finds the first one's stored files (same
/// configuration) and records them instead of training again. Each job
/// ends succeeded once, with one attempt folder.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_forgets_its_last_writes_loses_no_work() {
    let mut s = setup("forget");
    let mut redis = ForgetfulRedis::start();
    s.env.insert("REDIS_URL".into(), redis.url());
    let state = StateStore::connect(&redis.url(), &s.ns).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();

    // A lost start.
    let file = sweep(&s, "forget1", 2, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("forget1").await.unwrap().remove(0);
    redis.snapshot();
    let _w = worker_with(
        &s,
        "wf",
        "cpu",
        &["--reconcile-secs", "2", "--reconcile-grace-secs", "8"],
    );
    wait_for(&state, &job, 300, |h| state_is(h, "running")).await;
    redis.forget();
    let h = wait_succeeded_through_restart(&state, &job, 600).await;
    assert_eq!(
        h["generation"], "1",
        "the lost start left generation 0: {h:?}"
    );
    assert_eq!(starts(&state, "forget1", &job).await, vec!["1"]);
    audit(&s.env, &state, &broker, "forget1", &job, "wf", 1).await;

    // A lost success, after the acknowledgement.
    let file = sweep(&s, "forget2", 2, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("forget2").await.unwrap().remove(0);
    wait_for(&state, &job, 300, training).await;
    redis.snapshot();
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    let stored = h["artifacts"].clone();
    queues_drain(&broker.topology.prefix, None).await;
    redis.forget();
    // The restored record reads `running`, generation 1, until the
    // reconciler publishes the job again. When the restored lease had
    // already expired, that is at once, and the next attempt can record the
    // stored files before the first read here: then generation 2 is seen.
    wait_through_restart(&state, &job, 30, |h| {
        state_is(h, "running") || h.get("generation").map(String::as_str) == Some("2")
    })
    .await;
    let h = wait_succeeded_through_restart(&state, &job, 600).await;
    assert_eq!(h["generation"], "2", "published again and started: {h:?}");
    assert_eq!(h["artifacts"], stored, "the first attempt's files: {h:?}");
    assert_eq!(
        h.get("takeovers").map(String::as_str).unwrap_or("0"),
        "0",
        "its holder lived: {h:?}"
    );
    assert_eq!(starts(&state, "forget2", &job).await, vec!["1", "2"]);
    audit(&s.env, &state, &broker, "forget2", &job, "wf", 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// `producer cancel` as the worker admits the job, then SIGTERM at once:
/// whichever the worker sees first (its hand-back or the cancel), the job
/// ends `cancelled`, is never trained again (one start), stores nothing,
/// and no queue keeps its message once a second worker has served the
/// queue (it runs the next job).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_racing_admission_then_sigterm_leaves_the_job_cancelled() {
    let s = setup("cancelrace");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    let mut a = worker(&s, "wa");
    let file = sweep(&s, "cancelrace", 2, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("cancelrace").await.unwrap().remove(0);
    wait_for(&state, &job, 120, |h| state_is(h, "running")).await;
    let o = Command::new(binary("producer"))
        .args(["cancel", &job])
        .envs(&s.env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    signal(&a.0, "TERM");
    let status = a.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _b = worker(&s, "wb");
    let next = sweep(&s, "cancelnext", 1, "0");
    submit(&s, &next);
    let after = state.sweep_jobs("cancelnext").await.unwrap().remove(0);
    wait_for(&state, &after, 600, |h| state_is(h, "succeeded")).await;
    let h = wait_for(&state, &job, 60, |h| state_is(h, "cancelled")).await;
    assert_eq!(h["generation"], "1", "{h:?}");
    assert_eq!(starts(&state, "cancelrace", &job).await, vec!["1"]);
    queues_drain(&broker.topology.prefix, None).await;
    let services = common::config::Services::from_lookup(|k| s.env.get(k).cloned()).unwrap();
    let s3 = services::artifacts::Artifacts::s3(services.s3.as_ref().unwrap()).unwrap();
    let left = s3
        .list(&common::artifacts::job_prefix("cancelrace", &job))
        .await
        .unwrap();
    assert!(left.is_empty(), "a cancelled job stored {left:?}");
    let h = state.job(&job).await.unwrap();
    assert_eq!(h["state"], "cancelled", "it stayed cancelled: {h:?}");
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// The tracker is out of reach (it accepts connections and never answers)
/// when a job ends, and the worker waits `--mlflow-flush-secs` (20 s, more
/// than three leases) for it: the wait comes after the outcome is recorded
/// and acknowledged, so the lease never lapses on a finished job, and a
/// second worker with a reconciler finds nothing to take over. Succeeded,
/// generation 1, one start.
#[tokio::test(flavor = "multi_thread")]
async fn a_tracker_out_of_reach_at_the_end_costs_no_takeover() {
    let s = setup("tracker");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}", hole.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hole.incoming().map_while(Result::ok) {
            held.push(c);
        }
    });
    let flags = [
        "--mlflow-uri",
        &uri,
        "--mlflow-flush-secs",
        "20",
        "--reconcile-secs",
        "2",
        "--reconcile-grace-secs",
        "8",
    ];
    let _a = worker_with(&s, "wa", "cpu", &flags);
    let _b = worker_with(&s, "wb", "cpu", &flags);
    let file = sweep(&s, "tracker", 1, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("tracker").await.unwrap().remove(0);
    let h = wait_for(&state, &job, 600, |h| state_is(h, "succeeded")).await;
    // Past the flush, plus a lease and a reconciler pass.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = state.job(&job).await.unwrap();
    assert_eq!(after["state"], "succeeded", "{after:?}");
    assert_eq!(after["generation"], "1", "{after:?}");
    assert_eq!(starts(&state, "tracker", &job).await, vec!["1"]);
    audit(&s.env, &state, &broker, "tracker", &job, &h["worker"], 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// Redis is replaced by an empty one in the settle window: the job's files
/// are stored and its success is about to be recorded (S3 held the upload
/// until Redis had stopped answering, so that the record waits for it),
/// and the record finds no job. The slot cannot settle the delivery: it
/// returns it with its connection, the redelivered copy registers the job
/// again and finds the stored files (no training), and the slot runs the
/// next job.
#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_empty_in_the_settle_window_keeps_the_slot() {
    let mut s = setup("settlewin");
    let port = free_port();
    let mut redis = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    s.env.insert("REDIS_URL".into(), url.clone());
    let state = StateStore::connect(&url, &s.ns).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    let file = sweep(&s, "settlewin", 1, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("settlewin").await.unwrap().remove(0);
    let (_w, log) = worker_logged(&s, "wz", &[]);
    wait_for(&state, &job, 300, training).await;
    signal(&s._moto.0, "STOP");
    wait_line(&log, "storing the run's files", 300);
    signal(&redis.0, "STOP");
    signal(&s._moto.0, "CONT");
    wait_line(&log, "run ended", 300);
    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    let _redis = start_redis(port);
    wait_line(&log, "returning the delivery with the connection", 60);
    let h = wait_succeeded_through_restart(&state, &job, 600).await;
    assert_eq!(h["generation"], "1", "registered again: {h:?}");
    let next = sweep(&s, "settlenext", 1, "1");
    submit(&s, &next);
    let after = state.sweep_jobs("settlenext").await.unwrap().remove(0);
    let h2 = wait_for(&state, &after, 600, |h| state_is(h, "succeeded")).await;
    assert_eq!(h2["worker"], "wz", "the same slot: {h2:?}");
    audit(&s.env, &state, &broker, "settlewin", &job, "wz", 1).await;
    audit(&s.env, &state, &broker, "settlenext", &after, "wz", 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}
