//! Offline checks of the Kubernetes deployment in `deploy/k8s`, with no
//! cluster and no network:
//!
//! - every YAML document of every manifest validates against the vendored
//!   strict schema of its kind (`deploy/k8s/schemas`: Kubernetes 1.32 for
//!   the Deployment, KEDA 2.20.2 for the ScaledObject and the
//!   TriggerAuthentication), so a misspelt or misplaced field fails;
//! - `kustomization.yaml` lists exactly the manifests, and its image rule
//!   names the image the workers run;
//! - the manifests agree with the code: the ScaledObject's queue is the one
//!   [`Topology`] makes for its Deployment's prefix and device class, its
//!   target and authentication exist, one GPU per `cuda` slot, every flag is
//!   one `worker serve --help` lists, every environment variable is one the
//!   worker reads, the Secret's keys are those `deploy/k8s/README.md`
//!   documents, and the grace period covers
//!   [`common::settle::hand_back_bound`].
//!
//! A failure names the file, the document (1-based, among the file's
//! non-empty documents) and the JSON path of what is wrong.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::config::Services;
use common::job::DeviceClass;
use common::queue::Topology;
use serde_json::{json, Value};
use system_tests::{binary, repo_root};

/// The vendored schema of each `apiVersion` and `kind`, under
/// `deploy/k8s/schemas` (its README says where they come from).
const SCHEMAS: &[(&str, &str, &str)] = &[
    (
        "apps/v1",
        "Deployment",
        "kubernetes-v1.32.0-strict/deployment-apps-v1.json",
    ),
    (
        "keda.sh/v1alpha1",
        "ScaledObject",
        "keda-v2.20.2/scaledobject-keda-v1alpha1.json",
    ),
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "kubernetes-v1.32.0-strict/networkpolicy-networking-v1.json",
    ),
    (
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        "keda-v2.20.2/triggerauthentication-keda-v1alpha1.json",
    ),
];

/// The most grace the cluster autoscaler gives a pod when it drains a node
/// (`--max-graceful-termination-sec`, 600 by default): more would be cut.
const AUTOSCALER_GRACE_SECS: u64 = 600;

/// Variables the worker reads outside [`Services`]: the MLflow sink's
/// (`worker::tracking::TrackingArgs` takes `MLFLOW_TRACKING_URI`,
/// `services::mlflow` the credentials) and the log filter.
const OTHER_WORKER_ENV: &[&str] = &[
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "RUST_LOG",
];

fn k8s_dir() -> PathBuf {
    repo_root().join("deploy/k8s")
}

/// One YAML document of a manifest.
struct Doc {
    /// Relative to the repository root.
    file: String,
    /// 1-based, among the file's non-empty documents.
    index: usize,
    value: Value,
}

impl Doc {
    fn str_at(&self, pointer: &str) -> &str {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn kind(&self) -> &str {
        self.str_at("/kind")
    }

    fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }

    /// Where a finding is: file, document, kind and name, JSON path.
    fn at(&self, pointer: &str) -> String {
        let what = format!("{} {}", self.kind(), self.name());
        format!(
            "{}, document {} ({}), {}",
            self.file,
            self.index,
            what.trim(),
            if pointer.is_empty() { "/" } else { pointer }
        )
    }
}

/// The manifests: every YAML file of `deploy/k8s` but the kustomization.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/k8s")
        .map(|e| e.expect("deploy/k8s entry").path())
        .filter(|p| {
            p.is_file()
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                && p.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/k8s");
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The documents of one YAML file (a parse error names the file).
fn parse(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", relative(path)));
    let values: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", relative(path)));
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Doc {
            file: relative(path),
            index: i + 1,
            value,
        })
        .collect()
}

/// Every document of every manifest.
fn documents() -> Vec<Doc> {
    manifest_files().iter().flat_map(|p| parse(p)).collect()
}

fn of_kind<'a>(docs: &'a [Doc], kind: &str) -> Vec<&'a Doc> {
    docs.iter().filter(|d| d.kind() == kind).collect()
}

/// What a test found wrong, reported all at once.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, doc: &Doc, pointer: &str, what: impl Display) {
        if !ok {
            self.0.push(format!("{}: {what}", doc.at(pointer)));
        }
    }

    fn push(&mut self, finding: String) {
        self.0.push(finding);
    }

    fn assert_none(self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n  {}", self.0.join("\n  "));
    }
}

/// The compiled schemas by `apiVersion` and `kind`.
fn validators() -> HashMap<(String, String), jsonschema::Validator> {
    SCHEMAS
        .iter()
        .map(|(api, kind, file)| {
            let path = k8s_dir().join("schemas").join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", relative(&path)));
            let schema: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", relative(&path)));
            let validator = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", relative(&path)));
            ((api.to_string(), kind.to_string()), validator)
        })
        .collect()
}

