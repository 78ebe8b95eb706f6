//! `worker`: runs fine-tuning jobs with candle.
//!
//! - `worker run SWEEP.toml` runs every job of a sweep locally, with no
//!   services, writing artifacts under `--out` (default `runs/`).
//! - `worker serve` consumes jobs from RabbitMQ, one slot per device.
//! - `worker bench` measures training and inference speed on one model.
//! - `worker predict --run DIR|s3://...` labels sentences with a finished run.

use anyhow::Context;
use clap::{Parser, Subcommand};
use worker::{bench, predict, run, serve};

#[derive(Parser)]
#[command(
    name = "worker",
    version,
    about = "Fine-tunes transformer classifiers with candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every job of a sweep file locally (no queue, no services).
    Run(run::RunArgs),
    /// Measure training samples/s and inference latency of a model.
    Bench(bench::BenchArgs),
    /// Label sentences with a finished run (its folder or S3 address):
    /// one JSON line per sentence on stdout.
    Predict(predict::PredictArgs),
    /// Consume jobs from RabbitMQ (AMQP_URL), record state in Redis
    /// (REDIS_URL) and upload artifacts to S3 (AWS_*).
    Serve(serve::ServeArgs),
}

/// Keeps freed tensor buffers in the heap instead of returning them to the
/// kernel after every op: training allocates and frees the same large
/// buffers thousands of times per step, and fresh pages cost page faults
/// (measured: 14% faster training steps on CPU).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc allocator thresholds; called once
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Sizes the CPU thread pools, before any other thread exists: candle's
/// kernels read `RAYON_NUM_THREADS`, OpenBLAS `OPENBLAS_NUM_THREADS`, MKL
/// `MKL_NUM_THREADS`, and rayon's global pool is built once. Idle pool threads park soon instead
/// of spinning, so that they leave the cores to whoever has work: candle's
/// elementwise pool (25 000 spins by default) and OpenBLAS's threads (2^28
/// cycles of `sched_yield` by default; read when the library is opened, on
/// the first product). Variables already set are kept.
fn configure_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let mut settings = vec![
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000".to_string()),
        ("OPENBLAS_THREAD_TIMEOUT", "4".to_string()),
        // MKL's OpenMP threads spin 200 ms after each product by default.
        ("KMP_BLOCKTIME", "1".to_string()),
    ];
    if let Some(n) = threads {
        settings.push(("RAYON_NUM_THREADS", n.to_string()));
        settings.push(("OPENBLAS_NUM_THREADS", n.to_string()));
        settings.push(("MKL_NUM_THREADS", n.to_string()));
    }
    for (var, value) in settings {
        if var == "RAYON_NUM_THREADS" || std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
    let Some(n) = threads else {
        return Ok(());
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("cannot size the CPU thread pool")
}

/// The exit status of a worker that ended because a job's thread hung.
const EXIT_HUNG: i32 = 70;

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    configure_threads(match &cli.command {
        Command::Run(a) => a.threads,
        Command::Bench(a) => Some(a.threads),
        Command::Predict(a) => a.threads,
        Command::Serve(a) => a.threads,
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(mut args) => {
            worker::engine::allow_spec_env(std::mem::take(&mut args.spec_env));
            run::main(args)
        }
        Command::Bench(args) => bench::main(args),
        Command::Predict(args) => predict::main(args),
        Command::Serve(args) => {
            worker::engine::allow_spec_env(args.spec_env.clone());
            let mut services = common::config::Services::from_env()?;
            if let Some(dir) = &args.artifacts {
                services.artifacts_dir = dir.display().to_string();
            }
            tracing::info!(?services, "configuration");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    tracing::info!("shutting down: the running job is handed back");
                    let _ = tx.send(true);
                });
                serve::serve(args, services, rx).await
            })
            .inspect_err(|e| {
                if let Some(h) = e.downcast_ref::<serve::Hung>() {
                    // A hung job's thread would keep the runtime (and the
                    // process) waiting: end here, for the supervisor.
                    tracing::error!("{h}");
                    std::process::exit(EXIT_HUNG);
                }
            })
        }
    }
}
