//! `worker predict`: labels sentences with a finished run. The run is a
//! folder holding its `trained.safetensors`, on this machine (as `worker
//! run` writes it, `<out>/sweeps/<sweep>/jobs/<job>`) or in S3 (a job's
//! attempt folder as `worker serve` stores it,
//! `s3://<bucket>/<prefix>/sweeps/<sweep>/jobs/<job>/attempt-...`, read
//! with the usual `AWS_*` settings; the bucket comes from the address).
//! The engine's [`Classifier`] rebuilds the run's network on its base model
//! and refuses another one.
//!
//! Sentences come from `--text` (repeatable) and `--file` (one per line,
//! blank lines skipped, `-` for standard input), in that order. Prints one
//! JSON object per sentence, in input order, on standard output:
//! `{"label": ..., "probabilities": {label: p, ...}, "text": ...}`; logs go
//! to standard error.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use common::artifacts::files::TRAINED_SAFETENSORS;
use services::artifacts::Artifacts;

use crate::engine::classify::{Classifier, ClassifyError, Identity, Prediction};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// The run: its folder, or `s3://BUCKET/KEY` of a job's attempt folder.
    #[arg(long, value_name = "DIR|s3://BUCKET/KEY")]
    run: String,
    /// A sentence to label (repeatable).
    #[arg(long = "text", value_name = "SENTENCE")]
    texts: Vec<String>,
    /// A file with one sentence per line (blank lines skipped; `-` reads
    /// standard input; repeatable).
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// The base model's directory, when the run's `model.path` does not
    /// point to it on this machine. It must hold the same model.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch_size: u64,
    /// CPU threads for tensor kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn main(args: PredictArgs) -> anyhow::Result<()> {
    let texts = read_sentences(&args.texts, &args.files)?;
    if texts.is_empty() {
        anyhow::bail!("nothing to classify: give sentences with --text or --file");
    }
    let device = crate::engine::device::open(&args.device)?;
    let started = Instant::now();
    let run = RunFolder::open(&args.run)?;
    let classifier = Classifier::load(&run.trained, &args.run, args.model_dir.as_deref(), &device)
        .map_err(|e| explain(e, args.model_dir.is_some()))?;
    let m = &classifier.meta;
    tracing::info!(
        job = m.job_id.as_deref().unwrap_or("?"),
        sweep = m.sweep.as_deref().unwrap_or("?"),
        base_model = %classifier.base_model.describe(),
        dir = %classifier.model_dir.display(),
        "run loaded in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if classifier.identity == Identity::ShapesOnly {
        tracing::warn!(
            "{} records no base model (saved by an earlier version): only its tensors' names and shapes were checked against {}",
            args.run,
            classifier.model_dir.display()
        );
    }
    let started = Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let predictions = classifier.predict(&refs, args.batch_size as usize)?;
    tracing::info!(
        "{} sentence(s) classified in {:.1}s",
        texts.len(),
        started.elapsed().as_secs_f64()
    );
    let out = std::io::stdout().lock();
    match write_lines(out, &texts, &predictions, classifier.labels()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write the predictions"),
    }
}

/// Adds what to do about a base model that is missing or not the run's.
fn explain(e: ClassifyError, overridden: bool) -> anyhow::Error {
    let hint = match &e {
        ClassifyError::Model { .. } if !overridden => {
            "pass --model-dir with the run's base model on this machine"
        }
        ClassifyError::DifferentModel { .. }
        | ClassifyError::Mismatch {
            verified: false, ..
        } => "pass --model-dir with the model the run was trained on",
        _ => return e.into(),
    };
    anyhow::anyhow!("{e}; {hint}")
}

/// One JSON line per sentence.
#[derive(serde::Serialize)]
struct Line<'a> {
    text: &'a str,
    label: &'a str,
    probabilities: BTreeMap<&'a str, f32>,
}

