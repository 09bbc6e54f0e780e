//! Choosing among the agents that hold a stage: the fewest requests in flight (ours, plus the queue the agent
//! last reported), skipping agents that recently failed. Shared by agents (next hop) and the device SDK (first
//! hop); decisions are local and take well under a microsecond.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crate::v1::Load;

#[derive(Debug, Default)]
struct Peer {
    in_flight: u32,
    queue_depth: u32,
    down_until: Option<Instant>,
    picks: u64,
}

/// Per-peer load and health as this process sees it.
#[derive(Debug, Default, Clone)]
pub struct Balancer {
    peers: Arc<Mutex<HashMap<String, Peer>>>,
}

/// Counts a request in flight to a peer until dropped.
#[derive(Debug)]
pub struct InFlight {
    balancer: Balancer,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(p) = self.balancer.lock().get_mut(&self.id) {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
    }
}

impl Balancer {
    /// An empty balancer.
    pub fn new() -> Balancer {
        Balancer::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock()
    }

    /// The best candidate not in `exclude`: healthy ones first, then by load, then the least picked.
    pub fn pick<'a>(&self, candidates: &'a [String], exclude: &[String]) -> Option<&'a String> {
        let now = Instant::now();
        let peers = self.lock();
        candidates
            .iter()
            .filter(|c| !exclude.contains(c))
            .min_by_key(|c| match peers.get(c.as_str()) {
                Some(p) => (
                    p.down_until.is_some_and(|t| t > now),
                    p.in_flight + p.queue_depth,
                    p.picks,
                ),
                None => (false, 0, 0),
            })
    }

    /// Whether a peer is marked down now.
    pub fn is_down(&self, id: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .get(id)
            .is_some_and(|p| p.down_until.is_some_and(|t| t > now))
    }

    /// Starts a request to `id`.
    pub fn start(&self, id: &str) -> InFlight {
        let mut peers = self.lock();
        let p = peers.entry(id.to_string()).or_default();
        p.in_flight += 1;
        p.picks += 1;
        InFlight {
            balancer: self.clone(),
            id: id.to_string(),
        }
    }

    /// Records the load a peer reported; a report also means it is up.
    pub fn report(&self, id: &str, load: &Load) {
        let mut peers = self.lock();
        let p = peers.entry(id.to_string()).or_default();
        p.queue_depth = load.queue_depth;
        p.down_until = None;
    }

    /// Avoids a peer for `period` (it failed or shed load).
    pub fn mark_down(&self, id: &str, period: Duration) {
        self.lock().entry(id.to_string()).or_default().down_until = Some(Instant::now() + period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_the_least_loaded_and_avoids_down_peers() {
        let b = Balancer::new();
        let c = ids(&["a", "b"]);
        let busy = b.start("a");
        assert_eq!(b.pick(&c, &[]).map(String::as_str), Some("b"));
        drop(busy);
        b.mark_down("b", Duration::from_secs(60));
        assert_eq!(b.pick(&c, &[]).map(String::as_str), Some("a"));
        assert_eq!(
            b.pick(&c, &ids(&["a"])).map(String::as_str),
            Some("b"),
            "down is a last resort, not excluded"
        );
        assert_eq!(b.pick(&c, &c), None);
    }

    #[test]
    fn spreads_sequential_requests() {
        let b = Balancer::new();
        let c = ids(&["a", "b"]);
        let first = b.pick(&c, &[]).cloned().expect("a candidate");
        drop(b.start(&first));
        let second = b.pick(&c, &[]).cloned().expect("a candidate");
        assert_ne!(first, second);
    }
}
