//! Versioned job messages: what a producer publishes and a worker consumes.
//! A message carries the complete spec, so a worker needs nothing else to
//! run it. Decoding failures say which field is wrong, so a malformed
//! message can be dead-lettered with its reason.

use serde::{Deserialize, Serialize};

use crate::spec::{JobSpec, Variant};
use crate::sweep::Job;

/// The message format version this build reads and writes.
pub const MESSAGE_VERSION: u32 = 1;

/// What the worker does with the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobKind {
    /// Train from the spec.
    Train,
    /// Evaluate an earlier run's trained parameters (by job id in the same
    /// sweep, or an `s3://` URI of its `trained.safetensors`) on a split.
    Validate {
        source: String,
        split: EvalSplit,
        /// Score with every dendrite term left out (knock-out re-score).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        knockout: bool,
    },
}

/// The split a validate job scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalSplit {
    Val,
    Test,
}

serde_plain::derive_display_from_serialize!(EvalSplit);
serde_plain::derive_fromstr_from_deserialize!(EvalSplit);

/// The device class a job needs: one queue per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    Gpu,
    Cpu,
}

impl DeviceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Gpu => "gpu",
            DeviceClass::Cpu => "cpu",
        }
    }

    /// The class [`DeviceClass::as_str`] names, if `s` is one.
    pub fn parse(s: &str) -> Option<DeviceClass> {
        match s {
            "gpu" => Some(DeviceClass::Gpu),
            "cpu" => Some(DeviceClass::Cpu),
            _ => None,
        }
    }
}

/// One job on the queue. (Unknown top-level fields are ignored so that
/// newer producers can add optional fields; the spec itself is strict.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub version: u32,
    pub job_id: String,
    pub sweep: String,
    #[serde(flatten)]
    pub kind: JobKind,
    pub variant: Variant,
    pub device: DeviceClass,
    /// 1 for the first delivery; the producer's `retry` increments it.
    pub attempt: u32,
    pub config_hash: String,
    pub spec: JobSpec,
}

/// Why a message cannot be run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("not a job message: {0}")]
    Malformed(String),
    #[error(
        "message version {found} is not supported (this worker reads version {MESSAGE_VERSION})"
    )]
    Version { found: u32 },
    #[error("invalid spec in job {job}: {reason}")]
    Spec { job: String, reason: String },
}

impl JobMessage {
    /// The training message of an expanded sweep point.
    pub fn train(sweep: &str, job: &Job, device: DeviceClass) -> JobMessage {
        JobMessage {
            version: MESSAGE_VERSION,
            job_id: job.id.clone(),
            sweep: sweep.to_string(),
            kind: JobKind::Train,
            variant: job.spec.variant,
            device,
            attempt: 1,
            config_hash: job.config_hash.clone(),
            spec: job.spec.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("job messages serialise")
    }

    /// Decodes and checks a message: version first (so a newer format is
    /// reported as such), then the fields, then the spec.
    pub fn decode(bytes: &[u8]) -> Result<JobMessage, MessageError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == MESSAGE_VERSION as u64 => {}
            Some(v) => return Err(MessageError::Version { found: v as u32 }),
            None => return Err(MessageError::Malformed("missing field `version`".into())),
        }
        let msg: JobMessage =
            serde_json::from_value(value).map_err(|e| MessageError::Malformed(e.to_string()))?;
        msg.spec.validate().map_err(|e| MessageError::Spec {
            job: msg.job_id.clone(),
            reason: e.to_string(),
        })?;
        if msg.variant != msg.spec.variant {
            return Err(MessageError::Spec {
                job: msg.job_id.clone(),
                reason: "`variant` differs from `spec.variant`".into(),
            });
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::Sweep;

    fn sweep() -> Sweep {
        Sweep::parse(
            "s.toml",
            "[sweep]\nname = \"s\"\n[base.model]\narch = \"bert\"\npath = \"/m\"\n[base.data]\npath = \"/d\"\n[grid]\nvariant = [\"baseline\", \"dendritic\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let s = sweep();
        let m = JobMessage::train(&s.name, &s.jobs[1], DeviceClass::Gpu);
        let back = JobMessage::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.variant, Variant::Dendritic);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("\"kind\":\"train\""), "{text}");
    }

    #[test]
    fn validate_kind_round_trips() {
        let s = sweep();
        let mut m = JobMessage::train(&s.name, &s.jobs[0], DeviceClass::Cpu);
        m.kind = JobKind::Validate {
            source: "s-000-abc".into(),
            split: EvalSplit::Test,
            knockout: true,
        };
        assert_eq!(JobMessage::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(
            JobMessage::decode(b"not json"),
            Err(MessageError::Malformed(_))
        ));
        assert_eq!(
            JobMessage::decode(br#"{"version": 7}"#),
            Err(MessageError::Version { found: 7 })
        );
        let s = sweep();
        let mut v: serde_json::Value = serde_json::from_slice(
            &JobMessage::train(&s.name, &s.jobs[0], DeviceClass::Cpu).encode(),
        )
        .unwrap();
        v["spec"]["train"]["epochs"] = 0.into();
        let e = JobMessage::decode(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.epochs"), "{e}");
        v["spec"]["train"]["epochs"] = 1.into();
        v.as_object_mut().unwrap().remove("job_id");
        let e = JobMessage::decode(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("job_id"), "{e}");
    }
}
