//! Sweep files: a base [`JobSpec`] plus grid axes, expanded into jobs.
//!
//! ```toml
//! [sweep]
//! name = "quickstart"
//!
//! [base.model]          # a complete JobSpec
//! arch = "bert"
//! path = "${MINILM_DIR}"
//! [base.data]
//! path = "${FPB_DIR:-../shared/data/financial_phrasebank}"
//!
//! [grid]                # every combination becomes one job
//! variant = ["baseline"]
//! seed = [0, 1, 2]
//! "train.lr" = [3e-5, 5e-5]
//! ```
//!
//! Arms that differ in more than their variant (a control arm with its own
//! dendrite learning rate, dendrites with another activation) are named
//! tables of settings; every arm crosses the whole grid, and the report
//! compares arms by name:
//!
//! ```toml
//! [arms.dendritic]
//! variant = "dendritic"
//! [arms.gated-linear]
//! variant = "dendritic"
//! "dendrites.activation" = "identity"
//! [arms.branch]
//! variant = "branch"
//! "dendrites.lr" = 3e-3
//! ```
//!
//! An arm sets only `variant` and `dendrites.*`, so that its runs compare
//! with the other arms' on the same settings.
//!
//! Expansion is deterministic: arms and axes in name order, values in file
//! order.
//! Errors name the file, the line where known, and the field. Pure: the
//! only IO is [`Sweep::load`] reading the file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spec::{JobSpec, SpecError};

/// Why a sweep file was rejected. Nothing is queued when this happens.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read sweep file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: line {line}: grid axis `{axis}`: {message}")]
    Axis {
        path: String,
        line: usize,
        axis: String,
        message: String,
    },
    #[error("{path}: line {line}: arm `{arm}`: {message}")]
    Arm {
        path: String,
        line: usize,
        arm: String,
        message: String,
    },
    #[error("{path}: job {job} ({axes}): {source}")]
    Invalid {
        path: String,
        job: String,
        axes: String,
        source: SpecError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    sweep: SweepHeader,
    base: JobSpec,
    #[serde(default)]
    arms: toml::Table,
    #[serde(default)]
    grid: toml::Table,
}

/// An arm's settings: (dotted path, value).
type Settings = Vec<(String, toml::Value)>;

/// The settings an arm may set: its variant and its dendrites.
fn arm_may_set(path: &str) -> bool {
    path == "variant" || path.starts_with("dendrites.")
}

/// `table`'s values by dotted path (`{dendrites = {lr = 1}}` and
/// `"dendrites.lr" = 1` alike).
fn flatten(prefix: &str, table: &toml::Table, out: &mut Settings) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&path, t, out),
            v => out.push((path, v.clone())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepHeader {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `<sweep>-<index>-<config hash>`: unique within the sweep, stable across expansions.
    pub id: String,
    pub index: usize,
    /// The axis values of this point, rendered as TOML.
    pub axes: BTreeMap<String, String>,
    pub spec: JobSpec,
    pub config_hash: String,
}

/// An expanded sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub name: String,
    pub description: Option<String>,
    pub jobs: Vec<Job>,
}

impl Sweep {
    /// Reads and expands a sweep file.
    pub fn load(path: &Path) -> Result<Sweep, SweepError> {
        let text = std::fs::read_to_string(path).map_err(|source| SweepError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Sweep::parse(&path.display().to_string(), &text)
    }

    /// Expands sweep text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Sweep, SweepError> {
        let parse_err = |message: String| SweepError::Parse {
            path: origin.to_string(),
            message,
        };
        let file: SweepFile =
            toml::from_str(text).map_err(|e| parse_err(render_toml_error(text, &e)))?;
        let name = file.sweep.name.clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(parse_err(format!(
                "`sweep.name` = {name:?}: use letters, digits, '-', '_' or '.'"
            )));
        }
        let base = toml::Table::try_from(&file.base).map_err(|e| parse_err(e.to_string()))?;

        let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (axis, values) in &file.grid {
            let line = line_of(text, axis);
            let axis_err = |message: String| SweepError::Axis {
                path: origin.to_string(),
                line,
                axis: axis.clone(),
                message,
            };
            let values = match values {
                toml::Value::Array(v) if !v.is_empty() => v.clone(),
                toml::Value::Array(_) => return Err(axis_err("has no values".into())),
                _ => return Err(axis_err("must be a list of values".into())),
            };
            if lookup(&base, axis).is_none() && !known_optional(axis) {
                // Not in the (defaults-filled) base: it must still be a real field.
                let mut probe = base.clone();
                set_path(&mut probe, axis, values[0].clone()).map_err(axis_err)?;
                JobSpec::deserialize(toml::Value::Table(probe))
                    .map_err(|e| axis_err(format!("not a spec field ({e})")))?;
            }
            axes.push((axis.clone(), values));
        }

