//! The validation-driven tracker that decides, once per epoch, whether to
//! continue, to add a dendrite set ("restructure") or to stop. Pure: it
//! reads scores and states and returns decisions; the training loop
//! executes them (snapshots, restores, additions, optimiser rebuilds).
//!
//! Baseline runs use the same tracker with dendrites disabled: in history
//! mode a switch then means early stopping with the same patience; in fixed
//! or every-epoch mode a switch is a no-op and the run uses its whole
//! epoch budget.

use crate::spec::{SwitchMode, TrackerSpec};
use serde::{Deserialize, Serialize};

/// The tracker's settings for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    pub mode: SwitchMode,
    pub patience: usize,
    pub thresholds: Vec<f64>,
    pub abs_threshold: f64,
    pub lookback: usize,
    pub maximize: bool,
    pub dendrites: bool,
    pub max_dendrites: usize,
    pub max_tries: usize,
    pub testing_capacity: bool,
}

impl TrackerConfig {
    pub fn from_spec(
        t: &TrackerSpec,
        dendrites: bool,
        max_dendrites: usize,
        max_tries: usize,
    ) -> Self {
        TrackerConfig {
            mode: t.mode,
            patience: t.patience,
            thresholds: t.improvement_thresholds.clone(),
            abs_threshold: t.abs_threshold,
            lookback: t.history_lookback,
            maximize: true,
            dendrites,
            max_dendrites,
            max_tries,
            testing_capacity: t.testing_capacity,
        }
    }
}

/// Everything the tracker remembers. `epoch` counts calls (0-based).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackerState {
    pub epoch: usize,
    pub running: Option<f64>,
    pub epoch_last_improved: usize,
    pub last_switch_epoch: usize,
    pub current_best: Option<f64>,
    pub global_best: Option<f64>,
    pub num_dendrites_added: usize,
    pub num_tries: usize,
    pub set_improved_global: bool,
}

/// What the training loop must do after this epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    /// Restore the best snapshot (weights and, already done here, tracker
    /// state), add one dendrite set, rebuild optimiser and schedule.
    Restructure,
    /// Restore the best snapshot and stop.
    Complete,
}

/// The outcome of one epoch's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The state to continue with (already the restored one after a restore).
    pub state: TrackerState,
    pub decision: Decision,
    /// This epoch beat the global best: snapshot weights with `state`
    /// (taken before any restore, i.e. the state right after scoring).
    pub snapshot: Option<TrackerState>,
    /// The running score of this epoch.
    pub running: f64,
    /// This epoch beat the current set's best score.
    pub improved_current: bool,
}

fn threshold(cfg: &TrackerConfig, n: usize) -> f64 {
    cfg.thresholds[n.min(cfg.thresholds.len() - 1)]
}

fn beats(cfg: &TrackerConfig, run: f64, best: Option<f64>, t: f64) -> bool {
    match best {
        None => true,
        Some(b) if cfg.maximize => run * (1.0 - t) > b && run - cfg.abs_threshold > b,
        Some(b) => run * (1.0 + t) < b && run + cfg.abs_threshold < b,
    }
}

fn should_switch(cfg: &TrackerConfig, s: &TrackerState) -> bool {
    let e = s.epoch;
    match cfg.mode {
        _ if cfg.testing_capacity => true,
        SwitchMode::History => {
            e - s.epoch_last_improved >= cfg.patience && e - s.last_switch_epoch >= cfg.patience
        }
        SwitchMode::Fixed => {
            // The first period counts from epoch 0, later ones from the switch.
            let since = if s.num_dendrites_added == 0 && s.last_switch_epoch == 0 {
                e + 1
            } else {
                e - s.last_switch_epoch
            };
            since >= cfg.patience
        }
        SwitchMode::EveryEpoch => true,
        SwitchMode::Never => false,
    }
}

