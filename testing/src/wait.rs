//! Waiting for state that offers no event to wait on: a gauge read over
//! HTTP, an entry in a store, a call that starts to succeed.

use std::{future::Future, time::Duration};

/// Runs `check` until it returns `Some`, pausing between tries (1 ms at
/// first, doubling to at most 100 ms, so a slow machine is not flooded
/// with tries), and returns its value. Panics, naming `what`, once `bound`
/// has passed: the bound only catches a failure, it orders nothing.
pub async fn eventually<T, Fut>(what: &str, bound: Duration, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
