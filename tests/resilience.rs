//! Failure handling on the real services: a worker killed with SIGKILL in
//! the middle of a job (the job reruns on another worker and succeeds
//! exactly once), and the cancellation of a running job (it stops within
//! seconds and the worker goes on serving).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::queue::Topology;
use services::broker::Broker;
use services::state::StateStore;
use system_tests::{binary, free_port, required_env, start_moto, Killed};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379";

struct Setup {
    env: HashMap<String, String>,
    ns: String,
    _moto: Killed,
    dir: tempfile::TempDir,
}

fn setup(tag: &str) -> Setup {
    let ns = format!("test-{tag}-{}", std::process::id());
    let port = free_port();
    let moto = start_moto(port, "runs");
    let env = HashMap::from([
        ("AMQP_URL".to_string(), AMQP.to_string()),
        ("REDIS_URL".into(), REDIS.into()),
        ("QUEUE_PREFIX".into(), ns.clone()),
        ("AWS_BUCKET".into(), "runs".into()),
        ("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ]);
    Setup {
        env,
        ns,
        _moto: moto,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// A sweep of `seeds` head-only MiniLM jobs of `epochs` epochs.
fn sweep(s: &Setup, name: &str, epochs: usize, seeds: &str) -> std::path::PathBuf {
    let minilm = required_env("MINILM_DIR", "the MiniLM-L6 checkpoint");
    let fpb = required_env("FPB_DIR", "the Financial PhraseBank directory");
    let path = s.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[sweep]\nname = \"{name}\"\n[base.model]\narch = \"bert\"\npath = \"{minilm}\"\nfinetune = \"head\"\nmax_len = 48\n\
             [base.data]\npath = \"{fpb}\"\n[base.train]\nepochs = {epochs}\nbatch_size = 32\nlr = 2e-2\nschedule = \"constant\"\nwarmup = 0.0\n\
             [base.tracker]\ntest_every_epoch = false\n[grid]\nseed = [{seeds}]\n"
        ),
    )
    .unwrap();
    path
}

fn worker(s: &Setup, id: &str) -> Killed {
    Killed(
        Command::new(binary("worker"))
            .args([
                "serve",
                "--devices",
                "cpu",
                "--worker-id",
                id,
                "--threads",
                "2",
                "--lease-secs",
                "6",
                "--heartbeat-secs",
                "1",
            ])
            .envs(&s.env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn submit(s: &Setup, file: &std::path::Path) {
    let o = Command::new(binary("producer"))
        .args(["submit", file.to_str().unwrap(), "--device", "cpu"])
        .envs(&s.env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

async fn wait_for(
    state: &StateStore,
    job: &str,
    secs: u64,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let h = state.job(job).await.unwrap();
        if done(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{job}: condition not met in {secs} s: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The number of `succeeded` events of a sweep, once the worker has written
/// them (the event follows the state change by a few milliseconds).
async fn succeeded_events(state: &StateStore, sweep: &str, expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = state
            .events(sweep, "0")
            .await
            .unwrap()
            .iter()
            .filter(|(_, e)| e.get("state").map(String::as_str) == Some("succeeded"))
            .count();
        if n >= expected || Instant::now() > deadline {
            // Give a duplicate, if any, the time to show up too.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return state
                .events(sweep, "0")
                .await
                .unwrap()
                .iter()
                .filter(|(_, e)| e.get("state").map(String::as_str) == Some("succeeded"))
                .count();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ends a fault test with the whole picture: `job` succeeded exactly once,
/// on `worker`, at `attempt`; every queue of the namespace is empty (jobs,
/// retry and dead letters); and S3 holds the one attempt folder Redis points
/// at, with every file of a run, and no other folder of the job.
async fn audit(
    env: &HashMap<String, String>,
    state: &StateStore,
    broker: &Broker,
    sweep: &str,
    job: &str,
    worker: &str,
    attempt: u32,
) {
    let h = state.job(job).await.unwrap();
    assert_eq!(h["state"], "succeeded", "{h:?}");
    assert_eq!(h["worker"], worker, "{h:?}");
    assert_eq!(h["attempt"], attempt.to_string(), "{h:?}");
    assert_eq!(succeeded_events(state, sweep, 1).await, 1);
    let class = common::job::DeviceClass::Cpu;
    let t = &broker.topology;
    for q in [t.jobs_queue(class), t.retry_queue(class), t.dead_queue()] {
        let (messages, _) = broker.queue_counts(&q).await.unwrap();
        assert_eq!(messages, 0, "{q} still holds {messages} message(s)");
    }
    let services = common::config::Services::from_lookup(|k| env.get(k).cloned()).unwrap();
    let s3 = services::artifacts::Artifacts::s3(services.s3.as_ref().unwrap()).unwrap();
    let job_folder = common::artifacts::job_prefix(sweep, job);
    let folder = &h["artifacts"];
    assert!(
        folder.starts_with(&format!("{job_folder}/attempt-{attempt}-"))
            && folder.ends_with(&format!("-{worker}")),
        "{folder}"
    );
    let keys = s3.list(&job_folder).await.unwrap();
    assert!(
        keys.iter().all(|k| k.starts_with(&format!("{folder}/"))),
        "files outside the recorded attempt folder: {keys:?}"
    );
    for f in report::sweep::RUN_FILES
        .iter()
        .chain(&[common::artifacts::files::TRAINED_SAFETENSORS])
    {
        let key = format!("{folder}/{f}");
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
}

fn training(h: &HashMap<String, String>) -> bool {
    h.get("state").map(String::as_str) == Some("running") && h.get("step").is_some_and(|s| s != "0")
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_job_reruns_elsewhere_and_succeeds_once() {
    let s = setup("kill");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    let file = sweep(&s, "kill", 2, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("kill").await.unwrap().remove(0);

    let mut a = worker(&s, "wa");
    wait_for(&state, &job, 300, training).await;
    // SIGKILL: no chance to clean up, lease and heartbeat left behind.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let _b = worker(&s, "wb");
    let h = wait_for(&state, &job, 600, |h| {
        h.get("state").map(String::as_str) == Some("succeeded")
    })
    .await;
    assert_eq!(h["worker"], "wb");
    assert!(h["artifacts"].ends_with("-wb"), "{h:?}");
    // Nothing is left on any queue, and the dead worker left no files in S3.
    let attempt = h["attempt"].parse().unwrap();
    audit(&s.env, &state, &broker, "kill", &job, "wb", attempt).await;

    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_running_job_stops_and_the_worker_goes_on() {
    let s = setup("cancel");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    let long = sweep(&s, "cancel", 20, "0");
    submit(&s, &long);
    let job = state.sweep_jobs("cancel").await.unwrap().remove(0);
    let _w = worker(&s, "wc");
    wait_for(&state, &job, 300, training).await;
    let t0 = Instant::now();
    let o = Command::new(binary("producer"))
        .args(["cancel", &job])
        .envs(&s.env)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("cancellation requested"));
    wait_for(&state, &job, 60, |h| {
        h.get("state").map(String::as_str) == Some("cancelled")
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "cancel took {:?}",
        t0.elapsed()
    );

    // The same worker takes the next job.
    let short = sweep(&s, "after", 1, "0");
    submit(&s, &short);
    let next = state.sweep_jobs("after").await.unwrap().remove(0);
    let h = wait_for(&state, &next, 600, |h| {
        h.get("state").map(String::as_str) == Some("succeeded")
    })
    .await;
    assert_eq!(h["worker"], "wc");

    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// Every broker connection (the worker's included) is closed under the
/// worker; it reconnects and serves the next job.
#[tokio::test(flavor = "multi_thread")]
async fn worker_recovers_when_its_broker_connection_is_closed() {
    let s = setup("restart");
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let _w = worker(&s, "wr");
    // Wait until the worker serves (its heartbeat is recorded and it consumes).
    let deadline = Instant::now() + Duration::from_secs(60);
    while state.workers().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "worker did not start");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = Command::new("rabbitmqctl")
        .args(["close_all_connections", "connection closed by a test"])
        .output()
        .expect("rabbitmqctl (the RabbitMQ server's CLI) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let file = sweep(&s, "restart", 1, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("restart").await.unwrap().remove(0);
    let h = wait_for(&state, &job, 600, |h| {
        h.get("state").map(String::as_str) == Some("succeeded")
    })
    .await;
    assert_eq!(h["worker"], "wr");

    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    audit(&s.env, &state, &broker, "restart", &job, "wr", 1).await;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// S3 goes down while a job runs and comes back: the upload is retried, the
/// job is not `succeeded` (nor acknowledged) before its files are stored,
/// and it succeeds once.
#[tokio::test(flavor = "multi_thread")]
async fn s3_outage_during_upload_is_retried_before_success() {
    let s = setup("s3down");
    let port: u16 = s.env["AWS_ENDPOINT"]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let file = sweep(&s, "s3down", 1, "0");
    submit(&s, &file);
    let job = state.sweep_jobs("s3down").await.unwrap().remove(0);
    let _w = worker(&s, "ws");
    wait_for(&state, &job, 300, training).await;
    // Take S3 away before the run ends.
    let Setup {
        _moto,
        env,
        ns,
        dir,
    } = s;
    drop(_moto);
    // The epoch ends (its record lands in Redis) while S3 is down.
    wait_for(&state, &job, 600, |h| h.contains_key("val_accuracy")).await;
    // Final scoring and latency take ~20 s, then uploads start failing.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        state.state(&job).await.unwrap(),
        Some(common::state::JobState::Running)
    );
    let _moto = start_moto(port, "runs");
    let h = wait_for(&state, &job, 300, |h| {
        h.get("state").map(String::as_str) == Some("succeeded")
    })
    .await;
    assert_eq!(h["attempt"], "1");
    let broker = Broker::connect(AMQP, Topology::new(&ns), 3).await.unwrap();
    audit(&env, &state, &broker, "s3down", &job, "ws", 1).await;
    let _ = dir;
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// A private Redis on `port` without persistence (the test stops it).
fn start_redis(port: u16) -> Killed {
    let k = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    k
}

/// Redis is unreachable when a job arrives: the worker keeps the delivery
/// unacknowledged and retries with backoff instead of dropping its channel
/// (which requeued the message, counted a delivery and, three deliveries
/// later, had the broker dead-letter a job nobody ran). Redis comes back
/// empty (no persistence): the job is registered from its message, runs and
/// succeeds once, and the audit finds every queue empty.
#[tokio::test(flavor = "multi_thread")]
async fn job_waits_while_redis_is_down_instead_of_being_dead_lettered() {
    let mut s = setup("redisdown");
    let port = free_port();
    let mut redis = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    s.env.insert("REDIS_URL".into(), url.clone());
    let state = StateStore::connect(&url, &s.ns).await.unwrap();
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    let _w = worker(&s, "wd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !state.workers().await.unwrap().iter().any(|w| w.id == "wd") {
        assert!(Instant::now() < deadline, "the worker did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Redis goes away, then a job arrives.
    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    let file = sweep(&s, "redisdown", 1, "0");
    let parsed = common::sweep::Sweep::load(&file).unwrap();
    let job = parsed.jobs[0].id.clone();
    let msg =
        common::job::JobMessage::train("redisdown", &parsed.jobs[0], common::job::DeviceClass::Cpu);
    broker.publish_job(&msg).await.unwrap();
    // Long enough for the Redis client's own reconnection attempts (about
    // 6 s each) to give up several times over.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let (dead, _) = broker
        .queue_counts(&broker.topology.dead_queue())
        .await
        .unwrap();
    assert_eq!(dead, 0, "the job was dead-lettered while Redis was down");

    let _redis = start_redis(port);
    // This client reconnects too: its first reads after the restart may fail.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match state.job(&job).await {
            Ok(h) if h.get("state").map(String::as_str) == Some("succeeded") => break,
            last => assert!(
                Instant::now() < deadline,
                "{job} did not succeed after Redis came back: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    audit(&s.env, &state, &broker, "redisdown", &job, "wd", 1).await;

    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}
