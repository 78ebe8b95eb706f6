//! The training engine: everything needed to turn one [`common::spec::JobSpec`]
//! into trained parameters, metrics and artifact files. Synchronous and free
//! of services: callers run it on a blocking thread and upload what it returns.
//!
//! [`load`] reads data and weights, [`train`] runs the loop, [`pipeline`]
//! ties them into a job's [`pipeline::run`] and [`pipeline::validate`], and
//! the `report` crate renders the records into files.

pub mod data;
pub mod error;
pub mod load;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod speed;
pub mod tokenize;
pub mod train;
pub mod trained;

use std::path::PathBuf;

/// Expands `${VAR}` and `${VAR:-default}` from the environment.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
        let body = &after[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => match default {
                Some(d) => out.push_str(d),
                None => {
                    return Err(format!(
                        "environment variable {name} is not set (used in {s:?})"
                    ))
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
        std::env::set_var("ENGINE_TEST_X", "/x");
        assert_eq!(expand_env("${ENGINE_TEST_X}/y").unwrap(), "/x/y");
        assert_eq!(expand_env("${ENGINE_TEST_NOPE:-d}/y").unwrap(), "d/y");
        assert_eq!(expand_env("plain").unwrap(), "plain");
        assert!(expand_env("${ENGINE_TEST_NOPE}")
            .unwrap_err()
            .contains("ENGINE_TEST_NOPE"));
    }
}
