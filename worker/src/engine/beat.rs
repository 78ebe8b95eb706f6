//! Signs of life from a job's loops that are not training steps (loading,
//! feature caching, evaluation, the knock-out pass, latency measurement):
//! each calls [`beat`] as it goes, and whoever runs the job on this thread
//! hears it through [`with`]. The queue worker renews a job's lease only
//! while it hears from the job, so a long evaluation is progress and a hung
//! kernel is not.

use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    static HEARD: RefCell<Option<Rc<dyn Fn()>>> = const { RefCell::new(None) };
}

/// Puts back what was heard before, even when `body` panics.
struct Restore(Option<Rc<dyn Fn()>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        HEARD.with(|h| *h.borrow_mut() = prev);
    }
}

/// Runs `body`, calling `heard` on every [`beat`] of this thread meanwhile.
pub fn with<R>(heard: impl Fn() + 'static, body: impl FnOnce() -> R) -> R {
    let prev = HEARD.with(|h| h.replace(Some(Rc::new(heard))));
    let _restore = Restore(prev);
    body()
}

/// Signals progress to whoever listens on this thread (no one: nothing).
pub fn beat() {
    let heard = HEARD.with(|h| h.borrow().clone());
    if let Some(f) = heard {
        f();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn beats_reach_the_innermost_listener_and_stop_with_it() {
        let outer = Rc::new(Cell::new(0));
        let inner = Rc::new(Cell::new(0));
        beat();
        let (o, i) = (outer.clone(), inner.clone());
        with(
            move || o.set(o.get() + 1),
            || {
                beat();
                with(move || i.set(i.get() + 1), beat);
                beat();
            },
        );
        beat();
        assert_eq!((outer.get(), inner.get()), (2, 1));
        let panicked = std::panic::catch_unwind(|| with(|| {}, || panic!("hung")));
        assert!(panicked.is_err());
        let after = Rc::new(Cell::new(0));
        beat();
        assert_eq!(after.get(), 0, "no listener left behind by a panic");
    }
}
