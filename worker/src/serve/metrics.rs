//! `worker serve --metrics-addr`: this worker's Prometheus metrics at
//! `/metrics`, in the OpenMetrics text format (`prometheus-client`):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fpb_worker_jobs_total` | counter | `outcome` (`succeeded`, `failed`, `retried`, `handed_back`, `cancelled`, `lease_lost`, `deadline`) |
//! | `fpb_worker_jobs_running` | gauge | |
//! | `fpb_worker_training_steps_total` | counter | |
//! | `fpb_worker_training_samples_total` | counter | (steps × batch size) |
//! | `fpb_worker_training_samples_per_second` | gauge | `device` (the current epoch so far) |
//! | `fpb_worker_epoch_seconds` | histogram | |
//! | `fpb_worker_upload_retries_total` | counter | |
//! | `fpb_worker_lease_renewals_total` | counter | `result` (`renewed`, `reclaimed`, `lost`, `error`) |
//! | `fpb_worker_device_memory_bytes` | gauge | `device`, `kind` (`used`, `total`) |
//!
//! Device memory is read at scrape time: a CUDA device's used and total
//! memory as its driver reports them; on the CPU, the process's resident
//! memory and the machine's total.
//!
//! `/livez` beside it answers 200 while the worker is sound and 503 (naming
//! the job) once a job's thread has hung ([`Metrics::hung`]), for a
//! liveness probe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Renewal {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OnDevice {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Memory {
    device: String,
    kind: &'static str,
}

/// The worker's metrics; cheap to clone (every metric is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    jobs: Family<Outcome, Counter>,
    running: Gauge,
    steps: Counter,
    samples: Counter,
    samples_per_second: Family<OnDevice, Gauge<f64, AtomicU64>>,
    epoch_seconds: Histogram,
    upload_retries: Counter,
    renewals: Family<Renewal, Counter>,
    memory: Family<Memory, Gauge>,
    /// Where upload retries are counted (the artifact store's counter).
    retries_source: Arc<AtomicU64>,
    devices: Vec<String>,
    opened: Arc<Mutex<HashMap<String, candle_core::Device>>>,
    /// Why the worker is no longer live (a hung job), once it is not.
    dead: Arc<Mutex<Option<String>>>,
}

impl Metrics {
    /// Why the worker is no longer live, once it is not.
    pub fn liveness(&self) -> Option<String> {
        self.dead.lock().ok().and_then(|d| d.clone())
    }

    /// The worker is no longer live: `/livez` answers 503 with `why`.
    pub fn hung(&self, why: String) {
        if let Ok(mut d) = self.dead.lock() {
            d.get_or_insert(why);
        }
    }
}

/// How an attempt ended, as a label.
pub fn outcome_label(end: &common::settle::RunEnd, last_attempt: bool) -> &'static str {
    use common::settle::RunEnd;
    match end {
        RunEnd::Succeeded { .. } => "succeeded",
        RunEnd::Permanent(_) => "failed",
        RunEnd::Transient(_) if last_attempt => "failed",
        RunEnd::Transient(_) => "retried",
        RunEnd::Cancelled => "cancelled",
        RunEnd::ShutDown => "handed_back",
        RunEnd::LeaseLost => "lease_lost",
        RunEnd::DeadlineExceeded(_) => "deadline",
    }
}

