//! Opening the device a run names: `cpu`, `cuda` or `cuda:N`. A CUDA
//! device is set up for the engine's one-stream use (see [`tune_cuda`]).

use candle_core::{Device, DeviceLocation};

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?} (use cpu, cuda or cuda:N)")]
    Unknown(String),
    #[error("cannot open {name}: {source}")]
    Open {
        name: String,
        source: candle_core::Error,
    },
    #[cfg(feature = "cuda")]
    #[error("cannot configure {name}: {source}")]
    Configure {
        name: String,
        source: candle_core::cuda_backend::cudarc::driver::DriverError,
    },
}

/// What computes on `device`: the processor's model name, the product
/// library (`mkl`, `openblas`, `candle`; the device's name on a GPU) and
/// the tensor kernels' thread count.
pub fn arithmetic(device: &Device) -> common::summary::Arithmetic {
    let gemm = match device.location() {
        DeviceLocation::Cpu => super::nn::matmul::cpu_backend().to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    common::summary::Arithmetic {
        cpu: cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        gemm,
        threads: rayon::current_num_threads(),
    }
}

/// The first `model name` of `/proc/cpuinfo` (Linux).
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Opens the device named `cpu`, `cuda` (the first GPU) or `cuda:N`.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| DeviceError::Unknown(name.into()))?,
    };
    let device = Device::new_cuda(ordinal).map_err(|source| DeviceError::Open {
        name: format!("cuda:{ordinal}"),
        source,
    })?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        tune_cuda(d).map_err(|source| DeviceError::Configure {
            name: name.into(),
            source,
        })?;
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
pub fn tune_cuda(
    dev: &candle_core::CudaDevice,
) -> Result<(), candle_core::cuda_backend::cudarc::driver::DriverError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
        for bad in ["gpu", "cuda:x", "cuda:", ""] {
            let e = open(bad).unwrap_err();
            assert!(matches!(e, DeviceError::Unknown(_)), "{bad}: {e}");
            assert!(e.to_string().contains("use cpu, cuda or cuda:N"));
        }
    }
}
