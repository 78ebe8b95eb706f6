//! Failure handling on the real services: a worker killed with SIGKILL in
//! the middle of a job (the job reruns on another worker and succeeds
//! exactly once), and the cancellation of a running job (it stops within
//! seconds and the worker goes on serving).

mod kit;

use std::process::Command;
use std::time::{Duration, Instant};

use common::queue::Topology;
use kit::*;
use services::broker::Broker;
use services::state::StateStore;
use system_tests::{binary, free_port, start_moto};

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
    wait_succeeded_through_restart(&state, &job, 180).await;
    audit(&s.env, &state, &broker, "redisdown", &job, "wd", 1).await;

    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}
