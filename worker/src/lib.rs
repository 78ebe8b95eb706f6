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

/// Parses `cpu`, `cuda` or `cuda:N`; a CUDA device is opened for the
/// engine's one-stream use (see [`tune_cuda`]).
pub fn parse_device(s: &str) -> anyhow::Result<candle_core::Device> {
    let device = match s {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => candle_core::Device::new_cuda(0).context("cannot open cuda:0")?,
        _ => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("unknown device {s:?} (use cpu, cuda or cuda:N)"))?;
            candle_core::Device::new_cuda(n).with_context(|| format!("cannot open {s}"))?
        }
    };
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = &device {
        tune_cuda(d).with_context(|| format!("cannot configure {s}"))?;
    }
    Ok(device)
}

/// Two settings for a device the engine drives from one stream:
/// - no event tracking: cudarc otherwise records and destroys two CUDA
///   events per allocation to order it across streams, and there is one;
/// - the default memory pool keeps freed memory (release threshold
///   `u64::MAX`) instead of handing it back to the driver at every
///   synchronisation, so a training step reuses the previous step's memory.
#[cfg(feature = "cuda")]
pub fn tune_cuda(dev: &candle_core::CudaDevice) -> anyhow::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    // SAFETY: every kernel, copy and allocation of this device is issued on
    // its one stream, so no cross-stream ordering is lost.
    unsafe { dev.disable_event_tracking() };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` is written by the driver for this context's device;
    // the attribute takes a pointer to a u64, alive for the call.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()?;
    }
    Ok(())
}
