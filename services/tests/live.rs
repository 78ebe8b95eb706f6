//! The adapters against the real services: RabbitMQ and Redis on
//! 127.0.0.1 (as on the development machines and in CI) and an S3 server
//! (moto_server, started on a free port). Every test uses its own queue
//! names and key prefix and removes them afterwards.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::config::S3Config;
use common::job::{DeviceClass, JobMessage};
use common::queue::Topology;
use common::state::{Event, JobState};
use common::sweep::Sweep;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::BasicProperties;
use services::artifacts::{Artifacts, UploadRetry};
use services::broker::{dead_reason, header, Broker, BrokerError, ATTEMPT_HEADER, REASON_HEADER};
use services::reconcile::Reconciler;
use services::state::{Start, StateError, StateStore, WorkerInfo};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379";

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("test-{tag}-{}-{nanos}", std::process::id())
}

fn job_message() -> JobMessage {
    let s = Sweep::parse(
        "t.toml",
        "[sweep]\nname = \"t\"\n[base.model]\narch = \"bert\"\npath = \"/m\"\n[base.data]\npath = \"/d\"\n",
    )
    .unwrap();
    JobMessage::train(&s.name, &s.jobs[0], DeviceClass::Cpu)
}

async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a delivery within 20 s")
        .expect("consumer open")
        .expect("delivery ok")
}

