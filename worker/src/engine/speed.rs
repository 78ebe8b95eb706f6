//! How fast a trained model answers: batch-1 latency percentiles and
//! batch-64 throughput, measured on real sentences.

use std::time::Instant;

use candle_core::Device;
use common::metrics::percentile;
use common::summary::Speed;

use super::models::{Batch, Model};
use super::nn::Pass;

/// Batch-1 latency over at least 50 sentences (after 5 warm-up runs) and
/// batch-64 throughput over the whole set.
pub fn measure_speed(
    model: &Model,
    ids: &[Vec<u32>],
    device: &Device,
) -> candle_core::Result<Speed> {
    let ctx = Pass::inference();
    let run = |rows: &[Vec<u32>]| -> candle_core::Result<()> {
        super::beat::beat();
        let b = Batch::new(rows, model.pad_id(), device)?;
        let out = model.forward(&b, &ctx)?;
        // Reading the result synchronises the device.
        out.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    let n = ids.len().max(1);
    for i in 0..5 {
        run(std::slice::from_ref(&ids[i % n]))?;
    }
    let samples = n.max(50);
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        run(std::slice::from_ref(&ids[i % n]))?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let t = Instant::now();
    for chunk in ids.chunks(64) {
        run(chunk)?;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(Speed {
        latency_b1_p50_ms: percentile(&lat, 0.5),
        latency_b1_p95_ms: percentile(&lat, 0.95),
        latency_samples: samples,
        throughput_b64_per_s: ids.len() as f64 / secs.max(1e-9),
    })
}