/// Schema violations of one document, each with its place.
fn violations(
    validators: &HashMap<(String, String), jsonschema::Validator>,
    doc: &Doc,
) -> Vec<String> {
    let api = doc.str_at("/apiVersion");
    let Some(v) = validators.get(&(api.to_string(), doc.kind().to_string())) else {
        return vec![format!(
            "{}: no vendored schema for apiVersion {api:?} kind {:?} (deploy/k8s/schemas/README.md says how to add one)",
            doc.at(""),
            doc.kind()
        )];
    };
    v.iter_errors(&doc.value)
        .map(|e| format!("{}: {e}", doc.at(&e.instance_path().to_string())))
        .collect()
}

#[test]
fn every_document_validates_against_its_vendored_schema() {
    let validators = validators();
    let docs = documents();
    let mut found = Findings::default();
    for doc in &docs {
        for v in violations(&validators, doc) {
            found.push(v);
        }
    }
    found.assert_none("manifests that the Kubernetes or KEDA schemas refuse");
    let kinds: BTreeSet<&str> = docs.iter().map(Doc::kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "Deployment",
            "NetworkPolicy",
            "ScaledObject",
            "TriggerAuthentication"
        ]),
        "the kinds deploy/k8s is expected to hold"
    );
}

/// The schemas are strict: a misspelt field and a mistyped value fail, with
/// the document's place and the field's path in the message.
#[test]
fn the_schemas_refuse_a_misspelt_field_and_a_mistyped_value() {
    let validators = validators();
    let docs = documents();
    let mut deployment = of_kind(&docs, "Deployment")[0].value.clone();
    deployment["spec"]["replica"] = json!(1);
    let doc = Doc {
        file: "broken.yaml".into(),
        index: 1,
        value: deployment,
    };
    let found = violations(&validators, &doc);
    assert!(
        found.iter().any(|f| f
            .starts_with("broken.yaml, document 1 (Deployment fpb-worker-gpu), /spec: ")
            && f.contains("'replica' was unexpected")),
        "{found:?}"
    );
    let mut scaled = of_kind(&docs, "ScaledObject")[0].value.clone();
    scaled["spec"]["minReplicaCount"] = json!("0");
    let doc = Doc {
        file: "broken.yaml".into(),
        index: 2,
        value: scaled,
    };
    let found = violations(&validators, &doc);
    assert!(
        found.iter().any(|f| f.starts_with(
            "broken.yaml, document 2 (ScaledObject fpb-worker-gpu), /spec/minReplicaCount: "
        ) && f.contains("is not of type \"integer\"")),
        "{found:?}"
    );
}

#[test]
fn kustomization_lists_exactly_the_manifests() {
    let path = k8s_dir().join("kustomization.yaml");
    let docs = parse(&path);
    assert_eq!(docs.len(), 1, "{}: one document", relative(&path));
    let k = &docs[0];
    let mut found = Findings::default();
    found.check(
        k.str_at("/apiVersion") == "kustomize.config.k8s.io/v1beta1",
        k,
        "/apiVersion",
        "expected kustomize.config.k8s.io/v1beta1",
    );
    found.check(
        k.kind() == "Kustomization",
        k,
        "/kind",
        "expected Kustomization",
    );
    let known = ["apiVersion", "kind", "resources", "labels", "images"];
    for key in k.value.as_object().into_iter().flat_map(|o| o.keys()) {
        found.check(
            known.contains(&key.as_str()),
            k,
            &format!("/{key}"),
            format!("unexpected field (this test knows {known:?})"),
        );
    }
    let listed: Vec<&str> = k
        .value
        .pointer("/resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| r.as_str().unwrap_or(""))
        .collect();
    for (i, r) in listed.iter().enumerate() {
        found.check(
            k8s_dir().join(r).is_file(),
            k,
            &format!("/resources/{i}"),
            format!("{r:?} is not a file in deploy/k8s"),
        );
    }
    let listed: BTreeSet<&str> = listed.into_iter().collect();
    for m in manifest_files() {
        let name = m.file_name().unwrap().to_str().unwrap();
        found.check(
            listed.contains(name),
            k,
            "/resources",
            format!("{name} is in deploy/k8s but not listed: `kubectl apply -k` would skip it"),
        );
    }
    // The image rule must name the image the workers run, or kustomize
    // leaves the image alone.
    let docs = documents();
    let rules: Vec<&str> = k
        .value
        .pointer("/images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| i["name"].as_str().unwrap_or(""))
        .collect();
    for d in of_kind(&docs, "Deployment") {
        for (i, c) in containers(d) {
            let image = c["image"].as_str().unwrap_or("");
            let name = image.split([':', '@']).next().unwrap_or("");
            found.check(
                rules.contains(&name),
                d,
                &format!("/spec/template/spec/containers/{i}/image"),
                format!("{image:?}: no `images` rule in kustomization.yaml names {name:?}"),
            );
        }
    }
    found.assert_none("deploy/k8s/kustomization.yaml");
}

/// The containers of a Deployment, with their index.
fn containers(d: &Doc) -> Vec<(usize, &Value)> {
    d.value
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .collect()
}

/// A Deployment's worker container (`serve` its first argument), with its
/// index.
fn worker_container(d: &Doc) -> Option<(usize, &Value)> {
    containers(d)
        .into_iter()
        .find(|(_, c)| c.pointer("/args/0").and_then(Value::as_str) == Some("serve"))
}

/// The container's arguments.
fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap_or(""))
        .collect()
}