/// Feeds one epoch's validation score. `best`: the tracker state stored
/// with the best snapshot so far (None before the first snapshot).
pub fn add_validation_score(
    cfg: &TrackerConfig,
    state: &TrackerState,
    best: Option<&TrackerState>,
    score: f64,
) -> Step {
    let mut s = state.clone();
    let h = cfg.lookback as f64;
    let run = match s.running {
        Some(prev) if cfg.lookback > 1 => prev * (1.0 - 1.0 / h) + score / h,
        _ => score,
    };
    s.running = Some(run);
    let t = threshold(cfg, s.num_dendrites_added);
    let mut snapshot = None;
    let improved_current = beats(cfg, run, s.current_best, t);
    if improved_current {
        s.current_best = Some(run);
        s.epoch_last_improved = s.epoch;
        if beats(cfg, run, s.global_best, t) {
            s.global_best = Some(run);
            s.set_improved_global = true;
            snapshot = Some(s.clone());
        }
    }
    let decision = if !should_switch(cfg, &s) {
        Decision::Continue
    } else if !cfg.dendrites {
        match cfg.mode {
            SwitchMode::History if !cfg.testing_capacity => Decision::Complete,
            _ => Decision::Continue,
        }
    } else if cfg.testing_capacity {
        if s.num_dendrites_added < cfg.max_dendrites {
            Decision::Restructure
        } else {
            Decision::Complete
        }
    } else if !s.set_improved_global {
        if s.num_tries + 1 < cfg.max_tries {
            Decision::Restructure
        } else {
            Decision::Complete
        }
    } else if s.num_dendrites_added >= cfg.max_dendrites {
        Decision::Complete
    } else {
        Decision::Restructure
    };
    let epoch = s.epoch;
    // A snapshot taken this epoch is the best one to restore.
    let best = snapshot.as_ref().or(best);
    let mut next = match decision {
        Decision::Continue => s,
        Decision::Complete => restored(&s, best, epoch),
        Decision::Restructure if cfg.testing_capacity => {
            // Smoke mode keeps the weights and just grows.
            let mut n = s;
            n.num_dendrites_added += 1;
            after_addition(n, epoch)
        }
        Decision::Restructure => {
            let failed = !s.set_improved_global;
            let tries = if failed { s.num_tries + 1 } else { 0 };
            let mut n = restored(&s, best, epoch);
            n.num_tries = tries;
            n.num_dendrites_added += 1;
            after_addition(n, epoch)
        }
    };
    next.epoch = epoch + 1;
    Step {
        state: next,
        decision,
        snapshot,
        running: run,
        improved_current,
    }
}

/// The best snapshot's state, with the epoch counter kept.
fn restored(current: &TrackerState, best: Option<&TrackerState>, epoch: usize) -> TrackerState {
    let mut r = best.cloned().unwrap_or_else(|| current.clone());
    r.epoch = epoch;
    r
}

fn after_addition(mut s: TrackerState, epoch: usize) -> TrackerState {
    s.current_best = None;
    s.set_improved_global = false;
    s.last_switch_epoch = epoch;
    s
}