#[tokio::test]
async fn broker_publishes_consumes_retries_and_dead_letters() {
    let b = Broker::connect(AMQP, Topology::new(&unique("broker")), 1)
        .await
        .unwrap();
    let msg = job_message();
    b.publish_job(&msg).await.unwrap();
    let (_ch, mut consumer) = b.consume(DeviceClass::Cpu, "t1").await.unwrap();
    let d = next_delivery(&mut consumer).await;
    assert_eq!(JobMessage::decode(&d.data).unwrap(), msg);
    assert!(d.ack(BasicAckOptions::default()).await.unwrap());

    // Unroutable publishes are errors, not silence.
    let e = b
        .publish(
            &b.topology.jobs_exchange(),
            "no-such-class",
            b"{}",
            BasicProperties::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::Unroutable { .. }), "{e}");

    // Delay queues: back on the work queue after the delay (rounded up to
    // its level), with its attempt. A long delay published first does not
    // hold a short one back (one queue per level).
    let t0 = Instant::now();
    let mut long = msg.clone();
    long.job_id = "waits-long".into();
    b.publish_later(DeviceClass::Cpu, &long.encode(), 5, Duration::from_secs(5))
        .await
        .unwrap();
    b.publish_later(
        DeviceClass::Cpu,
        &msg.encode(),
        2,
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let d = next_delivery(&mut consumer).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(JobMessage::decode(&d.data).unwrap().job_id, msg.job_id);
    assert_eq!(header(&d.properties, ATTEMPT_HEADER).as_deref(), Some("2"));
    d.ack(BasicAckOptions::default()).await.unwrap();
    let d = next_delivery(&mut consumer).await;
    assert!(t0.elapsed() >= Duration::from_secs(5));
    assert_eq!(JobMessage::decode(&d.data).unwrap().job_id, "waits-long");
    assert_eq!(header(&d.properties, ATTEMPT_HEADER).as_deref(), Some("5"));
    d.ack(BasicAckOptions::default()).await.unwrap();

    // Explicit dead letter with a reason.
    b.dead_letter(b"garbage", "malformed message: expected value")
        .await
        .unwrap();
    let (_dch, mut dead) = b.consume_dead("d1").await.unwrap();
    let d = next_delivery(&mut dead).await;
    assert_eq!(&d.data[..], b"garbage");
    assert!(header(&d.properties, REASON_HEADER)
        .unwrap()
        .contains("malformed"));
    d.ack(BasicAckOptions::default()).await.unwrap();

    // A job that keeps crashing its consumer goes to the dead letters
    // after the delivery limit (limit 1: two deliveries).
    b.publish_job(&msg).await.unwrap();
    for _ in 0..2 {
        let d = next_delivery(&mut consumer).await;
        d.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let d = next_delivery(&mut dead).await;
    assert_eq!(JobMessage::decode(&d.data).unwrap().job_id, msg.job_id);
    let reason = dead_reason(&d.properties);
    assert!(reason.contains("delivery_limit"), "{reason}");
    d.ack(BasicAckOptions::default()).await.unwrap();

    b.delete_topology().await.unwrap();
}

#[tokio::test]
async fn state_transitions_leases_workers_and_events() {
    let s = StateStore::connect(REDIS, &unique("state")).await.unwrap();
    assert_eq!(
        s.register_job("sw", "j1", &[("variant", "baseline".into())])
            .await
            .unwrap(),
        JobState::Queued
    );
    // Registering again keeps the existing state.
    s.transition("j1", Event::Start, &[("worker", "w1".into())])
        .await
        .unwrap();
    assert_eq!(
        s.register_job("sw", "j1", &[]).await.unwrap(),
        JobState::Running
    );
    s.transition("j1", Event::Succeed, &[]).await.unwrap();
    // A redelivery of a succeeded job cannot restart it.
    let e = s.transition("j1", Event::Start, &[]).await.unwrap_err();
    assert!(matches!(e, StateError::Refused { .. }), "{e}");
    assert_eq!(s.state("j1").await.unwrap(), Some(JobState::Succeeded));
    assert_eq!(s.job("j1").await.unwrap()["worker"], "w1");
    assert!(matches!(
        s.transition("nope", Event::Start, &[]).await,
        Err(StateError::UnknownJob(_))
    ));
    assert_eq!(s.sweep_jobs("sw").await.unwrap(), vec!["j1"]);

    // Starts are fenced: one lease holder at a time, a generation per
    // start, and a superseded attempt records nothing.
    let ttl = Duration::from_millis(400);
    s.register_job("sw", "j2", &[]).await.unwrap();
    let fields = [("worker", "w1".to_string())];
    assert_eq!(
        s.start("j2", "w1/a", ttl, 3, &fields).await.unwrap(),
        Start::Started { generation: 1 }
    );
    assert_eq!(
        s.start("j2", "w2/b", ttl, 3, &fields).await.unwrap(),
        Start::Held("w1/a".into())
    );
    assert!(!s.renew_lease("j2", "w2/b", ttl).await.unwrap());
    assert!(s.renew_lease("j2", "w1/a", ttl).await.unwrap());
    assert_eq!(s.lease_holder("j2").await.unwrap().as_deref(), Some("w1/a"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!s.leased("j2").await.unwrap(), "an expired lease is free");
    assert_eq!(
        s.start("j2", "w2/b", ttl, 3, &fields).await.unwrap(),
        Start::Started { generation: 2 }
    );
    // The first attempt wakes up: it can neither renew nor release the
    // second one's lease, nor record its outcome.
    assert!(!s.renew_lease("j2", "w1/a", ttl).await.unwrap());
    s.release_lease("j2", "w1/a").await.unwrap();
    assert_eq!(s.lease_holder("j2").await.unwrap().as_deref(), Some("w2/b"));
    let e = s
        .transition_fenced("j2", Event::Succeed, Some(1), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(e, StateError::Superseded { generation: 1, .. }),
        "{e}"
    );
    assert_eq!(s.state("j2").await.unwrap(), Some(JobState::Running));
    s.transition_fenced("j2", Event::Succeed, Some(2), &[])
        .await
        .unwrap();
    s.release_lease("j2", "w2/b").await.unwrap();
    assert_eq!(
        s.start("j2", "w3/c", ttl, 3, &fields).await.unwrap(),
        Start::Finished(JobState::Succeeded)
    );
    // A pending cancellation is honoured at the start.
    s.register_job("sw", "j4", &[]).await.unwrap();
    s.request_cancel("j4").await.unwrap();
    assert_eq!(
        s.start("j4", "w1/d", ttl, 3, &fields).await.unwrap(),
        Start::Cancelled
    );
    assert_eq!(s.state("j4").await.unwrap(), Some(JobState::Cancelled));
    // Attempts that start and never finish (their worker crashes) are
    // taken over at most `max_takeovers` times; then the job is dead.
    s.register_job("sw", "j5", &[]).await.unwrap();
    let short = Duration::from_millis(50);
    for g in 1..=3 {
        assert_eq!(
            s.start("j5", "w/e", short, 2, &fields).await.unwrap(),
            Start::Started { generation: g }
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_eq!(
        s.start("j5", "w/e", short, 2, &fields).await.unwrap(),
        Start::Abandoned(3)
    );
    let r = s.record("j5").await.unwrap().unwrap();
    assert_eq!(r.state, Some(JobState::Dead));
    assert!(r.error.contains("abandoned by 3 attempt(s)"), "{r:?}");
    // A lease that lapsed while its worker's heartbeat lives (a Redis
    // outage, a stall) is taken over without counting as a crash.
    s.register_job("sw", "j6", &[]).await.unwrap();
    let alive = WorkerInfo {
        id: "w-alive".into(),
        host: "h".into(),
        devices: "cpu".into(),
        version: "0".into(),
        jobs: "j6".into(),
        heartbeat_ms: 0,
    };
    s.heartbeat(&alive, Duration::from_millis(900))
        .await
        .unwrap();
    let on_alive = [("worker", "w-alive".to_string())];
    for g in 1..=4 {
        assert_eq!(
            s.start("j6", &format!("w-alive/{g}"), short, 2, &on_alive)
                .await
                .unwrap(),
            Start::Started { generation: g }
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let r = s.job("j6").await.unwrap();
    assert_eq!(
        r.get("takeovers").map(String::as_str).unwrap_or("0"),
        "0",
        "{r:?}"
    );
    // Its heartbeat gone, the next takeover counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.start("j6", "w-next/5", short, 2, &on_alive)
            .await
            .unwrap(),
        Start::Started { generation: 5 }
    );
    let r = s.job("j6").await.unwrap();
    assert_eq!(r["takeovers"], "1", "{r:?}");
    // A Redis restored from older files can lack a live worker's
    // heartbeat: a start by the very process that held the job (same
    // `instance`) is no crash; one by another process is.
    s.register_job("sw", "j7", &[]).await.unwrap();
    let process = |p: &str| {
        [
            ("worker", "w-lost".to_string()),
            ("instance", p.to_string()),
        ]
    };
    for (g, p, takeovers) in [(1, "p1", "0"), (2, "p1", "0"), (3, "p2", "1")] {
        assert_eq!(
            s.start("j7", &format!("w-lost/{g}"), short, 2, &process(p))
                .await
                .unwrap(),
            Start::Started { generation: g }
        );
        let r = s.job("j7").await.unwrap();
        assert_eq!(
            r.get("takeovers").map(String::as_str).unwrap_or("0"),
            takeovers,
            "start {g} by {p}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(!s.leased("j4").await.unwrap());
    let r = s.record("j2").await.unwrap().unwrap();
    assert_eq!((r.generation, r.state), (2, Some(JobState::Succeeded)));

    // Workers vanish when their heartbeat stops.
    let w = WorkerInfo {
        id: "w1".into(),
        host: "h".into(),
        devices: "cpu".into(),
        version: "0".into(),
        jobs: "".into(),
        heartbeat_ms: 0,
    };
    s.heartbeat(&w, Duration::from_millis(300)).await.unwrap();
    assert_eq!(s.workers().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.workers().await.unwrap().is_empty());

    s.request_cancel("j3").await.unwrap();
    assert!(s.cancel_requested("j3").await.unwrap());
    s.clear_cancel("j3").await.unwrap();
    assert!(!s.cancel_requested("j3").await.unwrap());

    s.event("sw", &[("job", "j1".into()), ("epoch", "1".into())])
        .await
        .unwrap();
    s.event("sw", &[("job", "j1".into()), ("epoch", "2".into())])
        .await
        .unwrap();
    let all = s.events("sw", "0").await.unwrap();
    assert_eq!(all.len(), 2);
    let after = s.events("sw", &all[0].0).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1["epoch"], "2");

    s.delete_namespace().await.unwrap();
    assert!(s.sweeps().await.unwrap().is_empty());
}

/// Cancel is one step and wins over the running attempt's hand-back: a
/// queued job is cancelled before any start can take it; a running one is
/// asked to stop and a later start honours that; a job cancelled while its
/// attempt runs cannot be handed back to the queue, and a dead letter
/// cannot override a running attempt.
#[tokio::test]
async fn cancel_wins_over_hand_back_and_dead_letters_spare_running_jobs() {
    use services::state::Cancel;
    let s = StateStore::connect(REDIS, &unique("cancel")).await.unwrap();
    let lease = Duration::from_secs(30);
    for j in ["queued", "running", "revived", "dead-letter"] {
        registered(&s, j).await;
    }
    // Queued: cancelled at once; a delivery that comes later does not run.
    assert_eq!(s.cancel("queued").await.unwrap(), Cancel::Cancelled);
    assert_eq!(
        s.start("queued", "tok-a", lease, 3, &[]).await.unwrap(),
        Start::Finished(JobState::Cancelled)
    );
    assert_eq!(
        s.cancel("queued").await.unwrap(),
        Cancel::Finished(JobState::Cancelled)
    );

    // Running: asked to stop; its hand-back requeues it, and the next
    // start finds the request and cancels it.
    let g = match s.start("running", "tok-b", lease, 3, &[]).await.unwrap() {
        Start::Started { generation } => generation,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.cancel("running").await.unwrap(), Cancel::Requested);
    assert!(s.cancel_requested("running").await.unwrap());
    s.transition_fenced("running", Event::HandBack, Some(g), &[])
        .await
        .unwrap();
    s.release_lease("running", "tok-b").await.unwrap();
    assert_eq!(
        s.start("running", "tok-c", lease, 3, &[]).await.unwrap(),
        Start::Cancelled
    );
    assert_eq!(s.state("running").await.unwrap(), Some(JobState::Cancelled));

    // Cancelled while its attempt ran (the attempt saw the request and
    // recorded it): a hand-back of that attempt is refused.
    let g = match s.start("revived", "tok-d", lease, 3, &[]).await.unwrap() {
        Start::Started { generation } => generation,
        other => panic!("{other:?}"),
    };
    s.transition_fenced("revived", Event::Cancel, Some(g), &[])
        .await
        .unwrap();
    let e = s
        .transition_fenced("revived", Event::HandBack, Some(g), &[])
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::Refused { .. }), "{e}");
    assert_eq!(s.state("revived").await.unwrap(), Some(JobState::Cancelled));
    // A producer's retry is what brings a cancelled job back.
    s.transition("revived", Event::Requeue, &[]).await.unwrap();
    assert_eq!(s.state("revived").await.unwrap(), Some(JobState::Queued));

    // The reconciler's dead letter leaves a running job to its attempt.
    s.start("dead-letter", "tok-e", lease, 3, &[])
        .await
        .unwrap();
    assert!(!s.dead_letter("dead-letter", &[]).await.unwrap());
    assert_eq!(
        s.state("dead-letter").await.unwrap(),
        Some(JobState::Running)
    );
    assert!(matches!(
        s.cancel("nosuchjob").await,
        Err(StateError::UnknownJob(_))
    ));
    s.delete_namespace().await.unwrap();
}

/// Redis loses an attempt's START (a crash within its fsync second): the
/// next start gets the same generation. The fence still tells the two
/// attempts apart by their lease tokens: the first cannot record its
/// outcome, the second can, and the record names the second's token.
#[tokio::test]
async fn a_lost_start_does_not_let_two_attempts_share_the_fence() {
    let s = StateStore::connect(REDIS, &unique("lost-start"))
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    registered(&s, "j").await;
    assert_eq!(
        s.start("j", "tok-a", lease, 3, &[]).await.unwrap(),
        Start::Started { generation: 1 }
    );
    // What Redis holds after losing that write.
    s.set_fields(
        "j",
        &[
            ("state", "queued".into()),
            ("generation", "0".into()),
            ("lease_token", String::new()),
        ],
    )
    .await
    .unwrap();
    s.release_lease("j", "tok-a").await.unwrap();
    assert_eq!(
        s.start("j", "tok-b", lease, 3, &[]).await.unwrap(),
        Start::Started { generation: 1 }
    );
    let e = s
        .transition_attempt("j", Event::Succeed, 1, "tok-a", &[])
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::Superseded { .. }), "{e}");
    assert_eq!(s.state("j").await.unwrap(), Some(JobState::Running));
    s.transition_attempt("j", Event::Succeed, 1, "tok-b", &[])
        .await
        .unwrap();
    let r = s.record("j").await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.generation, r.lease_token.as_str()),
        (Some(JobState::Succeeded), 1, "tok-b")
    );
    s.delete_namespace().await.unwrap();
}