/// The value of `--flag` (`--flag VALUE` or `--flag=VALUE`).
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == name {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(eq.as_str())
        }
    })
}

/// The worker's devices (`--devices`, default `cpu`).
fn devices<'a>(args: &[&'a str]) -> Vec<&'a str> {
    flag(args, "--devices")
        .unwrap_or("cpu")
        .split(',')
        .map(str::trim)
        .collect()
}

/// The device class a slot serves, by the worker's own rule
/// (`worker::serve::device_class`).
fn device_class(device: &str) -> DeviceClass {
    if device.starts_with("cuda") {
        DeviceClass::Gpu
    } else {
        DeviceClass::Cpu
    }
}

/// A container's plain environment values (`value`, not from a Secret).
fn plain_env(c: &Value) -> BTreeMap<&str, &str> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect()
}

#[test]
fn scaled_objects_scale_their_workers_on_their_class_queue() {
    let docs = documents();
    let mut found = Findings::default();
    let scaled = of_kind(&docs, "ScaledObject");
    assert!(!scaled.is_empty(), "no ScaledObject in deploy/k8s");
    let deployments = of_kind(&docs, "Deployment");
    for d in &deployments {
        found.check(
            scaled
                .iter()
                .any(|s| s.str_at("/spec/scaleTargetRef/name") == d.name()),
            d,
            "/metadata/name",
            "no ScaledObject scales this Deployment",
        );
    }
    for s in scaled {
        let kind = s
            .value
            .pointer("/spec/scaleTargetRef/kind")
            .and_then(Value::as_str)
            .unwrap_or("Deployment");
        let target_name = s.str_at("/spec/scaleTargetRef/name");
        let target = deployments
            .iter()
            .find(|d| kind == "Deployment" && d.name() == target_name);
        found.check(
            target.is_some(),
            s,
            "/spec/scaleTargetRef",
            format!("names {kind} {target_name:?}, which is not a Deployment in deploy/k8s"),
        );
        let min = s
            .value
            .pointer("/spec/minReplicaCount")
            .and_then(Value::as_i64);
        found.check(
            min == Some(0),
            s,
            "/spec/minReplicaCount",
            format!("{min:?}: expected 0 (no worker, no GPU held, while nothing is queued)"),
        );
        // The CRD's CEL rule, which the JSON schema cannot express.
        let max = s
            .value
            .pointer("/spec/maxReplicaCount")
            .and_then(Value::as_i64)
            .unwrap_or(100);
        found.check(
            min.unwrap_or(0) <= max,
            s,
            "/spec/maxReplicaCount",
            "minReplicaCount must be less than or equal to maxReplicaCount",
        );
        let select = s
            .str_at("/spec/advanced/horizontalPodAutoscalerConfig/behavior/scaleDown/selectPolicy");
        found.check(
            select == "Disabled",
            s,
            "/spec/advanced/horizontalPodAutoscalerConfig/behavior/scaleDown/selectPolicy",
            format!("{select:?}: expected Disabled (a scale-down would as likely stop a busy worker as an idle one)"),
        );
        let triggers: Vec<&Value> = s
            .value
            .pointer("/spec/triggers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        found.check(
            triggers.len() == 1,
            s,
            "/spec/triggers",
            "expected one trigger, on the work queue",
        );
        let Some(((_, worker), target)) = target.and_then(|t| Some((worker_container(t)?, t)))
        else {
            continue;
        };
        let args = args(worker);
        let devices = devices(&args);
        let class = device_class(devices[0]);
        let prefix = plain_env(worker).get("QUEUE_PREFIX").copied();
        found.check(
            prefix.is_some(),
            target,
            "/spec/template/spec/containers",
            "QUEUE_PREFIX must be set as a plain value: the ScaledObject's queue name is made with it",
        );
        let queue = Topology::new(prefix.unwrap_or("fpb")).jobs_queue(class);
        let slots = devices.len().to_string();
        for (i, t) in triggers.iter().enumerate() {
            let at = |field: &str| format!("/spec/triggers/{i}/{field}");
            let meta = |key: &str| {
                t.pointer(&format!("/metadata/{key}"))
                    .and_then(Value::as_str)
            };
            found.check(t["type"] == "rabbitmq", s, &at("type"), "expected rabbitmq");
            found.check(
                meta("queueName") == Some(queue.as_str()),
                s,
                &at("metadata/queueName"),
                format!(
                    "{:?}: the {} workers of {} consume {queue:?}",
                    meta("queueName"),
                    class.as_str(),
                    target.name()
                ),
            );
            found.check(
                meta("mode") == Some("QueueLength"),
                s,
                &at("metadata/mode"),
                format!("{:?}: expected QueueLength", meta("mode")),
            );
            found.check(
                meta("protocol") == Some("http"),
                s,
                &at("metadata/protocol"),
                format!(
                    "{:?}: expected http (over AMQP KEDA counts ready messages only, and a running job's unacknowledged one would not keep its worker)",
                    meta("protocol")
                ),
            );
            found.check(
                meta("value") == Some(slots.as_str()),
                s,
                &at("metadata/value"),
                format!(
                    "{:?}: expected {slots:?}, the job slots of one pod (--devices)",
                    meta("value")
                ),
            );
            let auth = t
                .pointer("/authenticationRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            found.check(
                of_kind(&docs, "TriggerAuthentication")
                    .iter()
                    .any(|a| a.name() == auth),
                s,
                &at("authenticationRef/name"),
                format!("{auth:?} is not a TriggerAuthentication in deploy/k8s"),
            );
        }
    }
    // The queue of the default prefix, as the README and comments say.
    assert_eq!(
        Topology::new("fpb").jobs_queue(DeviceClass::Gpu),
        "fpb.jobs.v2.gpu"
    );
    found.assert_none("ScaledObjects and what they scale");
}

