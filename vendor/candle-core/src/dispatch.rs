//! A process-wide count of operations dispatched to a device backend: every
//! tensor operation, custom-op forward, in-place op, copy, fill and upload
//! that reaches a backend storage adds one. On CUDA each is (about) one
//! kernel launch or driver transfer; on the CPU, one pass of a kernel.
//! With [`set_dispatch_breakdown`] on, the count is also kept per operation
//! name (a custom op's own name, the unary or binary op, else the storage
//! method).
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

static DISPATCHES: AtomicU64 = AtomicU64::new(0);
static BREAKDOWN_ON: AtomicBool = AtomicBool::new(false);
static BREAKDOWN: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);

#[inline]
pub(crate) fn count(op: &'static str) {
    DISPATCHES.fetch_add(1, Ordering::Relaxed);
    if BREAKDOWN_ON.load(Ordering::Relaxed) {
        if let Ok(mut m) = BREAKDOWN.lock() {
            *m.get_or_insert_with(HashMap::new).entry(op).or_insert(0) += 1;
        }
    }
}

/// Counts one dispatch made outside candle's storage methods (a kernel
/// that a crate launches on buffers it got from
/// [`crate::Tensor::storage_and_layout`]), under the name `op`.
pub fn note_dispatch(op: &'static str) {
    count(op);
}

/// The number of backend dispatches since the process started: read it
/// before and after a piece of work to count that work's dispatches.
pub fn dispatch_count() -> u64 {
    DISPATCHES.load(Ordering::Relaxed)
}

/// Starts (from zero) or stops the per-operation count.
pub fn set_dispatch_breakdown(on: bool) {
    if on {
        if let Ok(mut m) = BREAKDOWN.lock() {
            *m = None;
        }
    }
    BREAKDOWN_ON.store(on, Ordering::Relaxed);
}

/// The per-operation counts since [`set_dispatch_breakdown`]`(true)`,
/// largest first.
pub fn dispatch_breakdown() -> Vec<(&'static str, u64)> {
    let mut v: Vec<_> = BREAKDOWN
        .lock()
        .ok()
        .and_then(|m| m.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}
