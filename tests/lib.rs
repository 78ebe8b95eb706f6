//! Helpers for the end-to-end tests: locating the workspace's binaries
//! (built by the same `cargo test --workspace` run) and the test inputs.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the test executable's target folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target folder");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A required environment variable, with the reason it is needed.
pub fn required_env(name: &str, why: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set: {why} (scripts/test.sh sets it)"))
}

/// A child process killed when dropped, with its process group when it
/// leads one (servers started with `process_group(0)`, whose own children,
/// e.g. MLflow's uvicorn and job runners, would otherwise outlive it).
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts moto_server on `port` and creates `bucket`.
pub fn start_moto(port: u16, bucket: &str) -> Killed {
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("moto_server must be installed (pip install 'moto[server]')");
    let k = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let req = format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                if resp.starts_with("HTTP/1.1 200") {
                    return k;
                }
            }
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Queues whose name starts with `prefix` that hold messages (ready or
/// unacknowledged), with their count, read with `rabbitmqctl` (on `node`,
/// or the default one): the jobs, delay and dead-letter queues alike.
pub fn queued_messages(prefix: &str, node: Option<&str>) -> Vec<(String, u64)> {
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(n) = node {
        cmd.args(["-n", n]);
    }
    let o = cmd
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("rabbitmqctl (the RabbitMQ server's CLI) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, n) = (parts.next()?, parts.next()?.parse::<u64>().ok()?);
            (name.starts_with(&format!("{prefix}.")) && n > 0).then(|| (name.to_string(), n))
        })
        .collect()
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, or `None`
/// when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Starts an MLflow tracking server on `port` with a sqlite store and
/// served artifacts under `dir`, and waits until it answers.
pub fn start_mlflow(port: u16, dir: &std::path::Path) -> Killed {
    let child = Command::new("mlflow")
        .args([
            "server",
            "--backend-store-uri",
            &format!("sqlite:///{}/mlflow.db", dir.display()),
            "--artifacts-destination",
            &dir.join("artifacts").display().to_string(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("mlflow must be installed (pip install mlflow; scripts/test.sh does)");
    let k = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !matches!(http_get(port, "/health"), Some((200, _))) {
        assert!(
            Instant::now() < deadline,
            "mlflow server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    k
}

/// Prometheus text as `name{labels}` → value (comments left out).
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}
