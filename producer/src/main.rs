//! `producer`: the researcher's command line. Expands sweep files into
//! jobs, publishes them on RabbitMQ, shows state and progress from Redis,
//! cancels and retries jobs, and fetches and aggregates artifacts from
//! S3/MinIO. Services come from `AMQP_URL`, `REDIS_URL`, `AWS_*` and
//! `QUEUE_PREFIX` (see the README).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{ContentArrangement, Table};
use common::artifacts::sweep_prefix;
use common::clock::now_ms;
use common::config::Services;
use common::job::{DeviceClass, JobMessage};
use common::queue::Topology;
use common::state::{Event, JobState};
use common::sweep::Sweep;
use services::artifacts::Artifacts;
use services::broker::Broker;
use services::reconcile::Reconciler;
use services::state::StateStore;

#[derive(Parser)]
#[command(
    name = "producer",
    version,
    about = "Plans, runs and tracks fine-tuning sweeps"
)]
struct Cli {
    /// The folder that keeps the artifacts when no bucket (`AWS_BUCKET`) is
    /// set; overrides `ARTIFACTS` (default `artifacts`).
    #[arg(long, global = true)]
    artifacts: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `--artifacts`, when given (set once, before any command runs).
static ARTIFACTS_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

#[derive(Clone, Copy, ValueEnum)]
enum Class {
    Gpu,
    Cpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Val,
    Test,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a sweep file and list the jobs it expands to.
    Expand {
        sweep: PathBuf,
        /// Print one JSON object per job (id, axes, config hash, full spec).
        #[arg(long)]
        json: bool,
    },
    /// Queue every job of a sweep that has not succeeded yet.
    Submit {
        sweep: PathBuf,
        /// List what would be queued, queue nothing.
        #[arg(long)]
        dry_run: bool,
        /// The device class whose workers run the jobs.
        #[arg(long, value_enum, default_value = "gpu")]
        device: Class,
    },
    /// Jobs and their progress (all sweeps without an argument).
    Status {
        sweep: Option<String>,
        /// Refresh every few seconds until every job has finished.
        #[arg(long)]
        watch: bool,
    },
    /// Live workers.
    Workers,
    /// Cancel a job, or every unfinished job of a sweep.
    Cancel { target: String },
    /// Queue failed, dead and cancelled jobs of a sweep (or one job) again.
    Retry {
        target: String,
        /// Instead: publish again the message of every queued or running
        /// job that no live worker holds (a message lost with a broker).
        #[arg(long)]
        stuck: bool,
    },
    /// One reconciler pass: republish jobs left with no message (running
    /// with an expired lease, queued but never confirmed on the queue) and
    /// record dead-lettered jobs `dead` with the broker's reason.
    Reconcile {
        /// Seconds a job must have looked stuck.
        #[arg(long, default_value_t = 120)]
        grace_secs: u64,
    },
    /// Score a finished job's trained parameters again on a split, with
    /// latency (a `validate` job; its results land next to the job's).
    Validate {
        /// The trained job (its spec and, without --uri, its parameters).
        job: String,
        #[arg(long, value_enum, default_value = "test")]
        split: SplitArg,
        /// Trained parameters elsewhere: `s3://<bucket>/<key>` of a trained.safetensors.
        #[arg(long)]
        uri: Option<String>,
        #[arg(long, value_enum, default_value = "gpu")]
        device: Class,
        /// Score with every dendrite term left out: what the dendrites of a
        /// dendritic run contribute (compare with a plain re-score).
        #[arg(long)]
        knockout: bool,
    },
    /// Download a sweep's artifacts.
    Fetch {
        sweep: String,
        #[arg(long, default_value = "fetched")]
        out: PathBuf,
    },
    /// Aggregate a sweep's results: report.md and comparison PNGs, written
    /// locally and uploaded next to the runs.
    Report {
        sweep: String,
        #[arg(long, default_value = "reports")]
        out: PathBuf,
    },
}

struct Conn {
    services: Services,
    state: StateStore,
}

async fn connect() -> anyhow::Result<Conn> {
    let mut services = Services::from_env()?;
    if let Some(dir) = ARTIFACTS_DIR.get() {
        services.artifacts_dir = dir.display().to_string();
    }
    let state = StateStore::connect(services.redis_url.expose(), &services.namespace)
        .await
        .context("cannot reach Redis (REDIS_URL)")?;
    Ok(Conn { services, state })
}

async fn broker(c: &Conn) -> anyhow::Result<Broker> {
    Broker::connect(
        c.services.amqp_url.expose(),
        Topology::new(&c.services.namespace),
        c.services.delivery_limit,
    )
    .await
    .context("cannot reach RabbitMQ (AMQP_URL)")
}

/// The artifact store: S3 when `AWS_BUCKET` is set, else the local
/// folder `ARTIFACTS` (default `artifacts`).
fn artifacts(c: &Conn) -> anyhow::Result<Artifacts> {
    Artifacts::open(&c.services).with_context(|| {
        format!(
            "cannot open the artifact store {}",
            c.services.artifacts_dir
        )
    })
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(dir) = &cli.artifacts {
        ARTIFACTS_DIR.set(dir.clone()).expect("set once");
    }
    if let Command::Expand { sweep, json } = &cli.command {
        let s = Sweep::load(sweep)?;
        for j in &s.jobs {
            if *json {
                println!("{}", serde_json::to_string(j).context("serialising a job")?);
            } else {
                let axes: Vec<String> = j.axes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{}  {}  {}", j.id, j.config_hash, axes.join(" "));
            }
        }
        eprintln!("{}: {} job(s)", s.name, s.jobs.len());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli.command))
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Expand { .. } => Ok(()),
        Command::Submit {
            sweep,
            dry_run,
            device,
        } => submit(&sweep, dry_run, device).await,
        Command::Status { sweep, watch } => status(sweep, watch).await,
        Command::Workers => workers().await,
        Command::Cancel { target } => cancel(&target).await,
        Command::Retry { target, stuck } => retry(&target, stuck).await,
        Command::Reconcile { grace_secs } => reconcile(grace_secs).await,
        Command::Fetch { sweep, out } => fetch(&sweep, &out).await,
        Command::Validate {
            job,
            split,
            uri,
            device,
            knockout,
        } => validate(&job, split, uri, device, knockout).await,
        Command::Report { sweep, out } => report(&sweep, &out).await,
    }
}

