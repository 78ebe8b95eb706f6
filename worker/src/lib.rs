//! The worker's library: the training engine ([`engine`]), the commands
//! the `worker` binary exposes ([`run`], [`bench`], [`predict`],
//! [`serve`]) and the MLflow runs that mirror its jobs ([`mlflow`]).

pub mod bench;
pub mod engine;
pub mod mlflow;
pub mod predict;
pub mod run;
pub mod serve;
