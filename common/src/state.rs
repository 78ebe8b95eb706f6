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

impl JobState {
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
    /// `producer retry` or a transient failure sent it back to the queue.
    Requeue,
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
        (Running | Failed | Dead | Cancelled, Requeue) => Queued,
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
        ] {
            assert!(next(JobState::Succeeded, e).is_err(), "{e:?}");
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