async fn submit(file: &std::path::Path, dry_run: bool, device: Class) -> anyhow::Result<()> {
    // The whole sweep is validated before anything is queued.
    let sweep = Sweep::load(file)?;
    let class = match device {
        Class::Gpu => DeviceClass::Gpu,
        Class::Cpu => DeviceClass::Cpu,
    };
    if dry_run {
        for j in &sweep.jobs {
            let axes: Vec<String> = j.axes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{}  {}  {}", j.id, j.config_hash, axes.join(" "));
        }
        println!(
            "{}: {} job(s) would be queued on the {} queue",
            sweep.name,
            sweep.jobs.len(),
            class.as_str()
        );
        return Ok(());
    }
    let c = connect().await?;
    let b = broker(&c).await?;
    let (mut queued, mut skipped) = (0, 0);
    for j in &sweep.jobs {
        let msg = JobMessage::train(&sweep.name, j, class);
        let fields = [
            ("variant", j.spec.variant.to_string()),
            ("seed", j.spec.seed.to_string()),
            ("config_hash", j.config_hash.clone()),
            ("device_class", class.as_str().to_string()),
            (
                "message",
                String::from_utf8_lossy(&msg.encode()).to_string(),
            ),
            // Set once the broker confirms the message.
            ("published_at", String::new()),
            // A resubmitted job starts with a clean count of abandoned
            // attempts, as a retry does.
            ("takeovers", "0".into()),
        ];
        let before = c.state.state(&j.id).await?;
        match before {
            // Registered but never confirmed on the queue (the producer
            // stopped in between): publish it now.
            Some(JobState::Queued) if !c.state.published(&j.id).await? => {
                println!("{}: queued, never published: publishing", j.id);
                // Its record may lack the message (registered, then stopped).
                c.state.set_fields(&j.id, &fields).await?;
            }
            Some(JobState::Succeeded) | Some(JobState::Queued) | Some(JobState::Running) => {
                skipped += 1;
                println!("{}: {} (skipped)", j.id, before.unwrap_or(JobState::Queued));
                continue;
            }
            Some(_) => {
                // A cancel requested while it last ran is not this submit's.
                c.state.clear_cancel(&j.id).await?;
                c.state.transition(&j.id, Event::Requeue, &fields).await?;
            }
            None => {
                c.state.register_job(&sweep.name, &j.id, &fields).await?;
            }
        }
        enqueue(&c, &b, &msg).await?;
        c.state
            .event(
                &sweep.name,
                &[
                    ("job", j.id.clone()),
                    ("state", JobState::Queued.to_string()),
                ],
            )
            .await?;
        queued += 1;
    }
    println!("{}: {queued} job(s) queued, {skipped} skipped", sweep.name);
    Ok(())
}

