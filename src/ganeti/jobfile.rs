//! Ganeti job files (`queue/job-<id>`, `queue/archive/<n>/job-<id>`).
//!
//! Only the fields eventd needs are modelled; the rest of each op's `input` is kept as
//! raw JSON because messages copy parts of it verbatim.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Op (and job) status as Ganeti writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpStatus {
    Queued,
    Waiting,
    Canceling,
    Running,
    Canceled,
    Success,
    Error,
}

impl OpStatus {
    /// canceled, success and error never change again.
    pub fn is_finalized(self) -> bool {
        matches!(
            self,
            OpStatus::Canceled | OpStatus::Success | OpStatus::Error
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Queued => "queued",
            OpStatus::Waiting => "waiting",
            OpStatus::Canceling => "canceling",
            OpStatus::Running => "running",
            OpStatus::Canceled => "canceled",
            OpStatus::Success => "success",
            OpStatus::Error => "error",
        }
    }
}

/// `[seconds, microseconds]`, as Ganeti stores every timestamp.
pub type Timestamp = [i64; 2];

#[derive(Debug, Clone, Deserialize)]
pub struct Op {
    pub input: Map<String, Value>,
    pub status: OpStatus,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub log: Vec<Vec<Value>>,
    #[serde(default)]
    pub start_timestamp: Option<Timestamp>,
    #[serde(default)]
    pub exec_timestamp: Option<Timestamp>,
    #[serde(default)]
    pub end_timestamp: Option<Timestamp>,
}

impl Op {
    /// `input.OP_ID` (validated present by [`parse`]).
    pub fn op_id(&self) -> &str {
        self.input
            .get("OP_ID")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The message of the last log entry (`log[-1][-1]`), or null.
    pub fn logmsg(&self) -> Value {
        self.log
            .last()
            .and_then(|e| e.last())
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// A string field of the op's input.
    pub fn input_str(&self, key: &str) -> Option<&str> {
        self.input.get(key).and_then(Value::as_str)
    }

    /// A field of the op's input, null when missing.
    pub fn input_field(&self, key: &str) -> Value {
        self.input.get(key).cloned().unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    #[serde(deserialize_with = "job_id")]
    pub id: u64,
    pub ops: Vec<Op>,
    #[serde(default)]
    pub received_timestamp: Option<Timestamp>,
    #[serde(default)]
    pub start_timestamp: Option<Timestamp>,
    #[serde(default)]
    pub end_timestamp: Option<Timestamp>,
}

/// Ganeti 2.x wrote the id as a string, 3.x as a number.
fn job_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Num(u64),
        Str(String),
    }
    match Id::deserialize(d)? {
        Id::Num(n) => Ok(n),
        Id::Str(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("job id {s:?} is not a number"))),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobFileError {
    #[error("not JSON or not a job: {0}")]
    Json(String),
    #[error("op {index}: {reason}")]
    Op { index: usize, reason: String },
    #[error("job id {found} does not match the file name (job-{expected})")]
    IdMismatch { expected: u64, found: u64 },
}

/// The job id in a queue file name; only `^job-[0-9]+$` qualifies, which excludes the
/// temp names Ganeti renames from (`job-7-123-0.tmp`, `job-7XXXXXXXX.new`).
pub fn job_id_from_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("job-")?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parse and validate a job file's contents. `expected_id` is the id from the file name.
pub fn parse(data: &[u8], expected_id: Option<u64>) -> Result<Job, JobFileError> {
    let job: Job = serde_json::from_slice(data).map_err(|e| JobFileError::Json(e.to_string()))?;
    if let Some(expected) = expected_id {
        if job.id != expected {
            return Err(JobFileError::IdMismatch {
                expected,
                found: job.id,
            });
        }
    }
    for (index, op) in job.ops.iter().enumerate() {
        match op.input.get("OP_ID") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(JobFileError::Op {
                    index,
                    reason: "input.OP_ID is missing or not a string".into(),
                })
            }
        }
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V6: &str = include_str!(
        "../../tests/fixtures/ganeti/job-versions/job-6-instance-startup-v6-success.json"
    );

    #[test]
    fn names() {
        assert_eq!(job_id_from_name("job-6"), Some(6));
        assert_eq!(job_id_from_name("job-123456"), Some(123456));
        for bad in [
            "job-",
            "job-6-1234-0.tmp",
            "job-6abcdefgh.new",
            "job-x",
            "xjob-6",
            "serial",
            "job-99999999999999999999",
        ] {
            assert_eq!(job_id_from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn real_job_file_parses() {
        let job = parse(V6.as_bytes(), Some(6)).unwrap();
        assert_eq!(job.id, 6);
        assert_eq!(job.ops.len(), 1);
        let op = &job.ops[0];
        assert_eq!(op.op_id(), "OP_INSTANCE_STARTUP");
        assert_eq!(op.status, OpStatus::Success);
        assert_eq!(op.end_timestamp, Some([1795370263, 391693]));
        assert_eq!(op.logmsg(), Value::Null);
        assert_eq!(job.received_timestamp, Some([1795370262, 734074]));
    }

    #[test]
    fn string_ids_and_log_messages() {
        let j = r#"{"id":"12","ops":[{"input":{"OP_ID":"OP_X"},"status":"running","log":[[1,[1,2],"message","first"],[2,[1,3],"message","last"]]}]}"#;
        let job = parse(j.as_bytes(), Some(12)).unwrap();
        assert_eq!(job.ops[0].logmsg(), Value::String("last".into()));
        assert_eq!(job.received_timestamp, None);
    }

    #[test]
    fn bad_inputs_are_described() {
        let e = parse(b"{\"id\": 6, \"ops\": [", Some(6)).unwrap_err();
        assert!(matches!(e, JobFileError::Json(_)), "{e}");
        let e = parse(b"not json", None).unwrap_err().to_string();
        assert!(e.starts_with("not JSON or not a job"), "{e}");
        let e = parse(
            br#"{"id":6,"ops":[{"input":{},"status":"queued"}]}"#,
            Some(6),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "op 0: input.OP_ID is missing or not a string"
        );
        let e = parse(
            br#"{"id":6,"ops":[{"input":{"OP_ID":"X"},"status":"bogus"}]}"#,
            Some(6),
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse(br#"{"id":7,"ops":[]}"#, Some(6)).unwrap_err();
        assert_eq!(
            e,
            JobFileError::IdMismatch {
                expected: 6,
                found: 7
            }
        );
        let e = parse(br#"{"id":"x7","ops":[]}"#, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"x7\" is not a number"), "{e}");
    }
}