#[test]
fn gpu_slots_get_one_gpu_each() {
    let docs = documents();
    let mut found = Findings::default();
    for d in of_kind(&docs, "Deployment") {
        let Some((i, c)) = worker_container(d) else {
            found.push(format!(
                "{}: no container runs `serve`",
                d.at("/spec/template/spec/containers")
            ));
            continue;
        };
        let args = args(c);
        let devices = devices(&args);
        let cuda: Vec<&str> = devices
            .iter()
            .copied()
            .filter(|d| device_class(d) == DeviceClass::Gpu)
            .collect();
        let gpus = c
            .pointer("/resources/limits/nvidia.com~1gpu")
            .map(|q| q.as_str().map(str::to_string).unwrap_or(q.to_string()));
        let expected = (!cuda.is_empty()).then(|| cuda.len().to_string());
        found.check(
            gpus == expected,
            d,
            &format!("/spec/template/spec/containers/{i}/resources/limits/nvidia.com~1gpu"),
            format!(
                "{gpus:?}: expected {expected:?} for --devices {}",
                devices.join(",")
            ),
        );
        // The container sees its GPUs as cuda:0, cuda:1, ...
        let numbered: Vec<String> = (0..cuda.len()).map(|n| format!("cuda:{n}")).collect();
        found.check(
            cuda == numbered,
            d,
            &format!("/spec/template/spec/containers/{i}/args"),
            format!(
                "--devices {}: expected {}",
                devices.join(","),
                numbered.join(",")
            ),
        );
        found.check(
            devices
                .iter()
                .all(|d| device_class(d) == device_class(devices[0])),
            d,
            &format!("/spec/template/spec/containers/{i}/args"),
            "one device class per Deployment: one ScaledObject scales it on one queue",
        );
    }
    found.assert_none("GPU requests");
}

