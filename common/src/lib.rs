//! The vocabulary shared by the producer and the worker: what a run is
//! ([`spec`]), how a sweep file expands into jobs ([`sweep`]), the queue
//! message ([`job`]) and broker topology with its retry policy ([`queue`]),
//! job states ([`state`]), where artifacts live ([`artifacts`]) and how runs
//! are compared ([`report`]). Everything here is pure: no IO beyond reading
//! the sweep file the caller names.

pub mod artifacts;
pub mod config;
pub mod job;
pub mod queue;
pub mod report;
pub mod spec;
pub mod state;
pub mod sweep;
