//! The vocabulary shared by the producer and the worker: what a run is
//! ([`spec`]), how a sweep file expands into jobs ([`sweep`]), the queue
//! message ([`job`]) and broker topology ([`queue`]), job states
//! ([`state`]) and what a finished delivery comes to ([`settle`]), where
//! artifacts live ([`artifacts`]), the records a run leaves ([`summary`],
//! with the [`metrics`] that score it) and the tracker that decides when
//! dendrites are added ([`tracker`]).
//! Everything here is pure: no IO beyond reading the sweep file the caller
//! names and the wall clock ([`clock`]) that stamps stored times.

pub mod artifacts;
pub mod clock;
pub mod config;
pub mod job;
pub mod metrics;
pub mod queue;
pub mod settle;
pub mod spec;
pub mod state;
pub mod summary;
pub mod sweep;
pub mod tracker;