#[test]
fn worker_flags_are_ones_worker_serve_accepts() {
    let out = Command::new(binary("worker"))
        .args(["serve", "--help"])
        .output()
        .expect("worker serve --help");
    assert!(out.status.success(), "worker serve --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    let accepted: BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '<')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    assert!(
        accepted.contains("--devices"),
        "unexpected help text:\n{help}"
    );
    let docs = documents();
    let mut found = Findings::default();
    for d in of_kind(&docs, "Deployment") {
        let Some((i, c)) = worker_container(d) else {
            continue;
        };
        let args = args(c);
        for (n, a) in args.iter().enumerate() {
            let name = a.split('=').next().unwrap_or("");
            found.check(
                !a.starts_with("--") || accepted.contains(name),
                d,
                &format!("/spec/template/spec/containers/{i}/args/{n}"),
                format!("{a:?} is not a flag of `worker serve` (it accepts {accepted:?})"),
            );
        }
        // The spool is an emptyDir mounted where --spool-dir points.
        let spool = flag(&args, "--spool-dir");
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| Some(m["mountPath"].as_str().unwrap_or("")) == spool);
        let empty_dir = mount.is_some_and(|m| {
            d.value
                .pointer("/spec/template/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|v| v["name"] == m["name"] && v.get("emptyDir").is_some())
        });
        found.check(
            empty_dir,
            d,
            &format!("/spec/template/spec/containers/{i}/args"),
            format!("--spool-dir {spool:?}: expected the mount path of an emptyDir volume"),
        );
    }
    found.assert_none("worker arguments");
}

#[test]
fn environment_is_what_the_worker_reads() {
    let docs = documents();
    let mut found = Findings::default();
    for d in of_kind(&docs, "Deployment") {
        let Some((i, c)) = worker_container(d) else {
            continue;
        };
        let args = args(c);
        let spec_env: Vec<&str> = flag(&args, "--spec-env")
            .map(|v| v.split(',').collect())
            .unwrap_or_default();
        let env: Vec<(usize, &str, Option<&str>)> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(n, e)| (n, e["name"].as_str().unwrap_or(""), e["value"].as_str()))
            .collect();
        found.check(
            c.get("envFrom").is_none(),
            d,
            &format!("/spec/template/spec/containers/{i}/envFrom"),
            "name each variable (env with secretKeyRef), so that this test can check it",
        );
        // Values from the Secret are the operator's: "1" stands for them,
        // a value every setting accepts.
        let values: HashMap<&str, &str> =
            env.iter().map(|(_, n, v)| (*n, v.unwrap_or("1"))).collect();
        let asked = RefCell::new(BTreeSet::new());
        let services = Services::from_lookup(|name| {
            asked.borrow_mut().insert(name.to_string());
            values.get(name).map(|v| v.to_string())
        });
        found.check(
            services.is_ok(),
            d,
            &format!("/spec/template/spec/containers/{i}/env"),
            format!(
                "the worker refuses this configuration: {:?}",
                services.err()
            ),
        );
        let asked = asked.into_inner();
        let mut seen = BTreeSet::new();
        for (n, name, _) in env {
            let spec =
                name.ends_with("_DIR") || name.ends_with("_PATH") || spec_env.contains(&name);
            found.check(
                asked.contains(name) || spec || OTHER_WORKER_ENV.contains(&name),
                d,
                &format!("/spec/template/spec/containers/{i}/env/{n}/name"),
                format!("{name}: the worker reads no such variable (common::config::Services, a spec's `${{*_DIR}}`, or OTHER_WORKER_ENV)"),
            );
            found.check(
                seen.insert(name),
                d,
                &format!("/spec/template/spec/containers/{i}/env/{n}/name"),
                format!("{name} is set twice"),
            );
        }
    }
    found.assert_none("worker environment");
}

/// A key the Secret's table in deploy/k8s/README.md documents.
#[derive(Debug, PartialEq)]
struct DocumentedKey {
    required: bool,
    reader: String,
}

impl Display for DocumentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let need = if self.required {
            "required"
        } else {
            "optional"
        };
        write!(f, "{need}, read by {}", self.reader)
    }
}

/// The Secret's name (from the README's `kubectl create secret generic`),
/// its documented keys, and the keys that command sets.
fn documented_secret() -> (String, BTreeMap<String, DocumentedKey>, BTreeSet<String>) {
    let text = std::fs::read_to_string(k8s_dir().join("README.md")).expect("deploy/k8s/README.md");
    let command = text
        .split("kubectl create secret generic ")
        .nth(1)
        .expect("deploy/k8s/README.md: no `kubectl create secret generic` command");
    let name = command.split_whitespace().next().unwrap_or("").to_string();
    let command_end = command.find("\n```").unwrap_or(command.len());
    let literals: BTreeSet<String> = command[..command_end]
        .split("--from-literal=")
        .skip(1)
        .map(|l| l.split('=').next().unwrap_or("").to_string())
        .collect();
    let heading = format!("## The Secret `{name}`");
    let table = text
        .split(&heading)
        .nth(1)
        .unwrap_or_else(|| panic!("deploy/k8s/README.md: no section {heading:?}"));
    let keys = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((
                key.to_string(),
                DocumentedKey {
                    required: cells.get(2) == Some(&"required"),
                    reader: cells.get(3).unwrap_or(&"").to_string(),
                },
            ))
        })
        .collect();
    (name, keys, literals)
}