        // Named arms: (name, settings by path); one unnamed arm without.
        let mut arms: Vec<(Option<String>, Settings)> = Vec::new();
        for (arm, settings) in &file.arms {
            let arm_err = |message: String| arm_error(origin, text, arm, message);
            if !crate::spec::valid_arm_name(arm) {
                return Err(arm_err("use letters, digits, '-' or '_'".into()));
            }
            let toml::Value::Table(t) = settings else {
                return Err(arm_err("must be a table of settings".into()));
            };
            let mut set = Vec::new();
            flatten("", t, &mut set);
            for (path, _) in &set {
                if !arm_may_set(path) {
                    return Err(arm_err(format!(
                        "`{path}`: an arm sets only `variant` and `dendrites.*` \
                         (other settings belong in [base] or [grid], the same for every arm)"
                    )));
                }
                if file.grid.contains_key(path) {
                    return Err(arm_err(format!(
                        "`{path}` is also a grid axis: set it in the arms or the grid, not both"
                    )));
                }
            }
            arms.push((Some(arm.clone()), set));
        }
        if arms.is_empty() {
            arms.push((None, Vec::new()));
        } else {
            // Arms set no `report`: the base's primary contrast is every job's.
            let names: Vec<String> = arms.iter().filter_map(|(n, _)| n.clone()).collect();
            file.base.report.check_primary(&names).map_err(parse_err)?;
        }

        let points: usize = axes.iter().map(|(_, v)| v.len()).product();
        let total = points * arms.len();
        let mut jobs = Vec::with_capacity(total);
        for index in 0..total {
            let (arm, settings) = &arms[index / points];
            let mut table = base.clone();
            let mut point = BTreeMap::new();
            if let Some(arm) = arm {
                for (path, value) in settings {
                    set_path(&mut table, path, value.clone())
                        .map_err(|message| arm_error(origin, text, arm, message))?;
                }
                table.insert("arm".into(), toml::Value::String(arm.clone()));
                point.insert(
                    "arm".to_string(),
                    toml::Value::String(arm.clone()).to_string(),
                );
            }
            let mut rest = index % points;
            // The last axis varies fastest.
            let mut picks = vec![0; axes.len()];
            for (k, (_, values)) in axes.iter().enumerate().rev() {
                picks[k] = rest % values.len();
                rest /= values.len();
            }
            for ((axis, values), pick) in axes.iter().zip(picks) {
                let value = values[pick].clone();
                point.insert(axis.clone(), value.to_string());
                set_path(&mut table, axis, value).map_err(|message| SweepError::Axis {
                    path: origin.to_string(),
                    line: line_of(text, axis),
                    axis: axis.clone(),
                    message,
                })?;
            }
            let axes_text = point
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let spec = JobSpec::deserialize(toml::Value::Table(table)).map_err(|e| {
                SweepError::Invalid {
                    path: origin.to_string(),
                    job: format!("#{index}"),
                    axes: axes_text.clone(),
                    source: SpecError {
                        field: "grid".into(),
                        reason: e.to_string(),
                    },
                }
            })?;
            spec.validate().map_err(|source| SweepError::Invalid {
                path: origin.to_string(),
                job: format!("#{index}"),
                axes: axes_text.clone(),
                source,
            })?;
            let config_hash = spec.config_hash();
            jobs.push(Job {
                id: format!("{name}-{index:03}-{}", &config_hash[..8]),
                index,
                axes: point,
                spec,
                config_hash,
            });
        }
        Ok(Sweep {
            name,
            description: file.sweep.description,
            jobs,
        })
    }
}

/// An error in the `[arms.<arm>]` table, at its line.
fn arm_error(origin: &str, text: &str, arm: &str, message: String) -> SweepError {
    SweepError::Arm {
        path: origin.to_string(),
        line: line_of(text, &format!("[arms.{arm}]")),
        arm: arm.to_string(),
        message,
    }
}

/// Optional tables that may be absent from the base yet set by an axis.
fn known_optional(axis: &str) -> bool {
    axis.starts_with("lora.")
}

fn render_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// The first line mentioning `key` (1-based), or 0 when not found.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(key) || l.starts_with(&format!("\"{key}\""))
        })
        .map(|i| i + 1)
        .unwrap_or(0)
}

fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = table.get(first)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty path segment".into());
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Activation, Variant};

    const BASE: &str = r#"
[sweep]
name = "t"

[base.model]
arch = "bert"
path = "/m"

[base.data]
path = "/d"
"#;

    #[test]
    fn expands_grid_deterministically() {
        let text = format!("{BASE}\n[grid]\nseed = [0, 1, 2]\n\"train.lr\" = [1e-5, 2e-5]\n");
        let a = Sweep::parse("s.toml", &text).unwrap();
        let b = Sweep::parse("s.toml", &text).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.jobs.len(), 6);
        // Axes in name order ("seed" < "train.lr"); the last one varies fastest.
        assert_eq!((a.jobs[0].spec.seed, a.jobs[0].spec.train.lr), (0, 1e-5));
        assert_eq!((a.jobs[1].spec.seed, a.jobs[1].spec.train.lr), (0, 2e-5));
        assert_eq!((a.jobs[2].spec.seed, a.jobs[2].spec.train.lr), (1, 1e-5));
        let ids: std::collections::HashSet<_> = a.jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(ids.len(), 6);
        assert!(a.jobs[0].id.starts_with("t-000-"));
    }

    const ARMS: &str = r#"
