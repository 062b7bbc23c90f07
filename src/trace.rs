//! An optional record of a decision's steps, for `lookergate explain`. The decision is
//! generic over its recorder; the filter passes [`Off`], which records nothing, so no
//! step is built (nor any of its text formatted) on the request path.

/// Where a decision records its steps of kind `S`.
pub trait Trace<S> {
    /// Records the step `step` builds; `step` is called only by a recorder that keeps it.
    fn record(&mut self, step: impl FnOnce() -> S);
}

/// Records nothing: the filter's recorder.
pub struct Off;

impl<S> Trace<S> for Off {
    #[inline(always)]
    fn record(&mut self, _step: impl FnOnce() -> S) {}
}

/// Keeps every step, in order.
impl<S> Trace<S> for Vec<S> {
    fn record(&mut self, step: impl FnOnce() -> S) {
        self.push(step());
    }
}