#[test]
fn secret_keys_are_the_documented_ones() {
    let (secret, documented, literals) = documented_secret();
    assert!(
        !documented.is_empty(),
        "deploy/k8s/README.md: the Secret's table has no keys"
    );
    let docs = documents();
    let mut found = Findings::default();
    // Every reference: (document, path, secret, key, as documented).
    let mut used: BTreeMap<String, DocumentedKey> = BTreeMap::new();
    let mut refs: Vec<(&Doc, String, &str, &str, DocumentedKey)> = Vec::new();
    for d in of_kind(&docs, "Deployment") {
        for (i, c) in containers(d) {
            for (n, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                    refs.push((
                        d,
                        format!(
                            "/spec/template/spec/containers/{i}/env/{n}/valueFrom/secretKeyRef"
                        ),
                        r["name"].as_str().unwrap_or(""),
                        r["key"].as_str().unwrap_or(""),
                        DocumentedKey {
                            required: r["optional"] != true,
                            reader: "worker".into(),
                        },
                    ));
                }
            }
        }
    }
    for a in of_kind(&docs, "TriggerAuthentication") {
        for (n, r) in a
            .value
            .pointer("/spec/secretTargetRef")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            refs.push((
                a,
                format!("/spec/secretTargetRef/{n}"),
                r["name"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
                DocumentedKey {
                    required: true,
                    reader: "KEDA".into(),
                },
            ));
        }
    }
    for (d, at, name, key, how) in refs {
        found.check(
            name == secret,
            d,
            &format!("{at}/name"),
            format!("{name:?}: the README's Secret is {secret:?}"),
        );
        let doc = documented.get(key);
        found.check(
            doc == Some(&how),
            d,
            &format!("{at}/key"),
            match doc {
                Some(doc) => format!("{key:?} is {how} here; deploy/k8s/README.md says {doc}"),
                None => {
                    format!("{key:?} ({how}) is not in the Secret's table in deploy/k8s/README.md")
                }
            },
        );
        used.insert(key.to_string(), how);
    }
    for key in documented.keys() {
        if !used.contains_key(key) {
            found.push(format!(
                "deploy/k8s/README.md: the Secret's key {key:?} is documented but no manifest reads it"
            ));
        }
    }
    let required: BTreeSet<String> = documented
        .iter()
        .filter(|(_, k)| k.required)
        .map(|(k, _)| k.clone())
        .collect();
    if literals != required {
        found.push(format!(
            "deploy/k8s/README.md: `kubectl create secret generic {secret}` sets {literals:?}, the required keys are {required:?}"
        ));
    }
    found.assert_none("the Secret's keys");
}

#[test]
fn grace_period_covers_the_hand_back() {
    let hand_back = common::settle::hand_back_bound(services::broker::CONFIRM_TIMEOUT).as_secs();
    let docs = documents();
    let mut found = Findings::default();
    for d in of_kind(&docs, "Deployment") {
        let Some((i, c)) = worker_container(d) else {
            continue;
        };
        // A job's MLflow events get this long before the run is settled.
        let flush = flag(&args(c), "--mlflow-flush-secs").and_then(|v| v.parse::<u64>().ok());
        found.check(
            flush.is_some(),
            d,
            &format!("/spec/template/spec/containers/{i}/args"),
            "set --mlflow-flush-secs: it is part of the time a hand-back takes",
        );
        let bound = hand_back + flush.unwrap_or(0);
        let grace = d
            .value
            .pointer("/spec/template/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64);
        found.check(
            grace.is_some_and(|g| (bound..=AUTOSCALER_GRACE_SECS).contains(&g)),
            d,
            "/spec/template/spec/terminationGracePeriodSeconds",
            format!(
                "{grace:?}: expected from {bound} s (the longest hand-back, common::settle::hand_back_bound, {hand_back} s, and the MLflow flush) to {AUTOSCALER_GRACE_SECS} s (what the cluster autoscaler grants)"
            ),
        );
    }
    found.assert_none("grace periods");
}

/// The worker runs unprivileged: the image's last stage switches to a
/// numeric non-root user, and every worker Deployment runs as that user
/// (`runAsNonRoot`), with a read-only root filesystem, its temporary files
/// and spool on volumes that have a size limit.
#[test]
fn workers_run_unprivileged_with_a_read_only_root() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = last_stage
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .map(|u| u.split(':').next().unwrap_or("").trim().to_string());
    let uid = user.as_deref().and_then(|u| u.parse::<u64>().ok());
    assert!(
        uid.is_some_and(|u| u != 0),
        "Dockerfile: the last stage must end as a numeric non-root USER, found {user:?}"
    );
    let docs = documents();
    let mut found = Findings::default();
    for d in of_kind(&docs, "Deployment") {
        let Some((i, c)) = worker_container(d) else {
            continue;
        };
        let pod = "/spec/template/spec/securityContext";
        found.check(
            d.value.pointer(&format!("{pod}/runAsNonRoot")) == Some(&json!(true)),
            d,
            &format!("{pod}/runAsNonRoot"),
            "must be true",
        );
        found.check(
            d.value
                .pointer(&format!("{pod}/runAsUser"))
                .and_then(Value::as_u64)
                == uid,
            d,
            &format!("{pod}/runAsUser"),
            format!("must be the image's user {uid:?}"),
        );
        let sc = format!("/spec/template/spec/containers/{i}/securityContext");
        found.check(
            c.pointer("/securityContext/readOnlyRootFilesystem") == Some(&json!(true)),
            d,
            &format!("{sc}/readOnlyRootFilesystem"),
            "must be true",
        );
        let mounts: Vec<&str> = c
            .pointer("/volumeMounts")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(|v| v["mountPath"].as_str()).collect())
            .unwrap_or_default();
        found.check(
            mounts.contains(&"/tmp"),
            d,
            &format!("/spec/template/spec/containers/{i}/volumeMounts"),
            "/tmp must be a volume (the root filesystem is read-only)",
        );
        let volumes = d
            .value
            .pointer("/spec/template/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, v) in volumes.iter().enumerate() {
            if let Some(e) = v.get("emptyDir") {
                found.check(
                    e.get("sizeLimit").is_some(),
                    d,
                    &format!("/spec/template/spec/volumes/{j}/emptyDir"),
                    "an emptyDir needs a sizeLimit",
                );
            }
        }
    }
    found.assert_none("unprivileged workers");
}

