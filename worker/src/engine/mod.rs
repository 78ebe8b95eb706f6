//! The training engine: everything needed to turn one [`common::spec::JobSpec`]
//! into trained parameters, metrics and artifact files. Synchronous and free
//! of services: callers run it on a blocking thread and upload what it returns.
//!
//! [`load`] reads data and weights, [`train`] runs the loop, [`pipeline`]
//! ties them into a job's [`pipeline::run`] and [`pipeline::validate`], and
//! the `report` crate renders the records into files. [`classify`] puts a
//! finished run's trained parameters back onto its base model (checked by
//! [`base_model`]) and labels new sentences.

pub mod base_model;
pub mod beat;
pub mod classify;
pub mod data;
pub mod device;
pub mod error;
pub mod features;
pub mod load;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod speed;
pub mod tokenize;
pub mod train;
pub mod trained;

use std::path::PathBuf;
use std::sync::OnceLock;

static SPEC_ENV: OnceLock<Vec<String>> = OnceLock::new();

/// Allows these variable names in specs besides `*_DIR` and `*_PATH` (the
/// worker's `--spec-env`); set once, before any job.
pub fn allow_spec_env(names: Vec<String>) {
    let _ = SPEC_ENV.set(names);
}

/// Whether a spec may read `${name}` from the worker's environment: names
/// ending in `_DIR` or `_PATH` (locations, by convention) and those given
/// with `--spec-env`. Nothing else is read, so a spec cannot make a worker
/// put a credential into a path, an error message or a results table.
pub fn spec_env_allowed(name: &str) -> bool {
    name.ends_with("_DIR")
        || name.ends_with("_PATH")
        || SPEC_ENV.get().is_some_and(|v| v.iter().any(|n| n == name))
}

/// Why a variable did not expand.
#[derive(Debug)]
enum Lookup {
    Unset,
    Refused,
}

/// Expands `$VAR`, `${VAR}` and `${VAR:-default}` from the environment
/// (`shellexpand`), for the variables [`spec_env_allowed`] lets through:
/// a template naming any other variable is refused, default or not. A
/// variable set to the empty string counts as unset. Errors quote the
/// template, never a value.
pub fn expand_env(s: &str) -> Result<String, String> {
    let refused = std::cell::RefCell::new(None::<String>);
    let expanded = shellexpand::env_with_context(s, |name: &str| {
        if !spec_env_allowed(name) {
            refused.borrow_mut().get_or_insert_with(|| name.to_string());
            return Err(Lookup::Refused);
        }
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(Lookup::Unset),
        }
    });
    if let Some(name) = refused.into_inner() {
        return Err(format!(
            "${{{name}}} in {s:?}: only variables named *_DIR or *_PATH, or given to the worker with --spec-env, expand in specs"
        ));
    }
    match expanded {
        Ok(v) => Ok(v.into_owned()),
        Err(e) => Err(format!(
            "environment variable {} is not set (used in {s:?})",
            e.var_name
        )),
    }
}

/// A path from a spec, with the environment expanded.
pub fn spec_path(field: &str, s: &str) -> Result<PathBuf, String> {
    expand_env(s)
        .map(PathBuf::from)
        .map_err(|e| format!("`{field}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        std::env::set_var("ENGINE_TEST_X_DIR", "/x");
        assert_eq!(expand_env("${ENGINE_TEST_X_DIR}/y").unwrap(), "/x/y");
        assert_eq!(expand_env("${ENGINE_TEST_NOPE_DIR:-d}/y").unwrap(), "d/y");
        assert_eq!(expand_env("plain").unwrap(), "plain");
        assert!(expand_env("${ENGINE_TEST_NOPE_DIR}")
            .unwrap_err()
            .contains("ENGINE_TEST_NOPE_DIR"));
    }

    /// A credential named in a spec is never read: the error quotes the
    /// template and holds no part of the value.
    #[test]
    fn secrets_do_not_expand() {
        std::env::set_var("ENGINE_TEST_SECRET_KEY", "hunter2-do-not-print");
        for template in [
            "${ENGINE_TEST_SECRET_KEY}",
            "${ENGINE_TEST_SECRET_KEY:-/d}/x",
        ] {
            let e = spec_path("data.path", template).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(
                e.contains("data.path") && e.contains("ENGINE_TEST_SECRET_KEY"),
                "{e}"
            );
        }
    }
}
