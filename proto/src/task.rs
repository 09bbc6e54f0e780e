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
