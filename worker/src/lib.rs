//! The worker's library: the training engine ([`engine`]) and the
//! commands the `worker` binary exposes ([`run`], [`bench`], [`predict`],
//! [`serve`]).

pub mod bench;
pub mod engine;
pub mod predict;
pub mod run;
pub mod serve;
pub mod tracking;

use anyhow::Context;

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> anyhow::Result<candle_core::Device> {
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => candle_core::Device::new_cuda(0).context("cannot open cuda:0"),
        _ => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("unknown device {s:?} (use cpu, cuda or cuda:N)"))?;
            candle_core::Device::new_cuda(n).with_context(|| format!("cannot open {s}"))
        }
    }
}