/// Whether the learning rate should drop on a plateau (pure).
pub fn plateau_reduce(
    epochs_since_improved: usize,
    epochs_since_reduce: usize,
    patience: usize,
) -> bool {
    epochs_since_improved >= patience && epochs_since_reduce >= patience
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: SwitchMode, patience: usize, dendrites: bool) -> TrackerConfig {
        TrackerConfig {
            mode,
            patience,
            thresholds: vec![1e-3, 1e-4, 0.0],
            abs_threshold: 1e-5,
            lookback: 1,
            maximize: true,
            dendrites,
            max_dendrites: 3,
            max_tries: 2,
            testing_capacity: false,
        }
    }

    /// Drives the tracker like the training loop: keeps the best snapshot state.
    fn run(cfg: &TrackerConfig, scores: &[f64]) -> Vec<(Decision, TrackerState)> {
        let mut s = TrackerState::default();
        let mut best: Option<TrackerState> = None;
        let mut out = Vec::new();
        for &x in scores {
            let step = add_validation_score(cfg, &s, best.as_ref(), x);
            if let Some(snap) = step.snapshot.clone() {
                best = Some(snap);
            }
            s = step.state.clone();
            out.push((step.decision, step.state));
            if step.decision == Decision::Complete {
                break;
            }
        }
        out
    }

    #[test]
    fn improvement_uses_threshold_indexed_by_dendrite_count() {
        let c = cfg(SwitchMode::Never, 10, true);
        let s0 = TrackerState {
            current_best: Some(0.9),
            global_best: Some(0.9),
            ..Default::default()
        };
        // With 0 dendrites t = 1e-3: 0.9005 * 0.999 = 0.8996 < 0.9 -> no improvement.
        let st = add_validation_score(&c, &s0, None, 0.9005);
        assert_eq!(st.state.current_best, Some(0.9));
        assert!(st.snapshot.is_none());
        // With 2 dendrites t = 0.0: only the absolute threshold applies.
        let s2 = TrackerState {
            num_dendrites_added: 2,
            ..s0.clone()
        };
        let st = add_validation_score(&c, &s2, None, 0.9005);
        assert_eq!(st.state.current_best, Some(0.9005));
        assert!(st.snapshot.is_some());
        // Beyond the list the last threshold is used.
        let s9 = TrackerState {
            num_dendrites_added: 9,
            ..s0.clone()
        };
        assert_eq!(
            add_validation_score(&c, &s9, None, 0.9005)
                .state
                .current_best,
            Some(0.9005)
        );
    }

    #[test]
    fn absolute_threshold_blocks_tiny_gains() {
        let mut c = cfg(SwitchMode::Never, 10, true);
        c.thresholds = vec![0.0];
        c.abs_threshold = 0.01;
        let s0 = TrackerState {
            current_best: Some(0.5),
            global_best: Some(0.5),
            ..Default::default()
        };
        assert!(add_validation_score(&c, &s0, None, 0.505)
            .snapshot
            .is_none());
        assert!(add_validation_score(&c, &s0, None, 0.52).snapshot.is_some());
    }

    #[test]
    fn minimising_scores_mirror_the_rule() {
        let mut c = cfg(SwitchMode::Never, 10, true);
        c.maximize = false;
        let s0 = TrackerState {
            current_best: Some(0.5),
            global_best: Some(0.5),
            ..Default::default()
        };
        assert!(add_validation_score(&c, &s0, None, 0.4).snapshot.is_some());
        assert!(add_validation_score(&c, &s0, None, 0.6).snapshot.is_none());
    }

    #[test]
    fn history_mode_adds_after_patience_then_restores_best_state() {
        let c = cfg(SwitchMode::History, 2, true);
        // epoch 0: 0.5 (best), 1: 0.4, 2: 0.4 -> 2 epochs without improvement -> add.
        let out = run(&c, &[0.5, 0.4, 0.4]);
        assert_eq!(out[0].0, Decision::Continue);
        assert_eq!(out[1].0, Decision::Continue);
        assert_eq!(out[2].0, Decision::Restructure);
        let s = &out[2].1;
        assert_eq!(s.num_dendrites_added, 1);
        assert_eq!(s.num_tries, 0);
        assert_eq!(
            s.current_best, None,
            "a new set starts without a current best"
        );
        assert!(!s.set_improved_global);
        assert_eq!(s.last_switch_epoch, 2);
        assert_eq!(s.global_best, Some(0.5), "restored from the best snapshot");
        assert_eq!(s.epoch_last_improved, 0);
        assert_eq!(s.epoch, 3);
    }

    #[test]
    fn failed_set_gets_a_fresh_retry_then_completes() {
        let c = cfg(SwitchMode::History, 1, true);
        // 0: 0.5 best; 1: 0.4 -> switch (add #1). 2: 0.45 (current best of the
        // new set but not global) -> 3? With patience 1: epoch 2 improved current
        // (None before), epoch 3 no improvement -> switch: set did not beat
        // global -> retry (tries 1). Then again -> tries exhausted -> complete.
        let out = run(&c, &[0.5, 0.4, 0.45, 0.44, 0.45, 0.44]);
        let decisions: Vec<_> = out.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            decisions,
            vec![
                Decision::Continue,
                Decision::Restructure,
                Decision::Continue,
                Decision::Restructure,
                Decision::Continue,
                Decision::Complete
            ]
        );
        assert_eq!(out[3].1.num_tries, 1);
        assert_eq!(
            out[3].1.num_dendrites_added, 1,
            "the failed set is discarded, a fresh one added"
        );
        assert_eq!(out[5].1.global_best, Some(0.5));
        assert_eq!(
            out[5].1.num_dendrites_added, 0,
            "complete restores the best (pre-dendrite) state"
        );
    }

    #[test]
    fn successful_set_resets_tries_and_stops_at_max_dendrites() {
        let mut c = cfg(SwitchMode::History, 1, true);
        c.max_dendrites = 2;
        c.max_tries = 3;
        // Each new set improves the global best once, then stalls.
        let out = run(&c, &[0.5, 0.4, 0.6, 0.5, 0.7, 0.6, 0.8, 0.7]);
        let decisions: Vec<_> = out.iter().map(|(d, _)| *d).collect();
        assert_eq!(decisions[1], Decision::Restructure);
        assert_eq!(decisions[3], Decision::Restructure);
        assert_eq!(out[3].1.num_dendrites_added, 2);
        assert_eq!(out[3].1.num_tries, 0);
        assert_eq!(decisions[5], Decision::Complete, "max dendrites reached");
        assert_eq!(out[5].1.global_best, Some(0.7));
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn tries_reset_survives_the_restore() {
        let mut c = cfg(SwitchMode::History, 1, true);
        c.max_tries = 3;
        // add #1 at e1; it fails (e3 retry, tries 1); the retry succeeds (0.6 at e4);
        // the next switch must start from tries 0 even though the snapshot had tries 1.
        let out = run(&c, &[0.5, 0.4, 0.45, 0.44, 0.6, 0.5]);
        assert_eq!(out[3].1.num_tries, 1);
        assert_eq!(out[5].0, Decision::Restructure);
        assert_eq!(out[5].1.num_tries, 0);
        assert_eq!(out[5].1.num_dendrites_added, 2);
    }

    #[test]
    fn fixed_mode_switches_every_period() {
        let c = cfg(SwitchMode::Fixed, 2, true);
        let out = run(&c, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let decisions: Vec<_> = out.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            decisions,
            vec![
                Decision::Continue,
                Decision::Restructure,
                Decision::Continue,
                Decision::Restructure,
                Decision::Continue,
                Decision::Restructure
            ]
        );
    }

    #[test]
    fn every_epoch_mode_switches_each_epoch() {
        let c = cfg(SwitchMode::EveryEpoch, 0, true);
        let out = run(&c, &[0.1, 0.2, 0.3]);
        assert!(out.iter().all(|(d, _)| *d == Decision::Restructure));
        assert_eq!(out[2].1.num_dendrites_added, 3);
    }

    #[test]
    fn never_mode_never_switches() {
        let c = cfg(SwitchMode::Never, 1, true);
        let out = run(&c, &[0.5, 0.4, 0.3, 0.2]);
        assert!(out.iter().all(|(d, _)| *d == Decision::Continue));
    }

    #[test]
    fn baseline_history_mode_is_early_stopping() {
        let c = cfg(SwitchMode::History, 2, false);
        let out = run(&c, &[0.5, 0.6, 0.55, 0.58, 0.7]);
        let decisions: Vec<_> = out.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            decisions,
            vec![
                Decision::Continue,
                Decision::Continue,
                Decision::Continue,
                Decision::Complete
            ]
        );
        assert_eq!(out[3].1.global_best, Some(0.6));
        assert_eq!(out[3].1.num_dendrites_added, 0);
    }

    #[test]
    fn baseline_fixed_mode_uses_the_whole_budget() {
        let c = cfg(SwitchMode::Fixed, 1, false);
        let out = run(&c, &[0.5, 0.4, 0.3]);
        assert!(out.iter().all(|(d, _)| *d == Decision::Continue));
    }

    #[test]
    fn testing_capacity_adds_three_then_stops() {
        let mut c = cfg(SwitchMode::History, 10, true);
        c.testing_capacity = true;
        let out = run(&c, &[0.1, 0.1, 0.1, 0.1, 0.1]);
        let decisions: Vec<_> = out.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            decisions,
            vec![
                Decision::Restructure,
                Decision::Restructure,
                Decision::Restructure,
                Decision::Complete
            ]
        );
    }

    #[test]
    fn baseline_in_testing_capacity_mode_keeps_training() {
        let mut c = cfg(SwitchMode::History, 10, false);
        c.testing_capacity = true;
        let out = run(&c, &[0.1, 0.1, 0.1]);
        assert!(out.iter().all(|(d, _)| *d == Decision::Continue));
    }

    #[test]
    fn running_score_smooths_with_lookback() {
        let mut c = cfg(SwitchMode::Never, 10, true);
        c.lookback = 2;
        let s1 = add_validation_score(&c, &TrackerState::default(), None, 0.4);
        assert_eq!(s1.running, 0.4);
        let s2 = add_validation_score(&c, &s1.state, None, 0.8);
        assert!((s2.running - 0.6).abs() < 1e-12);
    }

    #[test]
    fn plateau_rule() {
        assert!(!plateau_reduce(0, 5, 1));
        assert!(plateau_reduce(2, 2, 2));
        assert!(!plateau_reduce(2, 1, 2));
    }
}