impl Metrics {
    /// The metrics of a worker on `devices`, with upload retries read from
    /// `upload_retries`.
    pub fn new(devices: &[String], upload_retries: Arc<AtomicU64>) -> Metrics {
        let mut r = Registry::with_prefix("fpb_worker");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            jobs: Family::default(),
            running: Gauge::default(),
            steps: Counter::default(),
            samples: Counter::default(),
            samples_per_second: Family::default(),
            epoch_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            upload_retries: Counter::default(),
            renewals: Family::default(),
            memory: Family::default(),
            retries_source: upload_retries,
            devices: devices.to_vec(),
            opened: Arc::default(),
            dead: Arc::default(),
        };
        r.register("jobs", "Job attempts by how they ended", m.jobs.clone());
        r.register("jobs_running", "Jobs running now", m.running.clone());
        r.register(
            "training_steps",
            "Training steps (batches)",
            m.steps.clone(),
        );
        r.register(
            "training_samples",
            "Training samples (steps times batch size)",
            m.samples.clone(),
        );
        r.register(
            "training_samples_per_second",
            "Training samples per second in the current epoch",
            m.samples_per_second.clone(),
        );
        r.register(
            "epoch_seconds",
            "Seconds per epoch",
            m.epoch_seconds.clone(),
        );
        r.register(
            "upload_retries",
            "Artifact uploads tried again",
            m.upload_retries.clone(),
        );
        r.register(
            "lease_renewals",
            "Lease renewals of running jobs by result",
            m.renewals.clone(),
        );
        r.register(
            "device_memory_bytes",
            "Device memory used and in all",
            m.memory.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn job_started(&self) {
        self.running.inc();
    }

    pub fn job_ended(&self, outcome: &'static str) {
        self.running.dec();
        self.jobs.get_or_create(&Outcome { outcome }).inc();
    }

    /// One training step of `batch` samples; `rate` is the epoch's samples
    /// per second so far.
    pub fn step(&self, device: &str, batch: u64, rate: f64) {
        self.steps.inc();
        self.samples.inc_by(batch);
        self.samples_per_second
            .get_or_create(&OnDevice {
                device: device.to_string(),
            })
            .set(rate);
    }

    pub fn epoch(&self, seconds: f64) {
        self.epoch_seconds.observe(seconds);
    }

    pub fn renewal(&self, result: &'static str) {
        self.renewals.get_or_create(&Renewal { result }).inc();
    }

    /// The metrics as OpenMetrics text, read now.
    pub fn render(&self) -> String {
        let retries = self.retries_source.load(Ordering::Relaxed);
        let seen = self.upload_retries.get();
        if retries > seen {
            self.upload_retries.inc_by(retries - seen);
        }
        for d in &self.devices {
            if let Some((used, total)) = self.device_memory(d) {
                for (kind, v) in [("used", used), ("total", total)] {
                    self.memory
                        .get_or_create(&Memory {
                            device: d.clone(),
                            kind,
                        })
                        .set(v as i64);
                }
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// (used, total) bytes of a device, when it reports them.
    fn device_memory(&self, device: &str) -> Option<(u64, u64)> {
        if device == "cpu" {
            return cpu_memory();
        }
        let mut opened = self.opened.lock().ok()?;
        if !opened.contains_key(device) {
            opened.insert(
                device.to_string(),
                crate::engine::device::open(device).ok()?,
            );
        }
        gpu_memory(opened.get(device)?)
    }
}

/// The process's resident memory and the machine's total (Linux).
fn cpu_memory() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((pages * page, total_kb * 1024))
}

#[cfg(feature = "cuda")]
fn gpu_memory(device: &candle_core::Device) -> Option<(u64, u64)> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some(((total - free) as u64, total as u64))
}

#[cfg(not(feature = "cuda"))]
fn gpu_memory(_device: &candle_core::Device) -> Option<(u64, u64)> {
    None
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let m = m.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&m, &req)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}

/// `/metrics` or 404.
fn respond<B>(m: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, kind, body) = match req.uri().path() {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            m.render(),
        ),
        "/livez" => match m.liveness() {
            None => (200, "text/plain", "ok\n".to_string()),
            Some(why) => (503, "text/plain", format!("{why}\n")),
        },
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /livez\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, kind)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scrapes_show_what_was_counted() {
        let retries = Arc::new(AtomicU64::new(0));
        let m = Metrics::new(&["cpu".to_string()], retries.clone());
        m.job_started();
        m.step("cpu", 32, 100.5);
        m.step("cpu", 32, 120.0);
        m.epoch(3.0);
        m.renewal("renewed");
        retries.store(2, Ordering::Relaxed);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, m.clone(), rx));
        let body = http_get(addr, "/metrics").await;
        for line in [
            "fpb_worker_jobs_running 1",
            "fpb_worker_training_steps_total 2",
            "fpb_worker_training_samples_total 64",
            "fpb_worker_training_samples_per_second{device=\"cpu\"} 120.0",
            "fpb_worker_epoch_seconds_count 1",
            "fpb_worker_upload_retries_total 2",
            "fpb_worker_lease_renewals_total{result=\"renewed\"} 1",
        ] {
            assert!(body.contains(line), "{line} not in\n{body}");
        }
        assert!(
            body.contains("fpb_worker_device_memory_bytes{device=\"cpu\",kind=\"used\"}"),
            "{body}"
        );
        m.job_ended("succeeded");
        let body = http_get(addr, "/metrics").await;
        assert!(body.contains("fpb_worker_jobs_running 0"), "{body}");
        assert!(
            body.contains("fpb_worker_jobs_total{outcome=\"succeeded\"} 1"),
            "{body}"
        );
        assert!(http_get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        assert!(http_get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
        m.hung("hung: job j made no progress for 90 s".into());
        m.hung("hung: a second reason".into());
        let live = http_get(addr, "/livez").await;
        assert!(live.starts_with("HTTP/1.1 503"), "{live}");
        assert!(
            live.ends_with("hung: job j made no progress for 90 s\n"),
            "{live}"
        );
        tx.send(true).unwrap();
        server.await.unwrap();
    }

    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
