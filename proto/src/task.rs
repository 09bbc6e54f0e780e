//! Background tasks tied to the lifetime of what started them.

/// Aborts its task when dropped: a background loop owned by a session, a client or a server ends with it,
/// however that ends (return, error, panic, or its own task being aborted).
#[derive(Debug)]
pub struct AbortOnDrop<T = ()>(pub tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Spawns `future` on the current runtime, owned by the returned guard.
    pub fn spawn<F>(future: F) -> AbortOnDrop<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        AbortOnDrop(tokio::spawn(future))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pause between attempts to reach one of several endpoints, tried in turn: `initial` between the
/// endpoints of a round, then, after a round in which every endpoint failed, a pause that doubles each such
/// round up to `max`; back to the start after a success. Pure: the caller sleeps.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: std::time::Duration,
    max: std::time::Duration,
    next_round: std::time::Duration,
    endpoints: usize,
    failed_in_round: usize,
}

impl Backoff {
    /// A backoff over `endpoints` endpoints (at least one).
    pub fn new(
        initial: std::time::Duration,
        max: std::time::Duration,
        endpoints: usize,
    ) -> Backoff {
        Backoff {
            initial,
            max,
            next_round: initial,
            endpoints: endpoints.max(1),
            failed_in_round: 0,
        }
    }

    /// An attempt succeeded (the connection was up for a while): start over.
    pub fn succeeded(&mut self) {
        self.next_round = self.initial;
        self.failed_in_round = 0;
    }

    /// An attempt failed: how long to wait before the next one.
    pub fn failed(&mut self) -> std::time::Duration {
        self.failed_in_round += 1;
        if self.failed_in_round < self.endpoints {
            return self.initial;
        }
        self.failed_in_round = 0;
        let pause = self.next_round;
        self.next_round = (self.next_round * 2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_grows_per_failed_round_and_resets_on_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(300), ms(1000), 2);
        // Two endpoints: the second is tried soon after the first fails; each failed round doubles.
        let pauses: Vec<Duration> = (0..8).map(|_| b.failed()).collect();
        assert_eq!(
            pauses,
            [
                ms(300),
                ms(300),
                ms(300),
                ms(600),
                ms(300),
                ms(1000),
                ms(300),
                ms(1000)
            ]
        );
        b.succeeded();
        assert_eq!((b.failed(), b.failed()), (ms(300), ms(300)));
        let mut one = Backoff::new(ms(100), ms(250), 1);
        let pauses: Vec<Duration> = (0..4).map(|_| one.failed()).collect();
        assert_eq!(pauses, [ms(100), ms(200), ms(250), ms(250)]);
    }
}
