//! A process-wide count of operations dispatched to a device backend: every
//! tensor operation, custom-op forward, in-place op, copy, fill and upload
//! that reaches a backend storage adds one. On CUDA each is (about) one
//! kernel launch or driver transfer; on the CPU, one pass of a kernel.
use std::sync::atomic::{AtomicU64, Ordering};

static DISPATCHES: AtomicU64 = AtomicU64::new(0);

#[inline]
pub(crate) fn count() {
    DISPATCHES.fetch_add(1, Ordering::Relaxed);
}

/// The number of backend dispatches since the process started: read it
/// before and after a piece of work to count that work's dispatches.
pub fn dispatch_count() -> u64 {
    DISPATCHES.load(Ordering::Relaxed)
}