/// Publishes a job's message and, once the broker has confirmed it, records
/// `published_at`: a job left `queued` without it (the producer stopped
/// between registering and publishing) is published by the next `submit`.
async fn enqueue(c: &Conn, b: &Broker, msg: &JobMessage) -> anyhow::Result<()> {
    b.publish_job(msg).await?;
    c.state.mark_published(&msg.job_id).await?;
    Ok(())
}

/// A plain table with a header row.
fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    t
}

async fn workers() -> anyhow::Result<()> {
    let c = connect().await?;
    let ws = c.state.workers().await?;
    if ws.is_empty() {
        println!("no live workers");
        return Ok(());
    }
    let mut t = table(["worker", "host", "devices", "version", "jobs", "heartbeat"]);
    for w in ws {
        let age = now_ms().saturating_sub(w.heartbeat_ms) / 1000;
        t.add_row([
            w.id,
            w.host,
            w.devices,
            w.version,
            w.jobs,
            format!("{age}s ago"),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn status(sweep: Option<String>, watch: bool) -> anyhow::Result<()> {
    let c = connect().await?;
    loop {
        let sweeps = match &sweep {
            Some(s) => vec![s.clone()],
            None => c.state.sweeps().await?,
        };
        let workers = c.state.workers().await?;
        let mut unfinished = 0;
        let mut waiting_classes = std::collections::BTreeSet::new();
        for s in &sweeps {
            let jobs = sweep_jobs(&c, s).await?;
            println!("sweep {s}: {} job(s)", jobs.len());
            let mut t = table([
                "job", "state", "try", "worker", "epoch", "loss", "val acc", "test F1", "test acc",
            ]);
            let mut errors = Vec::new();
            for j in jobs {
                let Some(r) = c.state.record(&j).await? else {
                    t.add_row([j.as_str(), "", "", "", "", "", "", "", ""]);
                    unfinished += 1;
                    continue;
                };
                if !r.state.is_some_and(|s| s.is_terminal()) {
                    unfinished += 1;
                }
                if r.state == Some(JobState::Queued) {
                    waiting_classes.insert(r.device_class.clone());
                }
                // A finished run: its epochs and best epoch, not the last
                // progress snapshot.
                let epoch = match (&r.epochs_run, &r.epoch) {
                    (Some(run), _) => format!("{run} (best {})", r.best_epoch),
                    (None, Some(e)) => format!("{e}:{}/{}", r.step, r.steps),
                    (None, None) => String::new(),
                };
                let st = r.state.map(|s| s.to_string()).unwrap_or_default();
                t.add_row([
                    j.as_str(),
                    &st,
                    &r.attempt.to_string(),
                    &r.worker,
                    &epoch,
                    &r.loss,
                    &r.val_accuracy,
                    &r.test_macro_f1,
                    &r.test_accuracy,
                ]);
                if !r.error.is_empty() {
                    errors.push(format!("{j}: {}", r.error));
                }
            }
            println!("{t}");
            for e in errors {
                println!("  error: {e}");
            }
        }
        for class in waiting_classes {
            let serves = workers.iter().any(|w| {
                w.devices
                    .split(',')
                    .any(|d| (class == "gpu") == d.trim().starts_with("cuda"))
            });
            if !serves {
                println!("WARNING: jobs wait on the {class} queue and no live worker serves it (start `worker serve --devices ...`)");
            }
        }
        if !watch || unfinished == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!();
    }
}

/// Job ids of a target: a job id, or every job of a sweep.
async fn targets(c: &Conn, target: &str) -> anyhow::Result<Vec<String>> {
    let jobs = c.state.sweep_jobs(target).await?;
    if !jobs.is_empty() {
        return Ok(jobs);
    }
    if c.state.state(target).await?.is_some() {
        return Ok(vec![target.to_string()]);
    }
    Err(unknown(c, target, "sweep or job").await)
}

/// The jobs of a sweep this namespace knows, or an error naming it and the
/// known sweeps closest to it.
async fn sweep_jobs(c: &Conn, sweep: &str) -> anyhow::Result<Vec<String>> {
    let jobs = c.state.sweep_jobs(sweep).await?;
    if jobs.is_empty() && !c.state.sweeps().await?.iter().any(|s| s == sweep) {
        return Err(unknown(c, sweep, "sweep").await);
    }
    Ok(jobs)
}

/// "no <what> called <name>", with the known sweeps most like it.
async fn unknown(c: &Conn, name: &str, what: &str) -> anyhow::Error {
    let known = c.state.sweeps().await.unwrap_or_default();
    let hint = match closest(name, &known).as_slice() {
        [] if known.is_empty() => " (no sweep is known here: submit one first)".to_string(),
        [] => format!(" (known sweeps: {})", known.join(", ")),
        near => format!(" (did you mean {}?)", near.join(", ")),
    };
    anyhow::anyhow!("no {what} called {name:?} in this namespace{hint}")
}

/// Up to three of `known` most like `name` (Jaro-Winkler similarity of at
/// least 0.7), most alike first.
fn closest(name: &str, known: &[String]) -> Vec<String> {
    let mut scored: Vec<(f64, &String)> = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(s, _)| *s >= 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().take(3).map(|(_, k)| k.clone()).collect()
}

async fn cancel(target: &str) -> anyhow::Result<()> {
    let c = connect().await?;
    for j in targets(&c, target).await? {
        // One step in Redis: a start cannot fall between reading the state
        // and acting on it.
        match c.state.cancel(&j).await {
            Ok(services::state::Cancel::Cancelled) => println!("{j}: cancelled (was queued)"),
            Ok(services::state::Cancel::Requested) => {
                println!("{j}: cancellation requested (running)")
            }
            Ok(services::state::Cancel::Finished(s)) => println!("{j}: {} (nothing to cancel)", s),
            Err(services::state::StateError::UnknownJob(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn reconcile(grace_secs: u64) -> anyhow::Result<()> {
    let c = connect().await?;
    let b = broker(&c).await?;
    let r = Reconciler {
        state: &c.state,
        broker: &b,
        grace: Duration::from_secs(grace_secs),
    };
    let report = r.pass().await?;
    for j in &report.republished {
        println!("{j}: running with no live worker: published again");
    }
    for j in &report.published {
        println!("{j}: queued, never published: published");
    }
    for (j, why) in &report.dead {
        println!("{j}: dead ({why})");
    }
    if report.unreadable > 0 {
        println!(
            "{} unreadable dead letter(s) kept in Redis",
            report.unreadable
        );
    }
    println!(
        "{} job(s) published, {} recorded dead",
        report.republished.len() + report.published.len(),
        report.dead.len()
    );
    Ok(())
}

/// `retry --stuck`: every queued or running job no live attempt holds gets
/// its stored message published again (a duplicate is harmless: starts
/// are fenced and a finished job's extra message is dropped).
async fn retry_stuck(c: &Conn, b: &Broker, target: &str) -> anyhow::Result<()> {
    let r = Reconciler {
        state: &c.state,
        broker: b,
        grace: Duration::ZERO,
    };
    let mut n = 0;
    for j in targets(c, target).await? {
        let Some(rec) = c.state.record(&j).await? else {
            continue;
        };
        if matches!(rec.state, Some(JobState::Queued | JobState::Running))
            && !c.state.leased(&j).await?
            && r.republish(&rec).await?
        {
            println!("{j}: published again");
            n += 1;
        }
    }
    println!("{n} stuck job(s) published again");
    Ok(())
}

async fn retry(target: &str, stuck: bool) -> anyhow::Result<()> {
    let c = connect().await?;
    let b = broker(&c).await?;
    if stuck {
        return retry_stuck(&c, &b, target).await;
    }
    let mut n = 0;
    for j in targets(&c, target).await? {
        // One read: the state decides, the recorded message is the spec.
        let r = c.state.record(&j).await?.unwrap_or_default();
        if !matches!(
            r.state,
            Some(JobState::Failed | JobState::Dead | JobState::Cancelled)
        ) {
            continue;
        }
        if r.message.is_empty() {
            println!("{j}: no stored message; submit its sweep again");
            continue;
        }
        let mut msg = JobMessage::decode(r.message.as_bytes())?;
        msg.attempt = r.attempt + 1;
        c.state.clear_cancel(&j).await?;
        c.state
            .transition(
                &j,
                Event::Requeue,
                &[
                    ("attempt", msg.attempt.to_string()),
                    ("error", String::new()),
                    ("published_at", String::new()),
                    ("takeovers", "0".into()),
                ],
            )
            .await?;
        enqueue(&c, &b, &msg).await?;
        println!("{j}: queued again (attempt {})", msg.attempt);
        n += 1;
    }
    println!("{n} job(s) queued again");
    Ok(())
}

async fn fetch(sweep: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let c = connect().await?;
    let a = artifacts(&c)?;
    // A folder an attempt is still writing (or died writing) has no
    // manifest yet: left out, as are checkpoints.
    let keys = common::artifacts::complete_keys(&a.list(&sweep_prefix(sweep)).await?);
    if keys.is_empty() {
        anyhow::bail!("no artifacts of sweep {sweep} in {}", a.location);
    }
    for k in &keys {
        let path = out.join(k);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, a.get(k).await?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "{} file(s) of sweep {sweep} in {}",
        keys.len(),
        out.display()
    );
    Ok(())
}

async fn report(sweep: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let c = connect().await?;
    let a = artifacts(&c)?;
    let mut folders = Vec::new();
    for j in sweep_jobs(&c, sweep).await? {
        if let Some(r) = c.state.record(&j).await? {
            if r.state == Some(JobState::Succeeded) {
                folders.push((j, r.artifacts));
            }
        }
    }
    let read = |key: String| {
        let a = &a;
        async move { a.get_opt(&key).await.map(|b| b.map(|b| b.to_vec())) }
    };
    let got = report::sweep::collect_runs(&folders, read).await?;
    for j in &got.missing {
        println!("WARNING: {j} left out of the report: a run file is missing from its folder");
    }
    for (j, e) in &got.unreadable {
        println!("WARNING: {j} left out of the report: {e}");
    }
    let runs = got.runs;
    if runs.is_empty() {
        anyhow::bail!("sweep {sweep} has no succeeded jobs yet");
    }
    let files = report::sweep::sweep_files(sweep, &runs)?;
    let dir = out.join(sweep);
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes)?;
    }
    a.put_all(&sweep_prefix(sweep), &files).await?;
    println!(
        "{} run(s); report in {} and {}",
        runs.len(),
        dir.display(),
        a.url(&sweep_prefix(sweep))
    );
    Ok(())
}

async fn validate(
    job: &str,
    split: SplitArg,
    uri: Option<String>,
    device: Class,
    knockout: bool,
) -> anyhow::Result<()> {
    let c = connect().await?;
    let raw = c
        .state
        .record(job)
        .await?
        .map(|r| r.message)
        .filter(|m| !m.is_empty())
        .with_context(|| format!("no job {job:?} with a stored message"))?;
    let source_msg = JobMessage::decode(raw.as_bytes())?;
    let (split, split_name) = match split {
        SplitArg::Val => (common::job::EvalSplit::Val, "val"),
        SplitArg::Test => (common::job::EvalSplit::Test, "test"),
    };
    let mut msg = source_msg.clone();
    let ko = if knockout { "-knockout" } else { "" };
    msg.job_id = format!("{job}-validate-{split_name}{ko}");
    msg.kind = common::job::JobKind::Validate {
        source: uri.unwrap_or_else(|| job.to_string()),
        split,
        knockout,
    };
    msg.attempt = 1;
    msg.device = match device {
        Class::Gpu => DeviceClass::Gpu,
        Class::Cpu => DeviceClass::Cpu,
    };
    let fields = [
        ("kind", "validate".to_string()),
        ("device_class", msg.device.as_str().to_string()),
        (
            "message",
            String::from_utf8_lossy(&msg.encode()).to_string(),
        ),
        ("published_at", String::new()),
    ];
    match c.state.state(&msg.job_id).await? {
        None => {
            c.state
                .register_job(&msg.sweep, &msg.job_id, &fields)
                .await?;
        }
        Some(JobState::Queued) if !c.state.published(&msg.job_id).await? => {
            println!("{}: queued, never published: publishing", msg.job_id);
            c.state.set_fields(&msg.job_id, &fields).await?;
        }
        Some(JobState::Queued | JobState::Running) => {
            println!("{}: already queued or running", msg.job_id);
            return Ok(());
        }
        Some(_) => {
            c.state
                .transition(&msg.job_id, Event::Requeue, &fields)
                .await?;
        }
    }
    enqueue(&c, &broker(&c).await?, &msg).await?;
    println!("{}: queued", msg.job_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn a_typo_finds_the_sweeps_it_resembles() {
        let known: Vec<String> = [
            "quickstart",
            "exp1-benchmark",
            "exp2-pai",
            "quickstart-lora",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            closest("quickstrat", &known),
            ["quickstart", "quickstart-lora"]
        );
        assert_eq!(closest("exp2-pia", &known)[0], "exp2-pai");
        assert!(closest("zzzz", &known).is_empty());
    }
}
