//! The learning rate at every optimiser step: linear warm-up, then linear
//! decay to zero (or constant) over a phase; a phase restarts whenever
//! dendrites are added, spanning the epochs that remain; reduce-on-plateau
//! ([`plateau_reduce`]) multiplies the rate within a phase. Pure.

use common::spec::{Schedule, TrainSpec};
use common::tracker::plateau_reduce;

/// Learning rate at optimiser step `step` (0-based) of `total`, before any
/// plateau reduction.
pub fn scheduled_lr(base: f64, step: usize, total: usize, warmup: usize, kind: Schedule) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match kind {
        Schedule::Constant => base,
        Schedule::Linear => {
            let rest = total.saturating_sub(warmup).max(1);
            let done = step.saturating_sub(warmup);
            base * (1.0 - done as f64 / rest as f64).max(0.0)
        }
    }
}

/// Where the schedule stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    base: f64,
    kind: Schedule,
    warmup_frac: f64,
    epochs: usize,
    steps_per_epoch: usize,
    plateau: Option<(f64, usize)>,
    /// Optimiser steps taken over the whole run.
    step: usize,
    phase_start: usize,
    phase_steps: usize,
    warmup: usize,
    plateau_mult: f64,
    last_reduce: usize,
}

impl LrSchedule {
    /// The schedule of a run of `spec.epochs` epochs of `steps_per_epoch`
    /// optimiser steps.
    pub fn new(spec: &TrainSpec, steps_per_epoch: usize) -> Self {
        let mut s = LrSchedule {
            base: spec.lr,
            kind: spec.schedule,
            warmup_frac: spec.warmup,
            epochs: spec.epochs,
            steps_per_epoch,
            plateau: spec.plateau_factor.map(|f| (f, spec.plateau_patience)),
            step: 0,
            phase_start: 0,
            phase_steps: 0,
            warmup: 0,
            plateau_mult: 1.0,
            last_reduce: 0,
        };
        s.start_phase(0);
        s
    }

    fn start_phase(&mut self, after_epoch: usize) {
        self.phase_start = self.step;
        self.phase_steps = self.steps_per_epoch * (self.epochs - after_epoch).max(1);
        self.warmup = (self.warmup_frac * self.phase_steps as f64).round() as usize;
        self.plateau_mult = 1.0;
        self.last_reduce = after_epoch;
    }

    /// The rate of the next optimiser step.
    pub fn lr(&self) -> f64 {
        scheduled_lr(
            self.base,
            self.step - self.phase_start,
            self.phase_steps,
            self.warmup,
            self.kind,
        ) * self.plateau_mult
    }

    /// One optimiser step was taken.
    pub fn advance(&mut self) {
        self.step += 1;
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// A new phase over the epochs after `epoch` (dendrites were added).
    pub fn restart(&mut self, epoch: usize) {
        self.start_phase(epoch);
    }

    /// End of `epoch`, `since_improved` epochs after the last improvement:
    /// reduce on a plateau when configured.
    pub fn end_epoch(&mut self, epoch: usize, since_improved: usize) {
        if let Some((factor, patience)) = self.plateau {
            if plateau_reduce(since_improved, epoch - self.last_reduce, patience) {
                self.plateau_mult *= factor;
                self.last_reduce = epoch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay() {
        let lr = |s| scheduled_lr(1.0, s, 10, 2, Schedule::Linear);
        assert_eq!(lr(0), 0.5);
        assert_eq!(lr(1), 1.0);
        assert_eq!(lr(2), 1.0);
        assert!((lr(6) - 0.5).abs() < 1e-12);
        assert_eq!(lr(10), 0.0);
        assert_eq!(scheduled_lr(1.0, 7, 10, 2, Schedule::Constant), 1.0);
        assert_eq!(scheduled_lr(1.0, 0, 10, 0, Schedule::Linear), 1.0);
    }

    fn spec(epochs: usize) -> TrainSpec {
        TrainSpec {
            epochs,
            lr: 1.0,
            warmup: 0.25,
            ..TrainSpec::default()
        }
    }

    /// Runs `epochs` epochs of `per_epoch` steps and returns every rate.
    fn rates(s: &mut LrSchedule, epochs: usize, per_epoch: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for _ in 0..epochs * per_epoch {
            out.push(s.lr());
            s.advance();
        }
        out
    }

    #[test]
    fn one_phase_over_the_whole_budget() {
        let mut s = LrSchedule::new(&spec(2), 4);
        let r = rates(&mut s, 2, 4);
        // 8 steps, 2 of warm-up, then 6 decaying to 1/6.
        assert_eq!(r[..3], [0.5, 1.0, 1.0]);
        assert!((r[7] - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.steps(), 8);
    }

    #[test]
    fn restart_spans_the_remaining_epochs() {
        let mut s = LrSchedule::new(&spec(3), 4);
        rates(&mut s, 1, 4);
        s.restart(1);
        // 8 steps left: warm-up of 2 again, from the start.
        let r = rates(&mut s, 2, 4);
        assert_eq!(r[..2], [0.5, 1.0]);
        assert!((r[7] - 1.0 / 6.0).abs() < 1e-12);
        // A restart after the last epoch still has one epoch's length.
        s.restart(3);
        assert_eq!(s.lr(), 1.0);
    }

    #[test]
    fn plateau_multiplies_within_a_phase_and_resets_on_restart() {
        let mut s = LrSchedule::new(
            &TrainSpec {
                schedule: Schedule::Constant,
                warmup: 0.0,
                lr: 1.0,
                plateau_factor: Some(0.5),
                plateau_patience: 1,
                ..TrainSpec::default()
            },
            2,
        );
        s.end_epoch(1, 0);
        assert_eq!(s.lr(), 1.0);
        s.end_epoch(2, 1);
        assert_eq!(s.lr(), 0.5);
        s.end_epoch(3, 2);
        assert_eq!(s.lr(), 0.25);
        s.restart(3);
        assert_eq!(s.lr(), 1.0);
    }
}
