//! Where a run's files live in the artifact store. Keys are built from
//! sanitised segments so that no name from a sweep file can escape the
//! store's prefix. Pure: no IO.

/// One path segment made safe: ASCII letters, digits, '-', '_' and '.'
/// are kept, everything else becomes '_'; "." and ".." become "_".
pub fn sanitize(segment: &str) -> String {
    let s: String = segment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "_".repeat(s.len().max(1))
    } else {
        s
    }
}

/// `sweeps/<sweep>/jobs/<job>`: the folder of one run's files.
pub fn job_prefix(sweep: &str, job: &str) -> String {
    format!("sweeps/{}/jobs/{}", sanitize(sweep), sanitize(job))
}

/// `sweeps/<sweep>/jobs/<job>/checkpoint/<config_hash>.safetensors`: where
/// a training job's latest end-of-epoch checkpoint waits for the attempt
/// that resumes it.
pub fn checkpoint_key(sweep: &str, job: &str, config_hash: &str) -> String {
    format!(
        "{}/checkpoint/{}.safetensors",
        job_prefix(sweep, job),
        sanitize(config_hash)
    )
}

/// The keys of `keys` a reader may trust: files of an attempt folder
/// (`.../jobs/<job>/attempt-*/`) only when that folder holds its
/// `manifest.json` (stored last: the folder is whole), never a job's
/// `checkpoint/`, and every other key as it is. Order kept.
pub fn complete_keys(keys: &[String]) -> Vec<String> {
    let attempt_of = |k: &str| -> Option<String> {
        let (head, rest) = k.split_once("/jobs/")?;
        let mut parts = rest.splitn(3, '/');
        let job = parts.next()?;
        let folder = parts.next()?;
        parts.next()?;
        folder
            .starts_with("attempt-")
            .then(|| format!("{head}/jobs/{job}/{folder}"))
    };
    let whole: std::collections::HashSet<String> = keys
        .iter()
        .filter_map(|k| {
            k.strip_suffix(&format!("/{}", files::MANIFEST_JSON))
                .filter(|f| attempt_of(k).as_deref() == Some(*f))
                .map(String::from)
        })
        .collect();
    keys.iter()
        .filter(|k| !k.contains("/checkpoint/"))
        .filter(|k| attempt_of(k).is_none_or(|f| whole.contains(&f)))
        .cloned()
        .collect()
}

/// `sweeps/<sweep>`: the folder of a sweep's aggregates.
pub fn sweep_prefix(sweep: &str) -> String {
    format!("sweeps/{}", sanitize(sweep))
}

/// File names of one run, relative to [`job_prefix`].
pub mod files {
    pub const RESULTS_CSV: &str = "Results.csv";
    pub const METRICS_JSON: &str = "metrics.json";
    pub const SPEC_JSON: &str = "spec.json";
    pub const CURVES_PNG: &str = "training_curves.png";
    pub const CONFUSION_PNG: &str = "confusion_matrix.png";
    pub const TRAINED_SAFETENSORS: &str = "trained.safetensors";
    pub const HISTORY_CSV: &str = "history.csv";
    pub const VALIDATION_JSON: &str = "validation.json";
    pub const MANIFEST_JSON: &str = "manifest.json";
    pub const REPORT_MD: &str = "report.md";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_attempt_folders_with_their_manifest_are_trusted() {
        let keys: Vec<String> = [
            "sweeps/s/Results.csv",
            "sweeps/s/jobs/j/attempt-1-g1-w/metrics.json",
            "sweeps/s/jobs/j/attempt-1-g1-w/manifest.json",
            "sweeps/s/jobs/j/attempt-2-g2-w/metrics.json",
            "sweeps/s/jobs/j/checkpoint/h.safetensors",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            complete_keys(&keys),
            [
                "sweeps/s/Results.csv",
                "sweeps/s/jobs/j/attempt-1-g1-w/metrics.json",
                "sweeps/s/jobs/j/attempt-1-g1-w/manifest.json",
            ]
        );
    }

    #[test]
    fn keys_cannot_escape() {
        assert_eq!(job_prefix("../../etc", "a/b"), "sweeps/.._.._etc/jobs/a_b");
        assert_eq!(sanitize(".."), "__");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("ok-1.2_x"), "ok-1.2_x");
        for bad in ["..", ".", "/", "a/../b", "\\..\\"] {
            let s = sanitize(bad);
            assert!(!s.contains('/') && s != ".." && s != ".", "{bad} -> {s}");
        }
    }
}
