//! Load: a sweep of `LOAD_JOBS` (default 1000) real jobs on a tiny
//! randomly initialised BERT (`tests/fixtures/tiny-bert`, made by
//! `scripts/make_tiny_model.py`) and 90 sentences, over four workers on the
//! real RabbitMQ, Redis and S3 (moto). Every job must be accounted for:
//! succeeded once, started once, one attempt folder, nothing left on any
//! queue. Prints jobs per second and the queue overhead per job (slot time
//! not spent inside a job).

mod kit;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::queue::Topology;
use kit::*;
use services::broker::Broker;
use services::state::StateStore;
use system_tests::repo_root;

/// A sweep `name` of `n` one-epoch jobs (seeds 0..n) on the tiny BERT and
/// the first 90 sentences.
fn tiny_sweep(s: &Setup, name: &str, n: usize) -> std::path::PathBuf {
    let fpb = system_tests::required_env("FPB_DIR", "the Financial PhraseBank directory");
    let data = s.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let all = std::fs::read(std::path::Path::new(&fpb).join("Sentences_AllAgree.txt")).unwrap();
    let lines: Vec<&[u8]> = all.split(|b| *b == b'\n').take(90).collect();
    std::fs::write(data.join("Sentences_AllAgree.txt"), lines.join(&b'\n')).unwrap();
    let model = repo_root().join("tests/fixtures/tiny-bert");
    let seeds: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let file = s.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[sweep]\nname = \"{name}\"\n[base.model]\narch = \"bert\"\npath = \"{}\"\nfinetune = \"full\"\nmax_len = 32\n\
             [base.data]\npath = \"{}\"\n[base.train]\nepochs = 1\nbatch_size = 16\nlr = 1e-3\nwarmup = 0.0\n\
             [base.tracker]\ntest_every_epoch = false\n[grid]\nseed = [{}]\n",
            model.display(),
            data.display(),
            seeds.join(", ")
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_jobs_over_four_workers_are_all_accounted_for() {
    let n: usize = std::env::var("LOAD_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let s = setup("load");
    let file = tiny_sweep(&s, "load", n);
    let state = StateStore::connect(REDIS, &s.ns).await.unwrap();
    let t_submit = Instant::now();
    submit(&s, &file);
    let submit_secs = t_submit.elapsed().as_secs_f64();
    let jobs = state.sweep_jobs("load").await.unwrap();
    assert_eq!(jobs.len(), n);

    let t0 = Instant::now();
    let _workers: Vec<_> = (0..4)
        .map(|i| worker_with(&s, &format!("load{i}"), "cpu", &["--threads", "1"]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let records = loop {
        let mut done = Vec::new();
        for j in &jobs {
            let r = state.record(j).await.unwrap().unwrap();
            assert!(
                !matches!(
                    r.state,
                    Some(common::state::JobState::Failed | common::state::JobState::Dead)
                ),
                "{r:?}"
            );
            if r.state == Some(common::state::JobState::Succeeded) {
                done.push(r);
            }
        }
        if done.len() == n {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} jobs done in time",
            done.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let wall = t0.elapsed().as_secs_f64();

    // Accounted for: each started once, one success event each, one
    // attempt folder each, nothing left on any queue.
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut busy = 0.0;
    for r in &records {
        assert_eq!(r.generation, 1, "{r:?}");
        *per_worker.entry(r.worker.clone()).or_default() += 1;
        let h = state.job(&r.id).await.unwrap();
        let finished: u64 = h["finished_at"].parse().unwrap();
        busy += finished.saturating_sub(r.started_at) as f64 / 1000.0;
    }
    let events = state.events("load", "0").await.unwrap();
    let succeeded = events
        .iter()
        .filter(|(_, e)| e.get("state").map(String::as_str) == Some("succeeded"))
        .count();
    assert_eq!(succeeded, n, "one succeeded event per job");
    let services = common::config::Services::from_lookup(|k| s.env.get(k).cloned()).unwrap();
    let s3 = services::artifacts::Artifacts::s3(services.s3.as_ref().unwrap()).unwrap();
    let keys = s3.list("sweeps/load/jobs").await.unwrap();
    let mut folders: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for k in &keys {
        let parts: Vec<&str> = k.splitn(6, '/').collect();
        folders
            .entry(parts[3].to_string())
            .or_default()
            .insert(parts[4].to_string());
    }
    assert_eq!(folders.len(), n);
    for r in &records {
        let f = &folders[&r.id];
        assert_eq!(f.len(), 1, "{}: {f:?}", r.id);
        assert!(r.artifacts.ends_with(f.iter().next().unwrap()), "{r:?}");
    }
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 3)
        .await
        .unwrap();
    queues_drain(&s.ns, None).await;
    assert!(
        per_worker.len() == 4,
        "every worker took jobs: {per_worker:?}"
    );
    let overhead = (wall * 4.0 - busy) / n as f64;
    println!(
        "load: {n} jobs, 4 workers (1 thread each, 2 cores): submit {submit_secs:.1} s ({:.0} jobs/s), \
         run {wall:.1} s = {:.2} jobs/s; mean job {:.3} s in a slot; queue overhead {:.3} s per job; per worker {per_worker:?}",
        n as f64 / submit_secs,
        n as f64 / wall,
        busy / n as f64,
        overhead
    );
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}

/// What the chaos schedule did.
#[derive(Debug, Default)]
struct Faults {
    worker_kills: usize,
    connection_closes: usize,
    redis_kills: usize,
}

/// Chaos: `CHAOS_JOBS` (default 300) tiny jobs over four workers while a
/// schedule seeded by `CHAOS_SEED` (default 7) brings a fault every 1.5 to
/// 4 s: a worker SIGKILLed (and started again under a new id, as a
/// restarted container would be), every broker connection closed, or Redis
/// (append-only file, `appendfsync everysec`) SIGKILLed and started again
/// from its files, at least once. The jobs' delivery limit is raised
/// (`QUEUE_DELIVERY_LIMIT` 50) so that a job caught by several kills is not
/// recorded dead: that policy has its own test. Every job must end
/// succeeded exactly once (one success event, one whole attempt folder,
/// the one its record names) and no queue may hold a message.
/// `scripts/chaos.sh` runs the long version; its figures are in
/// `docs/results/chaos.txt`.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_every_job_exactly_once() {
    use rand::{Rng, SeedableRng};
    let var = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = var("CHAOS_JOBS", 300) as usize;
    let seed = var("CHAOS_SEED", 7);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut s = setup("chaos");
    let mut redis = ForgetfulRedis::start();
    s.env.insert("REDIS_URL".into(), redis.url());
    s.env.insert("QUEUE_DELIVERY_LIMIT".into(), "50".into());
    let file = tiny_sweep(&s, "chaos", n);
    let state = StateStore::connect(&redis.url(), &s.ns).await.unwrap();
    submit(&s, &file);
    let jobs = state.sweep_jobs("chaos").await.unwrap();
    assert_eq!(jobs.len(), n);

    let flags = [
        "--threads",
        "1",
        "--reconcile-secs",
        "2",
        "--reconcile-grace-secs",
        "8",
    ];
    let t0 = Instant::now();
    let mut workers: Vec<_> = (0..4)
        .map(|i| worker_with(&s, &format!("chaos{i}-0"), "cpu", &flags))
        .collect();
    let mut restarts = [0usize; 4];
    let mut faults = Faults::default();
    let deadline = Instant::now() + Duration::from_secs(600 + n as u64);
    loop {
        let mut done = 0;
        for j in &jobs {
            match state.record(j).await {
                Ok(Some(r)) => {
                    assert!(
                        !matches!(
                            r.state,
                            Some(common::state::JobState::Failed | common::state::JobState::Dead)
                        ),
                        "{r:?}"
                    );
                    done += usize::from(r.state == Some(common::state::JobState::Succeeded));
                }
                // Redis is coming back.
                _ => break,
            }
        }
        if done == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} jobs done in time: {faults:?}"
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
        let pick = rng.random_range(0..10);
        if faults.redis_kills == 0 && faults.worker_kills + faults.connection_closes >= 3
            || pick == 9
        {
            redis.restart();
            faults.redis_kills += 1;
        } else if pick < 6 {
            let i = rng.random_range(0..4);
            restarts[i] += 1;
            // The old process is SIGKILLed as its guard drops.
            workers[i] = worker_with(&s, &format!("chaos{i}-{}", restarts[i]), "cpu", &flags);
            faults.worker_kills += 1;
        } else {
            let o = std::process::Command::new("rabbitmqctl")
                .args(["close_all_connections", "chaos"])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("rabbitmqctl (the RabbitMQ server's CLI) must be installed");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            faults.connection_closes += 1;
        }
    }
    let wall = t0.elapsed().as_secs_f64();

    // The audit, with the workers still serving (a parked copy comes back
    // and is dropped).
    queues_drain(&s.ns, None).await;
    let events = state.events("chaos", "0").await.unwrap();
    let mut successes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, e) in &events {
        if e.get("state").map(String::as_str) == Some("succeeded") {
            *successes.entry(e["job"].clone()).or_default() += 1;
        }
    }
    let services = common::config::Services::from_lookup(|k| s.env.get(k).cloned()).unwrap();
    let s3 = services::artifacts::Artifacts::s3(services.s3.as_ref().unwrap()).unwrap();
    let keys = s3.list("sweeps/chaos/jobs").await.unwrap();
    let whole = common::artifacts::complete_keys(&keys);
    let folder_of = |k: &str| -> Option<(String, String)> {
        let parts: Vec<&str> = k.splitn(6, '/').collect();
        (parts.len() == 6 && parts[4].starts_with("attempt-"))
            .then(|| (parts[3].to_string(), parts[4].to_string()))
    };
    let mut folders: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (job, f) in whole.iter().filter_map(|k| folder_of(k)) {
        folders.entry(job).or_default().insert(f);
    }
    let all_folders: std::collections::BTreeSet<_> =
        keys.iter().filter_map(|k| folder_of(k)).collect();
    let whole_count: usize = folders.values().map(|f| f.len()).sum();
    let (mut reruns, mut takeovers) = (0, 0);
    for j in &jobs {
        let r = state.record(j).await.unwrap().unwrap();
        assert_eq!(r.state, Some(common::state::JobState::Succeeded), "{r:?}");
        assert_eq!(successes.get(j), Some(&1), "{j}: one success event");
        let f = folders.get(j).cloned().unwrap_or_default();
        assert_eq!(f.len(), 1, "{j}: one whole attempt folder: {f:?}");
        assert!(r.artifacts.ends_with(f.iter().next().unwrap()), "{r:?}");
        reruns += usize::from(r.generation > 1);
        let h = state.job(j).await.unwrap();
        takeovers += h
            .get("takeovers")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(0);
    }
    println!(
        "chaos: seed {seed}, {n} jobs, 4 workers (1 thread each), {} s: {} worker SIGKILLs, {} closes of every broker connection, \
         {} Redis SIGKILLs; every job succeeded once with one whole attempt folder, queues empty; \
         {reruns} jobs started more than once, {takeovers} takeovers counted as crashes, {} folders left without a manifest",
        wall.round(),
        faults.worker_kills,
        faults.connection_closes,
        faults.redis_kills,
        all_folders.len() - whole_count
    );
    assert_eq!(all_folders.len(), whole_count, "partial folders removed");
    drop(workers);
    let broker = Broker::connect(AMQP, Topology::new(&s.ns), 50)
        .await
        .unwrap();
    broker.delete_topology().await.unwrap();
    state.delete_namespace().await.unwrap();
}
