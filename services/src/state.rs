//! Job, sweep and worker state in Redis. Every state change goes through
//! [`StateStore::transition`], a compare-and-set (Lua) that applies only
//! the transitions [`common::state::next`] allows, so concurrent workers
//! and redeliveries cannot overwrite a finished job. Leases (`SET NX PX`)
//! say which live worker holds a job; worker records expire unless their
//! heartbeat refreshes them; a stream per sweep carries progress events.
//!
//! Keys, under the namespace `ns`: `ns:job:<id>` (hash), `ns:sweep:<name>`
//! (set of job ids), `ns:sweeps` (set), `ns:lease:<job>`, `ns:cancel:<job>`,
//! `ns:worker:<id>` (hash with expiry), `ns:workers` (set),
//! `ns:events:<sweep>` (stream).

use std::collections::HashMap;
use std::time::Duration;

use common::clock::now_ms;
use common::state::{next, Event, JobState};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

/// State store failures.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("job {0} is not known")]
    UnknownJob(String),
    #[error("job {job}: attempt of generation {generation} was superseded by a later start")]
    Superseded { job: String, generation: u64 },
    #[error("job {job} is {from}, which does not allow {event:?}")]
    Refused {
        job: String,
        from: String,
        event: Event,
    },
}

pub type Result<T> = std::result::Result<T, StateError>;

/// A compare-and-set transition: applies only from the allowed states
/// (ARGV[1]) and, when ARGV[3] is not empty, only while the job's
/// generation is ARGV[3] and, when ARGV[4] is not empty, its last start's
/// lease token is ARGV[4] (the fence: an attempt superseded by a later
/// start cannot record anything, even one that got the same generation
/// because Redis lost the first start).
const TRANSITION: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'generation') ~= ARGV[3] then
  return {3, cur}
end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[4] then
  return {3, cur}
end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur then
    redis.call('HSET', KEYS[1], 'state', ARGV[2])
    for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    return {1, cur}
  end
end
return {2, cur}
"#;

/// Starts an attempt in one step: a finished job, a job whose lease is
/// held, or a cancelled one is not started; a job still `running` whose
/// lease expired was abandoned by its attempt, a crash when its worker's
/// heartbeat (key ARGV[4] .. worker) has expired too (a live worker whose
/// lease lapsed, in a Redis outage or a stall, is no crash) and the start
/// does not come from the very process that held it (its `instance`
/// field: a Redis restored from older files can lack a live worker's
/// heartbeat, not the process that is asking): past ARGV[3] such takeovers
/// it is recorded dead instead. Otherwise the lease is taken with the
/// delivery's token, the generation bumped and the job marked running
/// with ARGV[5..] as fields.
const START: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
if cur ~= 'queued' and cur ~= 'running' then return {2, cur} end
local holder = redis.call('GET', KEYS[2])
if holder then return {3, holder} end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  redis.call('DEL', KEYS[3])
  return {4, cur}
end
local was = redis.call('HGET', KEYS[1], 'worker')
local mine = ''
for i = 5, #ARGV - 1, 2 do
  if ARGV[i] == 'instance' then mine = ARGV[i + 1] end
end
local same = mine ~= '' and redis.call('HGET', KEYS[1], 'instance') == mine
local alive = same or (was and redis.call('EXISTS', ARGV[4] .. was) == 1)
if cur == 'running' and not alive then
  local n = redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
  if n > tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'state', 'dead', 'error',
      'abandoned by ' .. n .. ' attempt(s) that never finished (crashed workers?)')
    return {5, tostring(n)}
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'lease_token', ARGV[1], unpack(ARGV, 5))
return {1, tostring(g)}
"#;

/// Registers a job in one step: the job hash with its fields (state
/// `queued`) and its place in the sweep and sweep sets, unless the hash
/// exists. Returns the job's state either way.
const REGISTER: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'state') == 1 then
  return redis.call('HGET', KEYS[1], 'state')
