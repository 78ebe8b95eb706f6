//! MLflow tracking through its REST API (`/api/2.0/mlflow/...`) with
//! `reqwest`: experiments found or created by name, runs found again by a
//! tag (one MLflow run per job, whatever its attempts), batched params,
//! metrics and tags, run status, and artifact upload to a server that
//! serves artifacts itself (`mlflow-artifacts:` run URIs).
//!
//! Credentials follow MLflow's own clients: `MLFLOW_TRACKING_TOKEN`
//! (bearer) or `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`
//! (basic); the tracking URI is only ever printed redacted.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

/// MLflow failures.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow tracking URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("MLflow {endpoint}: {source}")]
    Http {
        endpoint: String,
        source: reqwest::Error,
    },
    #[error("MLflow {endpoint}: HTTP {status} {code}: {message}")]
    Api {
        endpoint: String,
        status: u16,
        code: String,
        message: String,
    },
}

impl MlflowError {
    /// Worth trying again later (the server is down, overloaded or timed
    /// out), as opposed to a request the server refused.
    pub fn is_transient(&self) -> bool {
        match self {
            MlflowError::BadUri { .. } => false,
            MlflowError::Http { .. } => true,
            MlflowError::Api { status, .. } => *status >= 500 || *status == 429,
        }
    }
}

pub type Result<T> = std::result::Result<T, MlflowError>;

/// MLflow's limits per `log-batch` request.
const MAX_METRICS: usize = 1000;
const MAX_PARAMS: usize = 100;
const MAX_TAGS: usize = 100;
/// Longest param value every MLflow server version accepts.
pub const MAX_PARAM_VALUE: usize = 500;

/// A metric point.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    pub timestamp: i64,
    #[serde(default)]
    pub step: i64,
}

/// What MLflow says about a run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub artifact_uri: String,
}

/// A run with its latest metrics, params and tags (as `runs/search` and
/// `runs/get` return it).
#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunData {
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

impl RunData {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.key == key).map(|m| m.value)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// How a run ended (MLflow's `RunStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    /// Waiting for another attempt.
    Scheduled,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// An MLflow tracking server.
#[derive(Clone)]
pub struct Mlflow {
    http: reqwest::Client,
    base: reqwest::Url,
    shown: String,
    auth: Option<Auth>,
}

/// Credentials sent with every request.
#[derive(Clone)]
enum Auth {
    Bearer(String),
    Basic(String, Option<String>),
}

impl std::fmt::Debug for Mlflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mlflow({})", self.shown)
    }
}

