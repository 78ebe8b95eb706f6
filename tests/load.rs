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

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_jobs_over_four_workers_are_all_accounted_for() {
    let n: usize = std::env::var("LOAD_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let s = setup("load");
    let fpb = system_tests::required_env("FPB_DIR", "the Financial PhraseBank directory");
    let data = s.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let all = std::fs::read(std::path::Path::new(&fpb).join("Sentences_AllAgree.txt")).unwrap();
    let lines: Vec<&[u8]> = all.split(|b| *b == b'\n').take(90).collect();
    std::fs::write(data.join("Sentences_AllAgree.txt"), lines.join(&b'\n')).unwrap();
    let model = repo_root().join("tests/fixtures/tiny-bert");
    let seeds: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let file = s.dir.path().join("load.toml");
    std::fs::write(
        &file,
        format!(
            "[sweep]\nname = \"load\"\n[base.model]\narch = \"bert\"\npath = \"{}\"\nfinetune = \"full\"\nmax_len = 32\n\
             [base.data]\npath = \"{}\"\n[base.train]\nepochs = 1\nbatch_size = 16\nlr = 1e-3\nwarmup = 0.0\n\
             [base.tracker]\ntest_every_epoch = false\n[grid]\nseed = [{}]\n",
            model.display(),
            data.display(),
            seeds.join(", ")
        ),
    )
    .unwrap();
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