end
redis.call('HSET', KEYS[1], 'state', 'queued', unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return 'queued'
"#;

const SET_FIELDS: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'state') == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Renews the lease held with token ARGV[1], or takes it again when it
/// expired (a Redis outage longer than the lease) while the job is still
/// `running` under this attempt: generation ARGV[3] and lease token ARGV[1].
/// Another holder, or a later start, means the lease is lost (0).
const RENEW_OR_RECLAIM: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if holder then return 0 end
local st = redis.call('HMGET', KEYS[2], 'state', 'generation', 'lease_token')
if st[1] == 'running' and st[2] == ARGV[3] and st[3] == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"#;

/// What [`StateStore::renew_or_reclaim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The lease had expired and no other attempt started: taken again.
    Reclaimed,
    /// Another attempt holds the job, or it is no longer running.
    Lost,
}

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Cancels in one step: a `queued` job becomes `cancelled` (ARGV[1] its
/// finish time); a `running` one gets its cancel key, which its attempt
/// watches and which a later start honours; anything else is left alone.
const CANCEL: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
if cur == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1])
  return {1, cur}
end
if cur == 'running' then
  redis.call('SET', KEYS[2], '1')
  return {2, cur}
end
return {3, cur}
"#;

/// Records a dead-lettered job `dead` (ARGV pairs as fields) if it is
/// `queued`, or `running` with no live lease (its attempts crashed): in one
/// step, so a start cannot fall between the check and the write. A live
/// attempt records its own outcome.
const DEAD_LETTER: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
if cur == 'queued' or (cur == 'running' and redis.call('EXISTS', KEYS[2]) == 0) then
  redis.call('HSET', KEYS[1], 'state', 'dead', unpack(ARGV))
  return {1, cur}
end
return {2, cur}
"#;

/// What [`StateStore::cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// It was queued: it is now `cancelled`.
    Cancelled,
    /// It is running: its attempt is asked to stop.
    Requested,
    /// It had finished already, in this state.
    Finished(JobState),
}

/// A job's record in Redis, typed (the fields every component reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRecord {
    pub id: String,
    pub sweep: String,
    pub state: Option<JobState>,
    /// Starts so far (the fence of the current attempt).
    pub generation: u64,
    /// The lease token of the attempt that started last (the fence's
    /// second half: two starts that got one generation after a lost write
    /// still differ here).
    pub lease_token: String,
    pub attempt: u32,
    pub worker: String,
    /// The job's message as published (what a republish sends).
    pub message: String,
    pub device_class: String,
    /// When the broker confirmed the message (0: not since it was queued).
    pub published_at: u64,
    /// When a worker last received a delivery of it (0: never). A publish
    /// later than this is a copy still on a queue.
    pub seen_at: u64,
    pub queued_at: u64,
    pub started_at: u64,
    pub artifacts: String,
    pub error: String,
    /// The last progress an attempt wrote, as stored: the epoch (`None`
    /// before the first), the step of the epoch and its steps, the
    /// training loss and the validation accuracy.
    pub epoch: Option<String>,
    pub step: String,
    pub steps: String,
    pub loss: String,
    pub val_accuracy: String,
    /// A success's results, recorded with it from its `metrics.json`:
    /// epochs trained (`None` until the job succeeds), the best epoch and
    /// the test scores.
    pub epochs_run: Option<String>,
    pub best_epoch: String,
    pub test_macro_f1: String,
    pub test_accuracy: String,
}

impl JobRecord {
    /// From the hash's fields; `None` when there are none.
    pub fn from_fields(id: &str, h: &HashMap<String, String>) -> Option<JobRecord> {
        if h.is_empty() {
            return None;
        }
        let text = |k: &str| h.get(k).cloned().unwrap_or_default();
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(JobRecord {
            id: id.to_string(),
            sweep: text("sweep"),
            state: h.get("state").and_then(|s| JobState::parse(s)),
            generation: num("generation"),
            lease_token: text("lease_token"),
            attempt: num("attempt").max(1) as u32,
            worker: text("worker"),
            message: text("message"),
            device_class: text("device_class"),
            published_at: num("published_at"),
            seen_at: num("seen_at"),
            queued_at: num("queued_at"),
            started_at: num("started_at"),
            artifacts: text("artifacts"),
            error: text("error"),
            epoch: h.get("epoch").cloned(),
            step: text("step"),
            steps: text("steps"),
            loss: text("loss"),
            val_accuracy: text("val_accuracy"),
            epochs_run: h.get("epochs_run").cloned(),
            best_epoch: text("best_epoch"),
            test_macro_f1: text("test_macro_f1"),
            test_accuracy: text("test_accuracy"),
        })
    }
}

