//! The vocabulary shared by the producer and the worker: what a job is
//! ([`spec`]), how a sweep file expands into jobs ([`sweep`]) and where a
//! job's artifacts live ([`artifacts`]). Everything here is pure: no IO
//! beyond reading the sweep file the caller names.

pub mod artifacts;
pub mod report;
pub mod spec;
pub mod sweep;