/// A lease that expired while its attempt lived (Redis unreachable for
/// longer than the lease) is taken again by that attempt, unless a later
/// attempt has started meanwhile.
#[tokio::test]
async fn an_expired_lease_is_reclaimed_only_by_the_attempt_that_still_owns_the_job() {
    use services::state::Renewal;
    let s = StateStore::connect(REDIS, &unique("reclaim"))
        .await
        .unwrap();
    let short = Duration::from_millis(200);
    registered(&s, "j").await;
    s.start("j", "tok-a", short, 3, &[]).await.unwrap();
    assert_eq!(
        s.renew_or_reclaim("j", "tok-a", 1, short).await.unwrap(),
        Renewal::Renewed
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!s.leased("j").await.unwrap(), "the lease expired");
    assert_eq!(
        s.renew_or_reclaim("j", "tok-a", 1, short).await.unwrap(),
        Renewal::Reclaimed
    );
    assert_eq!(s.lease_holder("j").await.unwrap().as_deref(), Some("tok-a"));
    // Expired again, and another attempt took the job over: lost.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.start("j", "tok-b", short, 3, &[]).await.unwrap(),
        Start::Started { generation: 2 }
    );
    s.release_lease("j", "tok-b").await.unwrap();
    assert_eq!(
        s.renew_or_reclaim("j", "tok-a", 1, short).await.unwrap(),
        Renewal::Lost
    );
    assert!(!s.leased("j").await.unwrap());
    s.delete_namespace().await.unwrap();
}

