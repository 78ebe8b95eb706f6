//! What a worker does with a delivery once its run has ended (pure): which
//! transition to record, which message to publish and when to acknowledge.
//! The worker carries a [`Decision`] out in one order: publish first, then
//! record (fenced by the attempt's generation, re-read to verify), then
//! acknowledge. A crash between any two steps leaves the job with a
//! message somewhere (a duplicate at worst, which the fence makes
//! harmless), never acknowledged without a terminal state.

use std::time::Duration;

use crate::state::Event;

/// How a run ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// Every file stored under this folder; `results`: what the run
    /// measured, recorded beside it (test scores, epochs), for `status`.
    Succeeded {
        artifacts: String,
        results: Vec<(&'static str, String)>,
    },
    /// Retrying cannot help (bad spec, missing weights or data).
    Permanent(String),
    /// May pass later (artifact store down, out of memory, a panic).
    Transient(String),
    /// `producer cancel`.
    Cancelled,
    /// The worker is shutting down: the job goes back to the queue.
    ShutDown,
    /// Another attempt holds the job now (this one's lease expired or was
    /// taken): this attempt records nothing.
    LeaseLost,
    /// Ran past the job's deadline.
    DeadlineExceeded(Duration),
}

/// The attempt being settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first try; transient failures count it up.
    pub attempt: u32,
    /// The fence: bumped by every start of the job, carried by every
    /// transition this attempt records.
    pub generation: u64,
}

/// Retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Tries of a job that keeps failing transiently before it is dead.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// How long a parked delivery waits before it is looked at again.
    pub park: Duration,
}

/// A message to publish before recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// The job again, as this attempt number, after this delay.
    Later { attempt: u32, delay: Duration },
    /// The job again on its work queue now (same attempt): a hand-back
    /// that, unlike a nack-requeue, does not count toward the delivery limit.
    Now { attempt: u32 },
}

/// A transition to record, fenced by the attempt's generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub event: Event,
    pub fields: Vec<(&'static str, String)>,
}

/// What to do, in order: publish, record, acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub publish: Option<Publish>,
    pub record: Option<Record>,
}

/// The retry delay after `attempt` failed: `base * 2^(attempt-1)`, capped.
pub fn retry_delay(attempt: u32, policy: &Policy) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    (policy.retry_base * factor).min(policy.retry_cap)
}

/// Tries of one publish (a retry, a hand-back, a parked copy) before the
/// worker gives up and returns the delivery to the queue.
pub const PUBLISH_TRIES: u32 = 5;

/// The wait before retry `n` (1-based) of a publish: 2^n s.
pub fn publish_retry_wait(n: u32) -> Duration {
    Duration::from_secs(1 << n.min(16))
}

/// How long a worker that is shutting down keeps trying to record a run's
/// outcome in Redis before it leaves the delivery to the broker.
pub const SHUTDOWN_RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a hand-back can take once the run has stopped, each publish
/// waiting at most `confirm_timeout` for the broker's confirm: every try
/// timing out, the waits between them, then the bounded record. (The
/// acknowledgement that follows waits for nothing.)
pub fn hand_back_bound(confirm_timeout: Duration) -> Duration {
    confirm_timeout * PUBLISH_TRIES
        + (1..PUBLISH_TRIES).map(publish_retry_wait).sum::<Duration>()
        + SHUTDOWN_RECORD_TIMEOUT
}

/// Settles a run's end. `now_ms` stamps `finished_at`.
pub fn settle(end: &RunEnd, at: Attempt, policy: &Policy, now_ms: u64) -> Decision {
    let finished = ("finished_at", now_ms.to_string());
    let record = |event, fields| Some(Record { event, fields });
    match end {
        RunEnd::Succeeded { artifacts, results } => Decision {
            publish: None,
            record: record(
                Event::Succeed,
                [finished, ("artifacts", artifacts.clone())]
                    .into_iter()
                    .chain(results.iter().cloned())
                    .collect(),
            ),
        },
        RunEnd::Permanent(e) => Decision {
            publish: None,
            record: record(Event::Fail, vec![finished, ("error", e.clone())]),
        },
        RunEnd::DeadlineExceeded(limit) => Decision {
            publish: None,
            record: record(
                Event::Fail,
                vec![
                    finished,
                    (
                        "error",
                        format!("ran past its deadline of {} s", limit.as_secs()),
                    ),
                ],
            ),
        },
        RunEnd::Cancelled => Decision {
            publish: None,
            record: record(Event::Cancel, vec![finished]),
        },
        RunEnd::Transient(e) if at.attempt >= policy.max_attempts => Decision {
            publish: None,
            record: record(
                Event::DeadLetter,
                vec![
                    finished,
                    (
                        "error",
                        format!("gave up after {} attempts: {e}", at.attempt),
                    ),
                ],
            ),
        },
        RunEnd::Transient(e) => {
            let delay = retry_delay(at.attempt, policy);
            let next = at.attempt + 1;
            Decision {
                publish: Some(Publish::Later {
                    attempt: next,
                    delay,
                }),
                record: record(
                    Event::HandBack,
                    vec![
                        ("attempt", next.to_string()),
                        (
                            "error",
                            format!("attempt {}: {e}; retrying in {delay:?}", at.attempt),
                        ),
                        // When the copy leaves its delay queue: the
                        // reconciler counts a copy as unseen from then on.
                        (
                            "published_at",
                            (now_ms + delay.as_millis() as u64).to_string(),
                        ),
                        ("takeovers", "0".into()),
                    ],
                ),
            }
        }
        RunEnd::ShutDown => Decision {
            publish: Some(Publish::Now {
                attempt: at.attempt,
            }),
            record: record(
                Event::HandBack,
                vec![
                    ("error", "handed back: worker shut down".into()),
                    ("published_at", now_ms.to_string()),
                    ("takeovers", "0".into()),
                ],
            ),
        },
        RunEnd::LeaseLost => park(at.attempt, policy),
    }
}