/// What [`StateStore::start`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The attempt runs under this generation; the lease is the caller's.
    Started { generation: u64 },
    /// The job is finished (succeeded, failed, cancelled or dead).
    Finished(JobState),
    /// A lease is held, by this token.
    Held(String),
    /// A cancellation was pending: the job is now `cancelled`.
    Cancelled,
    /// Too many attempts started and never finished: the job is now `dead`.
    Abandoned(u32),
}

/// A worker's self-description, refreshed by its heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub devices: String,
    pub version: String,
    pub jobs: String,
    pub heartbeat_ms: u64,
}

/// Redis-backed state.
#[derive(Clone)]
pub struct StateStore {
    conn: ConnectionManager,
    ns: String,
}

impl StateStore {
    pub async fn connect(url: &str, namespace: &str) -> Result<StateStore> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(StateStore {
            conn,
            ns: namespace.to_string(),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.ns.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Records a job as queued unless it is already known; returns its state.
    pub async fn register_job(
        &self,
        sweep: &str,
        job: &str,
        fields: &[(&str, String)],
    ) -> Result<JobState> {
        let mut c = self.conn.clone();
        let mut f: Vec<(String, String)> = vec![
            ("sweep".into(), sweep.into()),
            ("attempt".into(), "1".into()),
            ("queued_at".into(), now_ms().to_string()),
        ];
        f.extend(fields.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let script = redis::Script::new(REGISTER);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&["job", job]))
            .key(self.key(&["sweep", sweep]))
            .key(self.key(&["sweeps"]))
            .arg(sweep)
            .arg(job);
        for (k, v) in &f {
            inv.arg(k).arg(v);
        }
        let state: Option<String> = inv.invoke_async(&mut c).await?;
        state
            .as_deref()
            .and_then(JobState::parse)
            .ok_or_else(|| StateError::UnknownJob(job.into()))
    }

    /// Registers a job from its message (variant, device class and the
    /// message itself, for a later republish) plus `extra` fields, unless
    /// it is already known; returns its state either way.
    pub async fn register_message(
        &self,
        msg: &common::job::JobMessage,
        extra: &[(&str, String)],
    ) -> Result<JobState> {
        let mut fields = vec![
            ("variant", msg.variant.to_string()),
            ("device_class", msg.device.as_str().to_string()),
            (
                "message",
                String::from_utf8_lossy(&msg.encode()).to_string(),
            ),
        ];
        fields.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        self.register_job(&msg.sweep, &msg.job_id, &fields).await
    }

    /// Records that the broker confirmed the job's message (`published_at`):
    /// a job still `queued` without it was never known to be on the queue.
    pub async fn mark_published(&self, job: &str) -> Result<()> {
        self.set_fields(job, &[("published_at", now_ms().to_string())])
            .await
    }

    /// Whether the job's message was confirmed by the broker since it was
    /// last queued.
    pub async fn published(&self, job: &str) -> Result<bool> {
        let mut c = self.conn.clone();
        let at: Option<String> = c.hget(self.key(&["job", job]), "published_at").await?;
        Ok(at.is_some_and(|v| !v.is_empty()))
    }

    /// Applies `event` if the current state allows it, setting `fields` too.
    /// Returns the previous state.
    pub async fn transition(
        &self,
        job: &str,
        event: Event,
        fields: &[(&str, String)],
    ) -> Result<JobState> {
        self.transition_fenced(job, event, None, fields).await
    }

    /// [`StateStore::transition`], applied only while the job's generation
    /// is `generation` (when given): refused with [`StateError::Superseded`]
    /// once a later attempt has started.
    pub async fn transition_fenced(
        &self,
        job: &str,
        event: Event,
        generation: Option<u64>,
        fields: &[(&str, String)],
    ) -> Result<JobState> {
        self.apply(job, event, generation, None, fields).await
    }

    /// [`StateStore::transition_fenced`] for the attempt that started with
    /// lease `token`: refused with [`StateError::Superseded`] unless both
    /// the generation and the token are still the job's.
    pub async fn transition_attempt(
        &self,
        job: &str,
        event: Event,
        generation: u64,
        token: &str,
        fields: &[(&str, String)],
    ) -> Result<JobState> {
        self.apply(job, event, Some(generation), Some(token), fields)
            .await
    }

    async fn apply(
        &self,
        job: &str,
        event: Event,
        generation: Option<u64>,
        token: Option<&str>,
        fields: &[(&str, String)],
    ) -> Result<JobState> {
        let allowed: Vec<String> = JobState::ALL
            .into_iter()
            .filter(|s| next(*s, event).is_ok())
            .map(|s| s.to_string())
            .collect();
        let Some(to) = JobState::ALL.into_iter().find_map(|s| next(s, event).ok()) else {
            return Err(StateError::Refused {
                job: job.into(),
                from: "?".into(),
                event,
            });
        };
        let script = redis::Script::new(TRANSITION);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&["job", job]))
            .arg(allowed.join(","))
            .arg(to.to_string())
            .arg(generation.map(|g| g.to_string()).unwrap_or_default())
            .arg(token.unwrap_or_default());
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let mut c = self.conn.clone();
        let (code, prev): (i64, String) = inv.invoke_async(&mut c).await?;
        match code {
            0 => Err(StateError::UnknownJob(job.into())),
            1 => Ok(JobState::parse(&prev).unwrap_or(JobState::Queued)),
            3 => Err(StateError::Superseded {
                job: job.into(),
                generation: generation.unwrap_or(0),
            }),
            _ => Err(StateError::Refused {
                job: job.into(),
                from: prev,
                event,
            }),
        }
    }

    pub async fn state(&self, job: &str) -> Result<Option<JobState>> {
        let mut c = self.conn.clone();
        let s: Option<String> = c.hget(self.key(&["job", job]), "state").await?;
        Ok(s.as_deref().and_then(JobState::parse))
    }

    /// A job's record, typed; `None` when the job is not known.
    pub async fn record(&self, job: &str) -> Result<Option<JobRecord>> {
        let h = self.job(job).await?;
        Ok(JobRecord::from_fields(job, &h))
    }

    /// Every field of a job.
    pub async fn job(&self, job: &str) -> Result<HashMap<String, String>> {
        let mut c = self.conn.clone();
        Ok(c.hgetall(self.key(&["job", job])).await?)
    }

    /// Sets fields of a registered job; a job Redis does not know (lost
    /// with a Redis restart) is left unknown rather than half-created.
    pub async fn set_fields(&self, job: &str, fields: &[(&str, String)]) -> Result<()> {
        if fields.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let script = redis::Script::new(SET_FIELDS);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&["job", job]));
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let _: i64 = inv.invoke_async(&mut c).await?;
        Ok(())
    }

    /// Job ids of a sweep, sorted.
    pub async fn sweep_jobs(&self, sweep: &str) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        let mut v: Vec<String> = c.smembers(self.key(&["sweep", sweep])).await?;
        v.sort();
        Ok(v)
    }

    pub async fn sweeps(&self) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        let mut v: Vec<String> = c.smembers(self.key(&["sweeps"])).await?;
        v.sort();
        Ok(v)
    }

    /// Appends an event to the sweep's stream (capped near 10000 entries).
    pub async fn event(&self, sweep: &str, fields: &[(&str, String)]) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.key(&["events", sweep]))
            .arg("MAXLEN")
            .arg("~")
            .arg(10000)
            .arg("*")
            .arg(fields)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Events of a sweep after stream id `after` ("0" for all).
    pub async fn events(
        &self,
        sweep: &str,
        after: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        let mut c = self.conn.clone();
        let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.key(&["events", sweep]))
            .arg(if after == "0" {
                "-".to_string()
            } else {
                format!("({after}")
            })
            .arg("+")
            .query_async(&mut c)
            .await?;
        Ok(raw
            .into_iter()
            .map(|(id, kv)| (id, kv.into_iter().collect()))
            .collect())
    }

    /// Starts an attempt of a registered job (see [`Start`]): takes the
    /// lease with `token` for `ttl`, bumps the generation and records
    /// `fields` with state `running`, all in one step. A job abandoned by
    /// more than `max_takeovers` attempts whose workers' heartbeats had
    /// expired (crashes) is recorded dead instead; a start whose `instance`
    /// field names the process that held the job never counts as one.
    pub async fn start(
        &self,
        job: &str,
        token: &str,
        ttl: Duration,
        max_takeovers: u32,
        fields: &[(&str, String)],
    ) -> Result<Start> {
        let script = redis::Script::new(START);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&["job", job]))
            .key(self.key(&["lease", job]))
            .key(self.key(&["cancel", job]))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .arg(max_takeovers)
            .arg(self.key(&["worker", ""]));
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let mut c = self.conn.clone();
        let (code, v): (i64, String) = inv.invoke_async(&mut c).await?;
        Ok(match code {
            0 => return Err(StateError::UnknownJob(job.into())),
            1 => Start::Started {
                generation: v.parse().unwrap_or(0),
            },
            2 => Start::Finished(JobState::parse(&v).unwrap_or(JobState::Dead)),
            3 => Start::Held(v),
            4 => Start::Cancelled,
            _ => Start::Abandoned(v.parse().unwrap_or(0)),
        })
    }

    /// Extends the lease if `token` still holds it.
    pub async fn renew_lease(&self, job: &str, token: &str, ttl: Duration) -> Result<bool> {
        let mut c = self.conn.clone();
        let n: i64 = redis::Script::new(RENEW)
            .key(self.key(&["lease", job]))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Extends the lease of the attempt of `generation` started with
    /// `token`, or takes it again when it expired meanwhile (Redis was
    /// unreachable for longer than the lease) and no later attempt has
    /// started: an outage does not stop a job whose attempt is alive.
    pub async fn renew_or_reclaim(
        &self,
        job: &str,
        token: &str,
        generation: u64,
        ttl: Duration,
    ) -> Result<Renewal> {
        let mut c = self.conn.clone();
        let n: i64 = redis::Script::new(RENEW_OR_RECLAIM)
            .key(self.key(&["lease", job]))
            .key(self.key(&["job", job]))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .arg(generation)
            .invoke_async(&mut c)
            .await?;
        Ok(match n {
            1 => Renewal::Renewed,
            2 => Renewal::Reclaimed,
            _ => Renewal::Lost,
        })
    }

    /// Gives the lease up if `token` holds it.
    pub async fn release_lease(&self, job: &str, token: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.key(&["lease", job]))
            .arg(token)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// The token holding the job's lease, if any (it starts with the
    /// worker's id).
    pub async fn lease_holder(&self, job: &str) -> Result<Option<String>> {
        let mut c = self.conn.clone();
        Ok(c.get(self.key(&["lease", job])).await?)
    }

    /// Whether the job's lease is held by anyone.
    pub async fn leased(&self, job: &str) -> Result<bool> {
        let mut c = self.conn.clone();
        Ok(c.exists(self.key(&["lease", job])).await?)
    }

    /// Takes the named lock for `ttl` unless someone holds it (one
    /// reconciler pass at a time across workers).
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let mut c = self.conn.clone();
        let ok: Option<String> = redis::cmd("SET")
            .arg(self.key(&["lock", name]))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        Ok(ok.is_some())
    }

    /// Keeps a dead letter that names no job (it does not decode): its
    /// reason and body, newest first, so nothing is lost.
    pub async fn keep_dead_letter(&self, reason: &str, body: &[u8]) -> Result<()> {
        let mut c = self.conn.clone();
        let entry = serde_json::json!({
            "at_ms": now_ms(),
            "reason": reason,
            "body": String::from_utf8_lossy(body),
        })
        .to_string();
        let _: () = c.lpush(self.key(&["dead-letters"]), entry).await?;
        Ok(())
    }

    /// The dead letters kept by [`StateStore::keep_dead_letter`].
    pub async fn dead_letters(&self) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        Ok(c.lrange(self.key(&["dead-letters"]), 0, -1).await?)
    }

    /// Records a dead-lettered job `dead` with `fields` unless an attempt
    /// holds it or it has finished: `false` when left alone.
    pub async fn dead_letter(&self, job: &str, fields: &[(&str, String)]) -> Result<bool> {
        let script = redis::Script::new(DEAD_LETTER);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&["job", job]))
            .key(self.key(&["lease", job]));
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let mut c = self.conn.clone();
        let (code, _): (i64, String) = inv.invoke_async(&mut c).await?;
        match code {
            0 => Err(StateError::UnknownJob(job.into())),
            1 => Ok(true),
            _ => Ok(false),
        }
    }

    /// Cancels `job` in one step (see [`Cancel`]): no start, hand-back or
    /// cancel can fall between reading its state and acting on it.
    pub async fn cancel(&self, job: &str) -> Result<Cancel> {
        let mut c = self.conn.clone();
        let (code, prev): (i64, String) = redis::Script::new(CANCEL)
            .key(self.key(&["job", job]))
            .key(self.key(&["cancel", job]))
            .arg(now_ms())
            .invoke_async(&mut c)
            .await?;
        match code {
            0 => Err(StateError::UnknownJob(job.into())),
            1 => Ok(Cancel::Cancelled),
            2 => Ok(Cancel::Requested),
            _ => Ok(Cancel::Finished(
                JobState::parse(&prev).unwrap_or(JobState::Dead),
            )),
        }
    }

    pub async fn request_cancel(&self, job: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let _: () = c.set(self.key(&["cancel", job]), "1").await?;
        Ok(())
    }

    pub async fn cancel_requested(&self, job: &str) -> Result<bool> {
        let mut c = self.conn.clone();
        Ok(c.exists(self.key(&["cancel", job])).await?)
    }

    pub async fn clear_cancel(&self, job: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let _: () = c.del(self.key(&["cancel", job])).await?;
        Ok(())
    }

    /// Records the worker as alive for `ttl`.
    pub async fn heartbeat(&self, w: &WorkerInfo, ttl: Duration) -> Result<()> {
        let mut c = self.conn.clone();
        let key = self.key(&["worker", &w.id]);
        let fields = [
            ("host", w.host.clone()),
            ("devices", w.devices.clone()),
            ("version", w.version.clone()),
            ("jobs", w.jobs.clone()),
            ("heartbeat_ms", now_ms().to_string()),
        ];
        let _: () = redis::pipe()
            .hset_multiple(&key, &fields)
            .pexpire(&key, ttl.as_millis() as i64)
            .sadd(self.key(&["workers"]), &w.id)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Removes a worker's record at once (it ends): a takeover of its job
    /// then counts as a crash without waiting for the record to expire.
    pub async fn forget_worker(&self, id: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let _: () = redis::pipe()
            .del(self.key(&["worker", id]))
            .srem(self.key(&["workers"]), id)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Live workers (whose heartbeat has not expired).
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = c.smembers(self.key(&["workers"])).await?;
        let mut out = Vec::new();
        for id in ids {
            let h: HashMap<String, String> = c.hgetall(self.key(&["worker", &id])).await?;
            if h.is_empty() {
                let _: () = c.srem(self.key(&["workers"]), &id).await?;
                continue;
            }
            let g = |k: &str| h.get(k).cloned().unwrap_or_default();
            out.push(WorkerInfo {
                id,
                host: g("host"),
                devices: g("devices"),
                version: g("version"),
                jobs: g("jobs"),
                heartbeat_ms: g("heartbeat_ms").parse().unwrap_or(0),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Deletes every key of the namespace (tests).
    pub async fn delete_namespace(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let keys: Vec<String> = {
            let mut it = c.scan_match::<_, String>(format!("{}:*", self.ns)).await?;
            let mut v = Vec::new();
            while let Some(k) = futures::StreamExt::next(&mut it).await {
                v.push(k?);
            }
            v
        };
        if !keys.is_empty() {
            let _: () = c.del(keys).await?;
        }
        Ok(())
    }
}