impl Mlflow {
    /// A client of the server at `uri` (`http://` or `https://`), with
    /// credentials from the environment.
    pub fn new(uri: &str, timeout: Duration) -> Result<Mlflow> {
        let shown = common::config::redact_url(uri);
        let bad = |reason: String| MlflowError::BadUri {
            uri: shown.clone(),
            reason,
        };
        let mut base =
            reqwest::Url::parse(uri.trim_end_matches('/')).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(
                "use an http:// or https:// address of an MLflow server".into(),
            ));
        }
        // Credentials in the URI become a basic-auth header.
        let (user, password) = (
            base.username().to_string(),
            base.password().map(String::from),
        );
        // Credentials leave the URL (they go in a header): both setters
        // fail only for URLs without a host, which `Url::parse` of an
        // http(s) address never returns.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let token = std::env::var("MLFLOW_TRACKING_TOKEN").ok();
        let basic = if !user.is_empty() {
            Some((user, password))
        } else {
            std::env::var("MLFLOW_TRACKING_USERNAME")
                .ok()
                .map(|u| (u, std::env::var("MLFLOW_TRACKING_PASSWORD").ok()))
        };
        let auth = match (token, basic) {
            (Some(t), _) => Some(Auth::Bearer(t)),
            (None, Some((u, p))) => Some(Auth::Basic(u, p)),
            (None, None) => None,
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Mlflow {
            http,
            base,
            shown,
            auth,
        })
    }

    /// The server's address, credentials left out.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A request with the credentials.
    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.auth {
            Some(Auth::Bearer(t)) => r.bearer_auth(t),
            Some(Auth::Basic(u, p)) => r.basic_auth(u, p.as_ref()),
            None => r,
        }
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut u = self.base.clone();
        let joined = format!("{}/{}", u.path().trim_end_matches('/'), path);
        u.set_path(&joined);
        u
    }

    async fn call(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = self.url(&format!("api/2.0/mlflow/{endpoint}"));
        let mut req = self.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req, endpoint).await
    }

    /// Sends a request; its JSON answer (`null` when there is none), or
    /// the server's error code and message.
    async fn send(&self, req: reqwest::RequestBuilder, endpoint: &str) -> Result<Value> {
        let http = |source: reqwest::Error| MlflowError::Http {
            endpoint: endpoint.to_string(),
            source: source.without_url(),
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        let text = resp.text().await.map_err(http)?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
            return Err(MlflowError::Api {
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                code: field("error_code").unwrap_or_default(),
                message: field("message").unwrap_or_else(|| text.chars().take(300).collect()),
            });
        }
        Ok(v)
    }

    async fn post(&self, endpoint: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, endpoint, Some(&body))
            .await
    }

    /// The id of the experiment called `name`, created when missing (a
    /// concurrent creation by another worker is found again).
    pub async fn experiment_id(&self, name: &str) -> Result<String> {
        for _ in 0..2 {
            if let Some(id) = self.find_experiment(name).await? {
                return Ok(id);
            }
            match self
                .post("experiments/create", json!({ "name": name }))
                .await
            {
                Ok(v) => {
                    if let Some(id) = v.get("experiment_id").and_then(Value::as_str) {
                        return Ok(id.to_string());
                    }
                }
                Err(MlflowError::Api { code, .. }) if code == "RESOURCE_ALREADY_EXISTS" => {}
                Err(e) => return Err(e),
            }
        }
        self.find_experiment(name)
            .await?
            .ok_or_else(|| MlflowError::Api {
                endpoint: "experiments/create".into(),
                status: 200,
                code: "MISSING".into(),
                message: format!("experiment {name:?} was created but cannot be found"),
            })
    }

    async fn find_experiment(&self, name: &str) -> Result<Option<String>> {
        let mut url = self.url("api/2.0/mlflow/experiments/get-by-name");
        url.query_pairs_mut().append_pair("experiment_name", name);
        match self.get_json(url, "experiments/get-by-name").await {
            Ok(v) => Ok(v
                .pointer("/experiment/experiment_id")
                .and_then(Value::as_str)
                .map(String::from)),
            Err(MlflowError::Api { status, code, .. })
                if status == 404 || code == "RESOURCE_DOES_NOT_EXIST" =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Active runs of an experiment, optionally filtered (MLflow's search
    /// syntax, e.g. `tags.job_id = 'x'`).
    pub async fn search_runs(&self, experiment_id: &str, filter: &str) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({
                "experiment_ids": [experiment_id],
                "filter": filter,
                "max_results": 1000,
            });
            if let Some(t) = &token {
                body["page_token"] = json!(t);
            }
            let v = self.post("runs/search", body).await?;
            if let Some(r) = v.get("runs") {
                runs.extend(serde_json::from_value::<Vec<Run>>(r.clone()).unwrap_or_default());
            }
            token = v
                .get("next_page_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(String::from);
            if token.is_none() {
                return Ok(runs);
            }
        }
    }

    /// The run tagged `key = value` in the experiment, if there is one.
    pub async fn find_run(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<Run>> {
        let filter = format!("tags.`{key}` = '{}'", value.replace('\'', "\\'"));
        let mut runs = self.search_runs(experiment_id, &filter).await?;
        Ok(if runs.is_empty() {
            None
        } else {
            Some(runs.remove(0))
        })
    }

    /// A new run.
    pub async fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        tags: &[(String, String)],
        start_ms: i64,
    ) -> Result<RunInfo> {
        let tags: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let v = self
            .post(
                "runs/create",
                json!({
                    "experiment_id": experiment_id,
                    "run_name": name,
                    "start_time": start_ms,
                    "tags": tags,
                }),
            )
            .await?;
        serde_json::from_value(v.pointer("/run/info").cloned().unwrap_or(Value::Null)).map_err(
            |e| MlflowError::Api {
                endpoint: "runs/create".into(),
                status: 200,
                code: "BAD_RESPONSE".into(),
                message: e.to_string(),
            },
        )
    }

    async fn get_json(&self, url: reqwest::Url, endpoint: &str) -> Result<Value> {
        self.send(self.request(reqwest::Method::GET, url), endpoint)
            .await
    }

    /// Every point of one metric of a run, oldest first.
    pub async fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>> {
        let mut url = self.url("api/2.0/mlflow/metrics/get-history");
        url.query_pairs_mut()
            .append_pair("run_id", run_id)
            .append_pair("metric_key", key)
            .append_pair("max_results", "25000");
        let v = self.get_json(url, "metrics/get-history").await?;
        Ok(v.get("metrics")
            .cloned()
            .map(|m| serde_json::from_value(m).unwrap_or_default())
            .unwrap_or_default())
    }

    /// Logs metrics, params and tags, in as many requests as MLflow's
    /// limits need. Param values are cut to [`MAX_PARAM_VALUE`] characters.
    pub async fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<()> {
        let kv = |(k, v): &(String, String), cut: bool| {
            let v = if cut && v.chars().count() > MAX_PARAM_VALUE {
                v.chars().take(MAX_PARAM_VALUE).collect()
            } else {
                v.clone()
            };
            json!({"key": k, "value": v})
        };
        let mut m = metrics.chunks(MAX_METRICS);
        let mut p = params.chunks(MAX_PARAMS);
        let mut t = tags.chunks(MAX_TAGS);
        loop {
            let (mc, pc, tc) = (m.next(), p.next(), t.next());
            if mc.is_none() && pc.is_none() && tc.is_none() {
                return Ok(());
            }
            let metrics: Vec<Value> = mc
                .unwrap_or_default()
                .iter()
                .map(|m| json!({"key": m.key, "value": finite(m.value), "timestamp": m.timestamp, "step": m.step}))
                .collect();
            let params: Vec<Value> = pc.unwrap_or_default().iter().map(|x| kv(x, true)).collect();
            let tags: Vec<Value> = tc
                .unwrap_or_default()
                .iter()
                .map(|x| kv(x, false))
                .collect();
            self.post(
                "runs/log-batch",
                json!({"run_id": run_id, "metrics": metrics, "params": params, "tags": tags}),
            )
            .await?;
        }
    }

    /// Sets a run's status (and end time when it ended).
    pub async fn set_status(
        &self,
        run_id: &str,
        status: RunStatus,
        end_ms: Option<i64>,
    ) -> Result<()> {
        let mut body = json!({"run_id": run_id, "status": status.as_str()});
        if let Some(t) = end_ms {
            body["end_time"] = json!(t);
        }
        self.post("runs/update", body).await.map(|_| ())
    }

    /// Stores one artifact file of a run on a server that serves
    /// artifacts; `false` (nothing sent) when the run's artifact URI is
    /// not `mlflow-artifacts:` (the server has no artifact proxy).
    pub async fn upload_artifact(&self, run: &RunInfo, name: &str, bytes: Vec<u8>) -> Result<bool> {
        let Some(rest) = run.artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Ok(false);
        };
        // `mlflow-artifacts:/<path>` or `mlflow-artifacts://host/<path>`.
        let path = match rest.strip_prefix("//") {
            Some(r) => r.split_once('/').map(|(_, p)| p).unwrap_or(""),
            None => rest,
        };
        let url = self.url(&format!(
            "api/2.0/mlflow-artifacts/artifacts/{}/{}",
            path.trim_matches('/'),
            name
        ));
        self.send(
            self.request(reqwest::Method::PUT, url).body(bytes),
            "mlflow-artifacts",
        )
        .await?;
        Ok(true)
    }

    /// The artifact paths of a run (top level).
    pub async fn list_artifacts(&self, run_id: &str) -> Result<Vec<String>> {
        let mut url = self.url("api/2.0/mlflow/artifacts/list");
        url.query_pairs_mut().append_pair("run_id", run_id);
        let v = self.get_json(url, "artifacts/list").await?;
        Ok(v.get("files")
            .and_then(Value::as_array)
            .map(|f| {
                f.iter()
                    .filter_map(|x| x.get("path").and_then(Value::as_str).map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// MLflow stores doubles but its JSON API refuses NaN and infinities.
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else if v.is_nan() {
        0.0
    } else if v > 0.0 {
        f64::MAX
    } else {
        f64::MIN
    }
}

/// A nested JSON value as flat `a.b.c = value` pairs (arrays and scalars
/// as their JSON text, strings bare), in key order.
pub fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::Null => {}
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_nests_keys_and_keeps_arrays_whole() {
        let v = json!({"model": {"arch": "bert", "lora": {"r": 8, "targets": ["q", "v"]}}, "seed": 3, "note": null});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        assert_eq!(
            out,
            vec![
                ("model.arch".to_string(), "bert".to_string()),
                ("model.lora.r".into(), "8".into()),
                ("model.lora.targets".into(), "[\"q\",\"v\"]".into()),
                ("seed".into(), "3".into()),
            ]
        );
    }

    #[test]
    fn uris_are_checked_and_never_shown_with_their_password() {
        let m = Mlflow::new(
            "http://alice:s3cret@127.0.0.1:5000/",
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{m:?}").contains("s3cret"));
        assert_eq!(
            m.url("api/2.0/mlflow/runs/get").as_str(),
            "http://127.0.0.1:5000/api/2.0/mlflow/runs/get"
        );
        let sub = Mlflow::new("https://host/mlflow", Duration::from_secs(1)).unwrap();
        assert_eq!(sub.url("api/x").as_str(), "https://host/mlflow/api/x");
        let e = Mlflow::new("file:///tmp/mlruns", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(!e.is_transient());
    }

    #[test]
    fn non_finite_values_are_sent_as_finite_numbers() {
        assert_eq!(finite(f64::NAN), 0.0);
        assert_eq!(finite(f64::INFINITY), f64::MAX);
        assert_eq!(finite(1.5), 1.5);
    }
}