/// A delivery this worker may not run now (another attempt holds the job,
/// or this one lost it): back to the queue after `policy.park`, recording
/// nothing. When it comes back the job is finished (it is then dropped) or
/// its holder is gone (it then runs).
pub fn park(attempt: u32, policy: &Policy) -> Decision {
    Decision {
        publish: Some(Publish::Later {
            attempt,
            delay: policy.park,
        }),
        record: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        max_attempts: 3,
        retry_base: Duration::from_secs(10),
        retry_cap: Duration::from_secs(60),
        park: Duration::from_secs(90),
    };
    const A1: Attempt = Attempt {
        attempt: 1,
        generation: 7,
    };

    fn fields(d: &Decision) -> Vec<(&'static str, String)> {
        d.record
            .as_ref()
            .map(|r| r.fields.clone())
            .unwrap_or_default()
    }

    #[test]
    fn success_records_the_folder_and_publishes_nothing() {
        let d = settle(
            &RunEnd::Succeeded {
                artifacts: "a/b".into(),
                results: Vec::new(),
            },
            A1,
            &P,
            5,
        );
        assert_eq!(d.publish, None);
        assert_eq!(d.record.as_ref().unwrap().event, Event::Succeed);
        assert_eq!(
            fields(&d),
            vec![("finished_at", "5".into()), ("artifacts", "a/b".into())]
        );
    }

    #[test]
    fn transient_failures_back_off_then_die() {
        let d = settle(&RunEnd::Transient("s3".into()), A1, &P, 0);
        assert_eq!(
            d.publish,
            Some(Publish::Later {
                attempt: 2,
                delay: Duration::from_secs(10)
            })
        );
        assert_eq!(d.record.as_ref().unwrap().event, Event::HandBack);
        assert!(fields(&d).contains(&("attempt", "2".into())));
        // Published, as far as a worker can see it, once the delay is over.
        assert!(fields(&d).contains(&("published_at", "10000".into())));
        let a2 = Attempt {
            attempt: 2,
            generation: 9,
        };
        assert_eq!(
            settle(&RunEnd::Transient("s3".into()), a2, &P, 0).publish,
            Some(Publish::Later {
                attempt: 3,
                delay: Duration::from_secs(20)
            })
        );
        let a3 = Attempt {
            attempt: 3,
            generation: 9,
        };
        let d = settle(&RunEnd::Transient("s3".into()), a3, &P, 0);
        assert_eq!(d.publish, None);
        assert_eq!(d.record.as_ref().unwrap().event, Event::DeadLetter);
        assert!(fields(&d)[1].1.contains("gave up after 3 attempts: s3"));
        let capped = Policy {
            max_attempts: 9,
            ..P
        };
        assert_eq!(retry_delay(5, &capped), Duration::from_secs(60));
    }

    #[test]
    fn hand_back_bound_adds_every_publish_try_and_the_record() {
        // 5 tries of 60 s, waits of 2, 4, 8 and 16 s, 30 s to record.
        assert_eq!(
            hand_back_bound(Duration::from_secs(60)),
            Duration::from_secs(5 * 60 + 30 + 30)
        );
    }

    #[test]
    fn shutdown_hands_back_without_counting_an_attempt() {
        let d = settle(&RunEnd::ShutDown, A1, &P, 3);
        assert_eq!(d.publish, Some(Publish::Now { attempt: 1 }));
        assert_eq!(d.record.as_ref().unwrap().event, Event::HandBack);
        assert!(fields(&d).contains(&("published_at", "3".into())));
    }

    #[test]
    fn a_lost_lease_records_nothing_and_parks() {
        let d = settle(&RunEnd::LeaseLost, A1, &P, 0);
        assert_eq!(d.record, None);
        assert_eq!(
            d.publish,
            Some(Publish::Later {
                attempt: 1,
                delay: Duration::from_secs(90)
            })
        );
    }

    #[test]
    fn permanent_cancel_and_deadline_are_terminal() {
        for (end, event) in [
            (RunEnd::Permanent("bad".into()), Event::Fail),
            (RunEnd::Cancelled, Event::Cancel),
            (
                RunEnd::DeadlineExceeded(Duration::from_secs(30)),
                Event::Fail,
            ),
        ] {
            let d = settle(&end, A1, &P, 0);
            assert_eq!(d.publish, None, "{end:?}");
            assert_eq!(d.record.unwrap().event, event, "{end:?}");
        }
        let d = settle(
            &RunEnd::DeadlineExceeded(Duration::from_secs(30)),
            A1,
            &P,
            0,
        );
        assert!(fields(&d)[1].1.contains("deadline of 30 s"));
    }
}
