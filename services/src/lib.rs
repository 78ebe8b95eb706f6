//! Adapters to the services of a distributed sweep, each a thin layer that
//! executes what `common` decides: [`broker`] (RabbitMQ topology, confirmed
//! publishing, dead letters), [`state`] (job, sweep and worker state in
//! Redis with fenced transitions, leases and event streams),
//! [`artifacts`] (S3 or a local directory through object_store, with
//! retried uploads) and the [`reconcile`]r that brings Redis and the broker
//! back in agreement after faults. Connections are passed in, so tests use real servers
//! with unique names.

pub mod artifacts;
pub mod broker;
pub mod mlflow;
pub mod reconcile;
pub mod state;