/// A dead letter in a format this version does not read (a newer
/// message version) still names its job: the reconciler records that job
/// dead instead of leaving it queued for a message that is gone; a letter
/// naming no known job is kept in Redis.
#[tokio::test]
async fn dead_letters_of_another_format_still_find_their_job() {
    let s = StateStore::connect(REDIS, &unique("lenient"))
        .await
        .unwrap();
    let b = Broker::connect(AMQP, Topology::new(&unique("lenient")), 3)
        .await
        .unwrap();
    registered(&s, "future").await;
    b.dead_letter(
        br#"{"version": 99, "job_id": "future"}"#,
        "rejected by worker w: version 99",
    )
    .await
    .unwrap();
    b.dead_letter(
        br#"{"version": 99, "job_id": "nobody"}"#,
        "rejected by worker w: version 99",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.queue_counts(&b.topology.dead_queue()).await.unwrap().0 < 2 {
        assert!(Instant::now() < deadline, "dead letters did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = Reconciler {
        state: &s,
        broker: &b,
        grace: Duration::from_secs(60),
    };
    let report = r.pass().await.unwrap();
    assert_eq!(report.dead.len(), 1, "{report:?}");
    assert_eq!(report.dead[0].0, "future");
    assert_eq!(report.unreadable, 1, "{report:?}");
    let rec = s.record("future").await.unwrap().unwrap();
    assert_eq!(rec.state, Some(JobState::Dead));
    assert!(rec.error.contains("version 99"), "{rec:?}");
    assert_eq!(s.dead_letters().await.unwrap().len(), 1);
    assert_eq!(b.queue_counts(&b.topology.dead_queue()).await.unwrap().0, 0);
    b.delete_topology().await.unwrap();
    s.delete_namespace().await.unwrap();
}

/// A message of job `id`, and the job registered from it.
async fn registered(s: &StateStore, id: &str) -> JobMessage {
    let mut m = job_message();
    m.job_id = id.into();
    s.register_job(
        &m.sweep,
        id,
        &[
            ("device_class", "cpu".into()),
            ("message", String::from_utf8(m.encode()).unwrap()),
        ],
    )
    .await
    .unwrap();
    m
}

#[tokio::test]
async fn reconciler_republishes_stuck_jobs_and_records_dead_letters() {
    let ns = unique("reconcile");
    let s = StateStore::connect(REDIS, &ns).await.unwrap();
    let b = Broker::connect(AMQP, Topology::new(&ns), 1).await.unwrap();
    let long_ago = (common::clock::now_ms() - 600_000).to_string();
    let ttl = Duration::from_secs(60);
    // Queued, never confirmed on the queue.
    registered(&s, "never-published").await;
    s.set_fields("never-published", &[("queued_at", long_ago.clone())])
        .await
        .unwrap();
    // Queued and confirmed: left alone.
    registered(&s, "published").await;
    s.mark_published("published").await.unwrap();
    // Running with an expired lease (its worker died, its message is gone).
    registered(&s, "orphan").await;
    s.start(
        "orphan",
        "w/x",
        Duration::from_millis(1),
        3,
        &[("started_at", long_ago.clone())],
    )
    .await
    .unwrap();
    // Running with a live lease: left alone.
    registered(&s, "alive").await;
    s.start("alive", "w/y", ttl, 3, &[("started_at", long_ago.clone())])
        .await
        .unwrap();
    // Crash-looped: the broker dead-letters it after the delivery limit.
    let looped = registered(&s, "looped").await;
    s.start(
        "looped",
        "w/z",
        Duration::from_millis(1),
        3,
        &[("started_at", long_ago)],
    )
    .await
    .unwrap();
    b.publish_job(&looped).await.unwrap();
    let (_ch, mut consumer) = b.consume(DeviceClass::Cpu, "crash").await.unwrap();
    for _ in 0..2 {
        next_delivery(&mut consumer)
            .await
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    drop(consumer);
    let _ = _ch.close(200, "ok".into()).await;
    b.dead_letter(b"not json", "rejected by worker w: not a job message")
        .await
        .unwrap();
    // Let the broker move the crash-looped message to the dead letters.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.queue_counts(&b.topology.dead_queue()).await.unwrap().0 < 2 {
        assert!(Instant::now() < deadline, "dead letters did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let r = Reconciler {
        state: &s,
        broker: &b,
        grace: Duration::from_secs(1),
    };
    let report = r.pass().await.unwrap();
    assert_eq!(report.published, vec!["never-published".to_string()]);
    assert_eq!(report.republished, vec!["orphan".to_string()]);
    assert_eq!(report.dead.len(), 1, "{report:?}");
    assert_eq!(report.dead[0].0, "looped");
    assert!(report.dead[0].1.contains("delivery_limit"), "{report:?}");
    assert_eq!(report.unreadable, 1);

    // Redis: the dead job carries the broker's reason, the others are as
    // they were; the unreadable letter is kept.
    let looped = s.record("looped").await.unwrap().unwrap();
    assert_eq!(looped.state, Some(JobState::Dead));
    assert!(looped.error.contains("delivery_limit"), "{looped:?}");
    assert!(
        s.record("never-published")
            .await
            .unwrap()
            .unwrap()
            .published_at
            > 0
    );
    assert_eq!(s.state("alive").await.unwrap(), Some(JobState::Running));
    let kept = s.dead_letters().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].contains("not json") && kept[0].contains("rejected by worker"));
    // The broker: the two republished messages on the work queue, nothing
    // in the dead letters.
    assert_eq!(b.queue_counts(&b.topology.dead_queue()).await.unwrap().0, 0);
    let (_ch, mut consumer) = b.consume(DeviceClass::Cpu, "check").await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut consumer).await;
        ids.push(JobMessage::decode(&d.data).unwrap().job_id);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ids.sort();
    assert_eq!(ids, vec!["never-published", "orphan"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.queue_counts(&b.topology.jobs_queue(DeviceClass::Cpu))
            .await
            .unwrap()
            .0,
        0
    );
    // A second pass (within the grace of the republish) finds nothing to do.
    let r = Reconciler {
        grace: Duration::from_secs(60),
        ..r
    };
    assert_eq!(r.pass().await.unwrap(), Default::default());

    b.delete_topology().await.unwrap();
    s.delete_namespace().await.unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Moto(Child);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto_server on `port` and creates `bucket`.
fn start_moto(port: u16, bucket: &str) -> Moto {
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server must be installed (pip install 'moto[server]')");
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let req = format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                if resp.starts_with("HTTP/1.1 200") {
                    return moto;
                }
            }
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn s3_config(port: u16, bucket: &str) -> S3Config {
    S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        bucket: bucket.into(),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some(common::config::Secret::new("test")),
        allow_http: true,
        prefix: "runs".into(),
    }
}

#[tokio::test]
async fn s3_uploads_survive_an_outage() {
    let port = free_port();
    let bucket = "artifacts";
    // Nothing listens yet: the upload retries until the server is back.
    let mut a = Artifacts::s3(&s3_config(port, bucket)).unwrap();
    a.retry = UploadRetry {
        attempts: 12,
        first_delay: Duration::from_millis(300),
        max_delay: Duration::from_secs(2),
    };
    let starter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(2));
        start_moto(port, bucket)
    });
    let t0 = Instant::now();
    a.put_all(
        "sweeps/s/jobs/j",
        &[("Results.csv".into(), b"a,b\n1,2\n".to_vec())],
    )
    .await
    .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "the first attempts must have failed"
    );
    let _moto = starter.await.unwrap();
    assert_eq!(
        &a.get("sweeps/s/jobs/j/Results.csv").await.unwrap()[..],
        b"a,b\n1,2\n"
    );
    assert_eq!(
        a.list("sweeps/s").await.unwrap(),
        vec!["sweeps/s/jobs/j/Results.csv"]
    );
    assert!(a.exists("sweeps/s/jobs/j/Results.csv").await.unwrap());

    // Down for good: the upload gives up with the key and the reason.
    drop(_moto);
    a.retry = UploadRetry {
        attempts: 2,
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(50),
    };
    let e = a
        .put("sweeps/s/x", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("sweeps/s/x") && e.contains("2 attempts"), "{e}");
}