/// Every worker Deployment probes the worker's `/livez` on the port its
/// `--metrics-addr` listens on (a hung job's worker answers 503 there).
#[test]
fn workers_are_probed_for_liveness_on_their_metrics_port() {
    let docs = documents();
    let mut found = Findings::default();
    for d in of_kind(&docs, "Deployment") {
        let Some((i, c)) = worker_container(d) else {
            continue;
        };
        let at = format!("/spec/template/spec/containers/{i}/livenessProbe/httpGet");
        let a = args(c);
        let metrics_port: Option<u64> = flag(&a, "--metrics-addr")
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.parse().ok());
        found.check(
            c.pointer("/livenessProbe/httpGet/path") == Some(&json!("/livez")),
            d,
            &format!("{at}/path"),
            "must be /livez",
        );
        let port = c.pointer("/livenessProbe/httpGet/port");
        let resolved = match port {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(name)) => c
                .pointer("/ports")
                .and_then(Value::as_array)
                .and_then(|ps| ps.iter().find(|p| p["name"] == json!(name)))
                .and_then(|p| p["containerPort"].as_u64()),
            _ => None,
        };
        found.check(
            resolved.is_some() && resolved == metrics_port,
            d,
            &format!("{at}/port"),
            format!("must be the --metrics-addr port {metrics_port:?}"),
        );
    }
    found.assert_none("liveness probes");
}

/// `docker compose stop` gives a worker as long as the longest hand-back
/// (common::settle::hand_back_bound) plus the MLflow flush, like the
/// Kubernetes grace period.
#[test]
fn compose_grace_period_covers_the_hand_back() {
    let hand_back = common::settle::hand_back_bound(services::broker::CONFIRM_TIMEOUT).as_secs();
    let text = std::fs::read_to_string(repo_root().join("compose.yaml")).unwrap();
    let compose: Value = serde_saphyr::from_str(&text).expect("compose.yaml is YAML");
    let worker = &compose["x-worker"];
    let command: Vec<&str> = worker["command"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // The worker's default when the command does not set it.
    let flush = flag(&command, "--mlflow-flush-secs")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60);
    let grace = worker["stop_grace_period"]
        .as_str()
        .and_then(|g| g.strip_suffix('s'))
        .and_then(|g| g.parse::<u64>().ok());
    assert!(
        grace.is_some_and(|g| g >= hand_back + flush),
        "compose.yaml x-worker.stop_grace_period {:?}: at least {} s (hand-back {hand_back} s + MLflow flush {flush} s)",
        worker["stop_grace_period"],
        hand_back + flush
    );
    // No worker service shortens it.
    for (name, svc) in compose["services"].as_object().unwrap() {
        if let Some(g) = svc.get("stop_grace_period") {
            let secs = g
                .as_str()
                .and_then(|g| g.strip_suffix('s'))
                .and_then(|g| g.parse::<u64>().ok());
            assert!(
                secs.is_some_and(|s| s >= hand_back + flush) || !name.starts_with("worker"),
                "compose.yaml services.{name}.stop_grace_period {g:?} is shorter than the hand-back"
            );
        }
    }
}

