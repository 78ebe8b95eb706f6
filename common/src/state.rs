//! Job states and the transitions allowed between them (pure). Stores
//! apply a transition only when [`next`] allows it, which is what makes a
//! redelivered job that already succeeded, or that a live worker holds,
//! a no-op.

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Dead-lettered: crashed its workers too often, or unreadable.
    Dead,
}

serde_plain::derive_display_from_serialize!(JobState);
serde_plain::derive_fromstr_from_deserialize!(JobState);

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    /// The state named as it is stored (`"succeeded"`); `None` for any
    /// other text.
    pub fn parse(s: &str) -> Option<JobState> {
        s.parse().ok()
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Dead
        )
    }
}

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A worker took it (a fresh delivery or a redelivery after its holder died).
    Start,
    Succeed,
    /// A permanent failure (bad spec, missing weights).
    Fail,
    Cancel,
    DeadLetter,
    /// `producer retry` or `submit` sent a finished job back to the queue.
    Requeue,
    /// The running attempt gave its job back (a transient failure, a
    /// shutdown): only from `running`, so that a job cancelled or recorded
    /// dead meanwhile stays so.
    HandBack,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job in state {from:?} cannot take event {event:?}")]
pub struct TransitionError {
    pub from: JobState,
    pub event: Event,
}

/// The state after `event`, if allowed.
pub fn next(from: JobState, event: Event) -> Result<JobState, TransitionError> {
    use Event::*;
    use JobState::*;
    let to = match (from, event) {
        (Queued, Start) => Running,
        // A redelivery after the holder's lease expired restarts the job.
        (Running, Start) => Running,
        (Running, Succeed) => Succeeded,
        (Running, Fail) => Failed,
        (Queued | Running, Cancel) => Cancelled,
        (Queued | Running, DeadLetter) => Dead,
        (Failed | Dead | Cancelled, Requeue) => Queued,
        (Running, HandBack) => Queued,
        _ => return Err(TransitionError { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path() {
        let s = next(JobState::Queued, Event::Start).unwrap();
        assert_eq!(next(s, Event::Succeed).unwrap(), JobState::Succeeded);
    }

    #[test]
    fn succeeded_is_final_for_workers() {
        for e in [
            Event::Start,
            Event::Succeed,
            Event::Fail,
            Event::Cancel,
            Event::DeadLetter,
            Event::Requeue,
            Event::HandBack,
        ] {
            assert!(next(JobState::Succeeded, e).is_err(), "{e:?}");
        }
    }

    /// A worker's hand-back cannot bring back a job cancelled or recorded
    /// dead while it ran; a retry does not touch a running job.
    #[test]
    fn hand_back_only_from_running_and_requeue_only_from_finished() {
        assert_eq!(
            next(JobState::Running, Event::HandBack).unwrap(),
            JobState::Queued
        );
        for s in [
            JobState::Queued,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Dead,
        ] {
            assert!(next(s, Event::HandBack).is_err(), "{s:?}");
        }
        for s in [JobState::Queued, JobState::Running, JobState::Succeeded] {
            assert!(next(s, Event::Requeue).is_err(), "{s:?}");
        }
    }

    #[test]
    fn retry_requeues_failed_dead_and_cancelled() {
        for s in [JobState::Failed, JobState::Dead, JobState::Cancelled] {
            assert_eq!(next(s, Event::Requeue).unwrap(), JobState::Queued);
        }
        assert!(next(JobState::Queued, Event::Succeed).is_err());
        assert!(JobState::Dead.is_terminal() && !JobState::Running.is_terminal());
    }
}
