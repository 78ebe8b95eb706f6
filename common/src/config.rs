//! Service configuration from the environment (the usual names), with
//! flags layered on top by the binaries. Secrets never appear in `Debug`
//! output or logs: passwords in URLs and secret keys are redacted.

use std::fmt;

/// What is missing or malformed in the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: `{name}`: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub reason: String,
}

/// A secret string: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// S3 or MinIO access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `AWS_ENDPOINT` / `AWS_ENDPOINT_URL` (MinIO, moto); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_BUCKET` / `S3_BUCKET`.
    pub bucket: String,
    /// `AWS_REGION` / `AWS_DEFAULT_REGION` (default `us-east-1`).
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// `AWS_ALLOW_HTTP=true` for plain-http endpoints.
    pub allow_http: bool,
    /// Key prefix inside the bucket (`ARTIFACT_PREFIX`, default empty).
    pub prefix: String,
}

/// Where the services are.
#[derive(Clone, PartialEq, Eq)]
pub struct Services {
    /// `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
    pub amqp_url: Secret,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub redis_url: Secret,
    /// `S3` settings; `None` when no bucket is configured.
    pub s3: Option<S3Config>,
    /// `ARTIFACTS`: the local folder that holds the artifacts when no
    /// bucket is configured (default `artifacts`, in the working folder).
    pub artifacts_dir: String,
    /// `QUEUE_PREFIX`: names queues and Redis keys (default `fpb`).
    pub namespace: String,
    /// `QUEUE_DELIVERY_LIMIT`: deliveries of a job that keeps crashing its
    /// worker before RabbitMQ dead-letters it (default 3). Part of the work
    /// queues' arguments, so producer and workers must agree on it.
    pub delivery_limit: i64,
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (a, h),
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services")
            .field("amqp_url", &redact_url(self.amqp_url.expose()))
            .field("redis_url", &redact_url(self.redis_url.expose()))
            .field("s3", &self.s3)
            .field("artifacts_dir", &self.artifacts_dir)
            .field("namespace", &self.namespace)
            .field("delivery_limit", &self.delivery_limit)
            .finish()
    }
}

impl Services {
    /// Reads the configuration through `get` (the environment in binaries,
    /// a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Services, ConfigError> {
        let first = |names: &[&str]| names.iter().find_map(|n| get(n).filter(|v| !v.is_empty()));
        let bucket = first(&["AWS_BUCKET", "S3_BUCKET", "AWS_BUCKET_NAME"]);
        let s3 = match bucket {
            None => None,
            Some(bucket) => {
                let allow_http = match first(&["AWS_ALLOW_HTTP"]).as_deref() {
                    None => false,
                    Some("true" | "1" | "yes") => true,
                    Some("false" | "0" | "no") => false,
                    Some(other) => {
                        return Err(ConfigError {
                            name: "AWS_ALLOW_HTTP".into(),
                            reason: format!("expected true or false, got {other:?}"),
                        })
                    }
                };
                Some(S3Config {
                    endpoint: first(&["AWS_ENDPOINT", "AWS_ENDPOINT_URL", "S3_ENDPOINT"]),
                    bucket,
                    region: first(&["AWS_REGION", "AWS_DEFAULT_REGION"])
                        .unwrap_or_else(|| "us-east-1".into()),
                    access_key_id: first(&["AWS_ACCESS_KEY_ID"]),
                    secret_access_key: first(&["AWS_SECRET_ACCESS_KEY"]).map(Secret),
                    allow_http,
                    prefix: first(&["ARTIFACT_PREFIX"]).unwrap_or_default(),
                })
            }
        };
        let namespace = first(&["QUEUE_PREFIX"]).unwrap_or_else(|| "fpb".into());
        if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError {
                name: "QUEUE_PREFIX".into(),
                reason: "use letters, digits, '-', '_' or '.'".into(),
            });
        }
        let delivery_limit = match first(&["QUEUE_DELIVERY_LIMIT"]) {
            None => 3,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| ConfigError {
                    name: "QUEUE_DELIVERY_LIMIT".into(),
                    reason: format!("expected a whole number from 1 to 1000, got {v:?}"),
                })?,
        };
        Ok(Services {
            delivery_limit,
            amqp_url: Secret(
                first(&["AMQP_URL"])
                    .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            ),
            redis_url: Secret(
                first(&["REDIS_URL"]).unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            ),
            s3,
            artifacts_dir: first(&["ARTIFACTS"]).unwrap_or_else(|| "artifacts".into()),
            namespace,
        })
    }

    /// From the process environment.
    pub fn from_env() -> Result<Services, ConfigError> {
        Services::from_lookup(|n| std::env::var(n).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_and_s3() {
        let s = Services::from_lookup(lookup(&[])).unwrap();
        assert_eq!(s.redis_url.expose(), "redis://127.0.0.1:6379");
        assert!(s.s3.is_none());
        let s = Services::from_lookup(lookup(&[
            ("AWS_BUCKET", "b"),
            ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_SECRET_ACCESS_KEY", "hunter2"),
        ]))
        .unwrap();
        let s3 = s.s3.clone().unwrap();
        assert!(s3.allow_http);
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.secret_access_key.unwrap().expose(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Services::from_lookup(lookup(&[
            ("AMQP_URL", "amqp://u:pw@h:5672/%2f"),
            ("REDIS_URL", "redis://:pw@h"),
        ]))
        .unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("pw"), "{d}");
        assert!(d.contains("amqp://u:***@h:5672/%2f"), "{d}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Services::from_lookup(lookup(&[("AWS_BUCKET", "b"), ("AWS_ALLOW_HTTP", "maybe")]))
            .unwrap_err();
        assert_eq!(e.name, "AWS_ALLOW_HTTP");
        let e = Services::from_lookup(lookup(&[("QUEUE_DELIVERY_LIMIT", "0")])).unwrap_err();
        assert_eq!(e.name, "QUEUE_DELIVERY_LIMIT");
    }

    #[test]
    fn delivery_limit_is_settable() {
        assert_eq!(
            Services::from_lookup(lookup(&[])).unwrap().delivery_limit,
            3
        );
        let s = Services::from_lookup(lookup(&[("QUEUE_DELIVERY_LIMIT", "7")])).unwrap();
        assert_eq!(s.delivery_limit, 7);
    }
}