/// A NetworkPolicy selects the worker pods and lets them reach only DNS
/// and the services they use, on their usual ports, with no rule that
/// opens everything; in, only the metrics port the probes and Prometheus
/// use.
#[test]
fn workers_reach_only_their_services() {
    let docs = documents();
    let policies = of_kind(&docs, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "one NetworkPolicy for the workers");
    let p = policies[0];
    let mut found = Findings::default();
    let selector = p.value.pointer("/spec/podSelector/matchLabels").cloned();
    let mut metrics_ports = BTreeSet::new();
    for d in of_kind(&docs, "Deployment") {
        let Some((_, c)) = worker_container(d) else {
            continue;
        };
        let labels = d.value.pointer("/spec/template/metadata/labels");
        let selected = selector
            .as_ref()
            .and_then(Value::as_object)
            .is_some_and(|m| {
                !m.is_empty()
                    && m.iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            });
        found.check(
            selected,
            p,
            "/spec/podSelector/matchLabels",
            format!("must select the pods of {}", d.at("/")),
        );
        let a = args(c);
        if let Some(port) = flag(&a, "--metrics-addr")
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.parse::<u64>().ok())
        {
            metrics_ports.insert(("TCP".to_string(), port));
        }
    }
    let types = p.value.pointer("/spec/policyTypes").cloned();
    found.check(
        types == Some(json!(["Ingress", "Egress"])),
        p,
        "/spec/policyTypes",
        "must restrict both Ingress and Egress",
    );
    let ports_of = |dir: &str, found: &mut Findings| -> BTreeSet<(String, u64)> {
        let mut all = BTreeSet::new();
        let rules = p
            .value
            .pointer(&format!("/spec/{dir}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, r) in rules.iter().enumerate() {
            let ports = r.get("ports").and_then(Value::as_array);
            found.check(
                ports.is_some_and(|p| !p.is_empty()),
                p,
                &format!("/spec/{dir}/{i}"),
                "a rule without ports opens every port",
            );
            for port in ports.into_iter().flatten() {
                all.insert((
                    port["protocol"].as_str().unwrap_or("TCP").to_string(),
                    port["port"].as_u64().unwrap_or(0),
                ));
            }
        }
        all
    };
    let ingress = ports_of("ingress", &mut found);
    found.check(
        ingress == metrics_ports,
        p,
        "/spec/ingress",
        format!("must open the metrics port only: {metrics_ports:?}"),
    );
    // DNS, and the default ports of the worker's URLs: AMQP (and AMQPS),
    // Redis, S3 over HTTPS, MinIO, MLflow.
    let services: BTreeSet<(String, u64)> = [
        ("UDP", 53),
        ("TCP", 53),
        ("TCP", 5672),
        ("TCP", 5671),
        ("TCP", 6379),
        ("TCP", 443),
        ("TCP", 9000),
        ("TCP", 5000),
    ]
    .into_iter()
    .map(|(p, n)| (p.to_string(), n))
    .collect();
    let egress = ports_of("egress", &mut found);
    found.check(
        egress == services,
        p,
        "/spec/egress",
        format!("must be exactly {services:?}, found {egress:?}"),
    );
    found.assert_none("network policy");
}

/// Compose's third-party images are pinned to a release (a version with
/// its minor number, or a dated release), never `latest` or a bare major:
/// `docker compose up` next year runs what was tested. The project's own
/// image is built from the Dockerfile.
#[test]
fn compose_images_are_pinned() {
    let text = std::fs::read_to_string(repo_root().join("compose.yaml")).unwrap();
    let compose: Value = serde_saphyr::from_str(&text).expect("compose.yaml is YAML");
    let mut loose = Vec::new();
    for (name, svc) in compose["services"].as_object().unwrap() {
        let Some(image) = svc["image"].as_str() else {
            continue;
        };
        let (repo, tag) = image.rsplit_once(':').unwrap_or((image, ""));
        if repo == "fpb-dendrites" {
            continue;
        }
        let parts: Vec<&str> = tag.split(['-', '.']).take(2).collect();
        let minor = parts.len() == 2
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        let dated = tag.starts_with("RELEASE.20");
        if !(minor || dated) {
            loose.push(format!("{name}: {image}"));
        }
    }
    assert!(
        loose.is_empty(),
        "compose.yaml images not pinned: {loose:?}"
    );
}