[arms.dendritic]
variant = "dendritic"
[arms.gated-linear]
variant = "dendritic"
"dendrites.activation" = "identity"
[arms.branch]
variant = "branch"
dendrites = { lr = 3e-3 }
"#;

    #[test]
    fn arms_cross_the_grid_with_their_own_settings() {
        let text = format!("{BASE}\n[base.report]\nprimary = \"dendritic - branch\"\n{ARMS}\n[grid]\nseed = [0, 1]\n");
        let s = Sweep::parse("s.toml", &text).unwrap();
        assert_eq!(s.jobs.len(), 6);
        let of = |arm: &str| -> Vec<&Job> {
            s.jobs
                .iter()
                .filter(|j| j.spec.arm.as_deref() == Some(arm))
                .collect()
        };
        let (b, d, g) = (of("branch"), of("dendritic"), of("gated-linear"));
        assert_eq!((b.len(), d.len(), g.len()), (2, 2, 2));
        assert_eq!(b[0].spec.variant, Variant::Branch);
        assert_eq!(b[0].spec.dendrites.lr, Some(3e-3));
        assert_eq!(d[0].spec.dendrites.lr, None);
        assert_eq!(d[0].spec.dendrites.activation, Activation::Sigmoid);
        assert_eq!(g[0].spec.variant, Variant::Dendritic);
        assert_eq!(g[0].spec.dendrites.activation, Activation::Identity);
        assert_eq!(
            (g[0].spec.seed, g[1].spec.seed),
            (0, 1),
            "every arm runs every grid point"
        );
        assert_eq!(g[0].axes["arm"], "\"gated-linear\"");
        // Arms compare: one comparison group, distinct configurations.
        let groups: std::collections::HashSet<_> =
            s.jobs.iter().map(|j| j.spec.comparison_group()).collect();
        assert_eq!(groups.len(), 1);
        let hashes: std::collections::HashSet<_> =
            s.jobs.iter().map(|j| j.config_hash.clone()).collect();
        assert_eq!(hashes.len(), 6);
    }

    #[test]
    fn an_arm_sets_only_its_variant_and_dendrites() {
        let text = format!("{BASE}\n[arms.fast]\nvariant = \"branch\"\n\"train.lr\" = 1e-3\n");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("line 12: arm `fast`"), "{e}");
        assert!(e.contains("`train.lr`"), "{e}");
        let text = format!("{BASE}{ARMS}\n[grid]\nvariant = [\"baseline\"]\n");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("`variant` is also a grid axis"), "{e}");
        let text = format!("{BASE}\n[arms.\"a b\"]\nvariant = \"branch\"\n");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("arm `a b`"), "{e}");
    }

    #[test]
    fn the_primary_contrast_names_arms_of_the_sweep() {
        let text = format!("{BASE}\n[base.report]\nprimary = \"dendritic - restart\"\n{ARMS}");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("report.primary"), "{e}");
        assert!(
            e.contains("\"restart\" is not an arm (branch, dendritic, gated-linear)"),
            "{e}"
        );
        let text = format!("{BASE}\n[base.report]\nprimary = \"gated-linear - branch\"\n{ARMS}");
        Sweep::parse("s.toml", &text).unwrap();
        // Without arms the variants are the arms.
        let text = format!("{BASE}\n[base.report]\nprimary = \"dendritic - gated-linear\"\n");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("\"gated-linear\" is not an arm"), "{e}");
    }

    #[test]
    fn no_grid_is_one_job() {
        let s = Sweep::parse("s.toml", BASE).unwrap();
        assert_eq!(s.jobs.len(), 1);
    }

    #[test]
    fn unknown_axis_names_line_and_axis() {
        let text = format!("{BASE}\n[grid]\n\"train.bogus\" = [1]\n");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("train.bogus"), "{e}");
        assert!(e.contains("line 13"), "{e}");
    }

    #[test]
    fn bad_value_names_job_and_field() {
        let text = format!("{BASE}\n[grid]\n\"train.epochs\" = [1, 0]\n");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("train.epochs"), "{e}");
        assert!(e.contains("#1"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let text = format!("{BASE}\n[base.train]\nepochs = = 3\n");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.starts_with("s.toml: line 13"), "{e}");
    }

    #[test]
    fn wrong_type_in_base_names_line() {
        let text = BASE.replace("path = \"/d\"", "path = \"/d\"\nagreement = \"Most\"");
        let e = Sweep::parse("s.toml", &text).unwrap_err().to_string();
        assert!(e.contains("line 11"), "{e}");
    }
}
