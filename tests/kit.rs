//! What the fault tests share: a namespace with its own S3 server, sweeps
//! of small real jobs, worker processes, waits on Redis, and the audit
//! every scenario ends with.
#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use services::broker::Broker;
use services::state::StateStore;
use system_tests::{binary, free_port, required_env, start_moto, Killed};

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379";

pub struct Setup {
    pub env: HashMap<String, String>,
    pub ns: String,
    pub _moto: Killed,
    pub dir: tempfile::TempDir,
}

pub fn setup(tag: &str) -> Setup {
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
pub fn sweep(s: &Setup, name: &str, epochs: usize, seeds: &str) -> std::path::PathBuf {
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

pub fn worker(s: &Setup, id: &str) -> Killed {
    worker_with(s, id, "cpu", &[])
}

/// A `worker serve` on `devices` with a 6 s lease, 1 s heartbeats, two
/// threads unless `extra` says otherwise, and `extra` flags.
pub fn worker_with(s: &Setup, id: &str, devices: &str, extra: &[&str]) -> Killed {
    let threads: &[&str] = if extra.contains(&"--threads") {
        &[]
    } else {
        &["--threads", "2"]
    };
    Killed(
        Command::new(binary("worker"))
            .args([
                "serve",
                "--devices",
                devices,
                "--worker-id",
                id,
                "--lease-secs",
                "6",
                "--heartbeat-secs",
                "1",
            ])
            .args(threads)
            .args(extra)
            .envs(&s.env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// A `worker serve` as [`worker_with`] makes it, whose log lines (echoed
/// to the test's stderr) also come through the returned channel.
pub fn worker_logged(
    s: &Setup,
    id: &str,
    extra: &[&str],
) -> (Killed, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(binary("worker"))
        .args(["serve", "--devices", "cpu", "--worker-id", id])
        .args([
            "--lease-secs",
            "6",
            "--heartbeat-secs",
            "1",
            "--threads",
            "2",
        ])
        .args(extra)
        .envs(&s.env)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
            let _ = tx.send(l);
        }
    });
    (Killed(child), rx)
}

/// Waits (at most `secs`) for a log line containing `needle`.
pub fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?} in {secs} s: {e}"),
        }
    }
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`) to a process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} failed");
}

/// The `running` events of a job: one per started attempt, with its
/// generation.
pub async fn starts(state: &StateStore, sweep: &str, job: &str) -> Vec<String> {
    state
        .events(sweep, "0")
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e)| {
            e.get("job").map(String::as_str) == Some(job)
                && e.get("state").map(String::as_str) == Some("running")
        })
        .map(|(_, e)| e.get("generation").cloned().unwrap_or_default())
        .collect()
}

pub fn submit(s: &Setup, file: &std::path::Path) {
    let o = Command::new(binary("producer"))
        .args(["submit", file.to_str().unwrap(), "--device", "cpu"])
        .envs(&s.env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

pub async fn wait_for(
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

/// Waits until `job` has succeeded, reading through a Redis that restarts
/// meanwhile (this client's first reads after a restart may fail).
pub async fn wait_succeeded_through_restart(
    state: &StateStore,
    job: &str,
    secs: u64,
) -> HashMap<String, String> {
    wait_through_restart(state, job, secs, |h| {
        h.get("state").map(String::as_str) == Some("succeeded")
    })
    .await
}

/// Waits until `job`'s record meets `done`, reading through a Redis that
/// restarts meanwhile.
pub async fn wait_through_restart(
    state: &StateStore,
    job: &str,
    secs: u64,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match state.job(job).await {
            Ok(h) if done(&h) => return h,
            last => assert!(
                Instant::now() < deadline,
                "{job}: condition not met in {secs} s after Redis came back: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The number of `succeeded` events of a sweep, once the worker has written
/// them (the event follows the state change by a few milliseconds).
pub async fn succeeded_events(state: &StateStore, sweep: &str, expected: usize) -> usize {
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
pub async fn audit(
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
    let node = env.get("TEST_RABBITMQ_NODE").map(String::as_str);
    queues_drain(&broker.topology.prefix, node).await;
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

/// Waits until no queue of the namespace holds a message (a parked
/// duplicate comes back from its delay queue and is dropped), at most 90 s.
pub async fn queues_drain(prefix: &str, node: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = system_tests::queued_messages(prefix, node);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "messages left: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn training(h: &HashMap<String, String>) -> bool {
    h.get("state").map(String::as_str) == Some("running") && h.get("step").is_some_and(|s| s != "0")
}

/// A private Redis on `port` without persistence (the test stops it).
pub fn start_redis(port: u16) -> Killed {
    let k = Killed(
        Command::new("redis-server")
            .process_group(0)
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

/// A redis-server of a test's own that keeps its data as a production one
/// would (an append-only file, `appendfsync everysec`). [`snapshot`] copies
/// its files as they are now (the process stopped meanwhile, so that the
/// copy is whole); [`forget`] kills it and starts it again from that copy:
/// what a host crash or a failover to a replica a moment behind leaves,
/// every write since the snapshot lost.
///
/// [`snapshot`]: ForgetfulRedis::snapshot
/// [`forget`]: ForgetfulRedis::forget
pub struct ForgetfulRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    server: Option<Killed>,
}

impl ForgetfulRedis {
    pub fn start() -> ForgetfulRedis {
        let mut r = ForgetfulRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            server: None,
        };
        std::fs::create_dir(r.data()).unwrap();
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn snap(&self) -> std::path::PathBuf {
        self.dir.path().join("snapshot")
    }

    fn spawn(&mut self) {
        let server = Command::new("redis-server")
            .process_group(0)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.data().to_str().unwrap(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.server = Some(Killed(server));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn snapshot(&self) {
        let server = &self.server.as_ref().unwrap().0;
        signal(server, "STOP");
        let _ = std::fs::remove_dir_all(self.snap());
        let copied = Command::new("cp")
            .args([
                "-a",
                self.data().to_str().unwrap(),
                self.snap().to_str().unwrap(),
            ])
            .status();
        signal(server, "CONT");
        assert!(copied.unwrap().success(), "cannot copy Redis's files");
    }

    /// Kills it (SIGKILL) and starts it again from its files.
    pub fn restart(&mut self) {
        self.down();
        self.up();
    }

    /// Kills it (SIGKILL): clients' connections are refused until [`up`].
    ///
    /// [`up`]: ForgetfulRedis::up
    pub fn down(&mut self) {
        let mut server = self.server.take().unwrap();
        server.0.kill().unwrap();
        server.0.wait().unwrap();
    }

    /// Starts it again from its files after [`down`].
    ///
    /// [`down`]: ForgetfulRedis::down
    pub fn up(&mut self) {
        self.spawn();
    }

    /// Sends the running server a signal (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        signal(&self.server.as_ref().unwrap().0, name);
    }

    pub fn forget(&mut self) {
        let mut server = self.server.take().unwrap();
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        std::fs::remove_dir_all(self.data()).unwrap();
        let copied = Command::new("cp")
            .args([
                "-a",
                self.snap().to_str().unwrap(),
                self.data().to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(copied.success(), "cannot restore Redis's files");
        self.spawn();
    }
}

/// A RabbitMQ node of a test's own (its own name, ports and data folder),
/// so that stopping it never touches the shared broker. Stopped and its
/// folder removed when dropped.
pub struct PrivateBroker {
    pub node: String,
    pub port: u16,
    base: std::path::PathBuf,
    env: Vec<(String, String)>,
    server: std::sync::Mutex<Option<std::process::Child>>,
}

impl PrivateBroker {
    /// Starts a node on a free port (about 20 s).
    pub fn start(tag: &str) -> PrivateBroker {
        let node = format!("fpb-{tag}-{}@localhost", std::process::id());
        let port = free_port();
        let base = std::env::temp_dir().join(format!("fpb-rmq-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for d in ["mnesia", "log"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            base.join("rabbit.conf"),
            format!("listeners.tcp.default = {port}\n"),
        )
        .unwrap();
        // The server drops to the rabbitmq user: it must own its folders.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", base.to_str().unwrap()])
            .status();
        let p = |s: &str| base.join(s).display().to_string();
        let env = vec![
            ("RABBITMQ_NODENAME".to_string(), node.clone()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), free_port().to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), p("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), p("log")),
            ("RABBITMQ_PID_FILE".into(), p("pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), p("enabled_plugins")),
            ("RABBITMQ_FEATURE_FLAGS_FILE".into(), p("feature_flags")),
            ("RABBITMQ_CONFIG_FILE".into(), p("rabbit")),
        ];
        let b = PrivateBroker {
            node,
            port,
            base,
            env,
            server: Default::default(),
        };
        b.launch();
        b
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn ctl(&self, args: &[&str]) -> bool {
        Command::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn launch(&self) {
        let child = Command::new("rabbitmq-server")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server on PATH");
        *self.server.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.ctl(&["await_startup", "--timeout", "5"]) && self.ctl(&["list_queues"]) {
                return;
            }
            assert!(Instant::now() < deadline, "{} did not start", self.node);
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn stop(&self) {
        self.ctl(&["stop"]);
        if let Some(mut child) = self.server.lock().unwrap().take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node and starts it again on the same data.
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