fn write_lines(
    out: impl Write,
    texts: &[String],
    predictions: &[Prediction],
    labels: &[&str],
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    for (text, p) in texts.iter().zip(predictions) {
        let line = Line {
            text,
            label: labels[p.label],
            probabilities: labels
                .iter()
                .copied()
                .zip(p.probabilities.iter().copied())
                .collect(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// The `--text` sentences, then every `--file`'s lines.
fn read_sentences(texts: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut out = texts.to_vec();
    for f in files {
        let bytes = if f == Path::new("-") {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("cannot read standard input")?;
            b
        } else {
            std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
        };
        out.extend(sentences_of(&bytes));
    }
    Ok(out)
}

/// The non-blank lines of a file, trimmed (UTF-8, or latin-1 as the data
/// set's own files, read as the engine reads them).
fn sentences_of(bytes: &[u8]) -> Vec<String> {
    let (text, _) = crate::engine::data::decode(bytes);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Where `--run` points.
#[derive(Debug, PartialEq)]
enum Location {
    Local(PathBuf),
    S3 { bucket: String, key: String },
}

impl Location {
    fn parse(s: &str) -> anyhow::Result<Location> {
        let Some(rest) = s.strip_prefix("s3://") else {
            return Ok(Location::Local(PathBuf::from(s)));
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            anyhow::bail!("--run {s}: no bucket (expected s3://BUCKET/KEY)");
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            key: key.trim_matches('/').to_string(),
        })
    }
}

/// The run's `trained.safetensors` on local disk (downloaded into a
/// temporary folder for an S3 run).
struct RunFolder {
    trained: PathBuf,
    _download: Option<tempfile::TempDir>,
}

impl RunFolder {
    fn open(run: &str) -> anyhow::Result<RunFolder> {
        match Location::parse(run)? {
            Location::Local(dir) => {
                if dir.is_file() {
                    return Ok(RunFolder {
                        trained: dir,
                        _download: None,
                    });
                }
                if !dir.is_dir() {
                    anyhow::bail!("{run}: no such run folder");
                }
                let trained = dir.join(TRAINED_SAFETENSORS);
                if !trained.is_file() {
                    let names = services::artifacts::files_under(&dir)
                        .with_context(|| format!("cannot list {run}"))?
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>();
                    anyhow::bail!(incomplete(run, &names));
                }
                Ok(RunFolder {
                    trained,
                    _download: None,
                })
            }
            Location::S3 { bucket, key } => download(run, &bucket, &key),
        }
    }
}

/// Fetches `KEY/trained.safetensors` from the bucket, with the `AWS_*`
/// settings of the environment (`AWS_BUCKET` and `ARTIFACT_PREFIX` do not
/// apply: the address names both).
fn download(run: &str, bucket: &str, key: &str) -> anyhow::Result<RunFolder> {
    let services = common::config::Services::from_lookup(|name| match name {
        "AWS_BUCKET" => Some(bucket.to_string()),
        "ARTIFACT_PREFIX" => None,
        _ => std::env::var(name).ok(),
    })?;
    let cfg = services
        .s3
        .context("S3 settings: no bucket (this cannot happen: the address names one)")?;
    let store = Artifacts::s3(&cfg).with_context(|| format!("cannot open {run}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let keys = rt
        .block_on(store.list(key))
        .with_context(|| format!("cannot list {run}"))?;
    let strip = if key.is_empty() { 0 } else { key.len() + 1 };
    let names: Vec<String> = keys
        .iter()
        .filter(|k| key.is_empty() || k.starts_with(&format!("{key}/")))
        .map(|k| k[strip..].to_string())
        .collect();
    if !names.iter().any(|n| n == TRAINED_SAFETENSORS) {
        anyhow::bail!(incomplete(run, &names));
    }
    let object = if key.is_empty() {
        TRAINED_SAFETENSORS.to_string()
    } else {
        format!("{key}/{TRAINED_SAFETENSORS}")
    };
    let bytes = rt
        .block_on(store.get(&object))
        .with_context(|| format!("cannot download {run}/{TRAINED_SAFETENSORS}"))?;
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let trained = dir.path().join(TRAINED_SAFETENSORS);
    std::fs::write(&trained, &bytes)
        .with_context(|| format!("cannot write {}", trained.display()))?;
    tracing::info!(
        "downloaded {run}/{TRAINED_SAFETENSORS} ({} bytes)",
        bytes.len()
    );
    Ok(RunFolder {
        trained,
        _download: Some(dir),
    })
}

/// The message for a folder without `trained.safetensors`: what it holds
/// and, for a job folder of `worker serve`, which attempts are complete.
fn incomplete(run: &str, names: &[String]) -> String {
    let mut msg = format!("{run} is not a complete run: {TRAINED_SAFETENSORS} is missing");
    let attempts: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix(&format!("/{TRAINED_SAFETENSORS}")))
        .filter(|d| !d.contains('/'))
        .collect();
    let top: Vec<&str> = names
        .iter()
        .filter(|n| !n.contains('/'))
        .map(String::as_str)
        .collect();
    if names.is_empty() {
        msg.push_str(" (the folder is empty or does not exist)");
    } else if top.is_empty() {
        msg.push_str(" (it holds only folders)");
    } else {
        msg.push_str(&format!(" (it holds {})", top.join(", ")));
    }
    if !attempts.is_empty() {
        msg.push_str(&format!(
            "; folders in it that hold one: {} (pass one of them as --run)",
            attempts.join(", ")
        ));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_skip_blank_lines() {
        let s = sentences_of(b"first one\r\n\n   \n  second  \nthird");
        assert_eq!(s, vec!["first one", "second", "third"]);
        // The data set's own latin-1 bytes.
        assert_eq!(sentences_of(b"caf\xe9\n"), vec!["caf\u{e9}"]);
        assert!(sentences_of(b"\n\n").is_empty());
    }

    #[test]
    fn texts_come_first_then_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.txt");
        std::fs::write(&f, "b\n\nc\n").unwrap();
        let s = read_sentences(&["a".into()], std::slice::from_ref(&f)).unwrap();
        assert_eq!(s, vec!["a", "b", "c"]);
        let e = read_sentences(&[], &[dir.path().join("nope.txt")]).unwrap_err();
        assert!(format!("{e:#}").contains("nope.txt"), "{e:#}");
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("s3://b/p/sweeps/s/jobs/j/attempt-1-g1-w1/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                key: "p/sweeps/s/jobs/j/attempt-1-g1-w1".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                key: String::new()
            }
        );
        assert!(Location::parse("s3:///k").is_err());
        assert_eq!(
            Location::parse("runs/sweeps/s/jobs/j").unwrap(),
            Location::Local("runs/sweeps/s/jobs/j".into())
        );
    }

    #[test]
    fn incomplete_folders_say_what_they_hold() {
        let m = incomplete(
            "runs/x",
            &[
                "metrics.json".into(),
                "PAI/PAI.csv".into(),
                "spec.json".into(),
            ],
        );
        assert_eq!(
            m,
            "runs/x is not a complete run: trained.safetensors is missing (it holds metrics.json, spec.json)"
        );
        let m = incomplete(
            "s3://b/jobs/j",
            &[
                "attempt-1-g1-w1/trained.safetensors".into(),
                "attempt-1-g1-w1/spec.json".into(),
            ],
        );
        assert!(m.contains("it holds only folders"), "{m}");
        assert!(
            m.contains("hold one: attempt-1-g1-w1 (pass one of them as --run)"),
            "{m}"
        );
        assert!(incomplete("s3://b/nothing", &[]).contains("empty or does not exist"));
    }

    #[test]
    fn lines_are_json_in_input_order() {
        let mut out = Vec::new();
        let preds = vec![
            Prediction {
                label: 2,
                probabilities: vec![0.1, 0.2, 0.7],
            },
            Prediction {
                label: 0,
                probabilities: vec![0.5, 0.25, 0.25],
            },
        ];
        write_lines(
            &mut out,
            &["up \"a\"".into(), "down".into()],
            &preds,
            &["negative", "neutral", "positive"],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["text"], "up \"a\"");
        assert_eq!(lines[0]["label"], "positive");
        assert_eq!(lines[1]["label"], "negative");
        assert_eq!(lines[1]["probabilities"]["neutral"], 0.25);
    }
}