#[tokio::test]
async fn large_files_are_uploaded_in_parts_from_disk() {
    let port = free_port();
    let _moto = start_moto(port, "parts");
    let mut a = Artifacts::s3(&s3_config(port, "parts")).unwrap();
    a.multipart_threshold = 6 << 20;
    a.part_size = 5 << 20;
    let dir = tempfile::tempdir().unwrap();
    // 13 MiB: three parts (5 + 5 + 3); a small file beside it in one PUT.
    let big: Vec<u8> = (0..13u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(dir.path().join("PAI")).unwrap();
    std::fs::write(dir.path().join("trained.safetensors"), &big).unwrap();
    std::fs::write(dir.path().join("PAI/PAI.csv"), b"a,b\n").unwrap();
    a.put_dir("sweeps/s/jobs/j/attempt-1-g1-w", dir.path())
        .await
        .unwrap();
    assert_eq!(
        a.list("sweeps/s/jobs/j").await.unwrap(),
        vec![
            "sweeps/s/jobs/j/attempt-1-g1-w/PAI/PAI.csv",
            "sweeps/s/jobs/j/attempt-1-g1-w/trained.safetensors",
        ]
    );
    let got = a
        .get("sweeps/s/jobs/j/attempt-1-g1-w/trained.safetensors")
        .await
        .unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got[..] == big[..], "the parts were put back together");
    // A missing file is a clear error naming it, not retried.
    let e = a
        .put_file("x", &dir.path().join("nope.bin"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope.bin"), "{e}");
}
