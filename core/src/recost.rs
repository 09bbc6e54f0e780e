//! Re-costing a plan under other conditions: the planner's cost model written over what a route table
//! carries, so a device can predict every plan for the network, load and speed of the moment without the
//! model graph.
//!
//! A plan is its stages (tier and compute ms at the profiled speed) and its *transfers*: per hop of its chain
//! of tiers, the bytes that go up it and the bytes that come back down. Under [`Conditions`]:
//!
//! - latency = Σ stage ms × the tier's speed factor + Σ remote tiers' queue wait + Σ transfers (the link's RTT +
//!   up bytes / up goodput + down bytes / down goodput);
//! - device energy = device compute ms × active W + (latency − device compute ms) × idle W + bytes the device
//!   sends × tx nJ/B + bytes it receives × rx nJ/B.
//!
//! At the profiled conditions ([`Conditions::nominal`]) this is exactly the planner's own prediction (a
//! property test in the planner checks it against the partitioner's evaluation).

use serde::{Deserialize, Serialize};

use crate::Tier;

/// A network link between two tiers (lower tier first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// Device ↔ edge.
    DeviceEdge,
    /// Edge ↔ cloud.
    EdgeCloud,
    /// Device ↔ cloud, direct.
    DeviceCloud,
}

impl Link {
    /// Every link.
    pub const ALL: [Link; 3] = [Link::DeviceEdge, Link::EdgeCloud, Link::DeviceCloud];

    /// The link between two different tiers, in either order.
    pub fn between(a: Tier, b: Tier) -> Option<Link> {
        match (a.min(b), a.max(b)) {
            (Tier::Device, Tier::Edge) => Some(Link::DeviceEdge),
            (Tier::Edge, Tier::Cloud) => Some(Link::EdgeCloud),
            (Tier::Device, Tier::Cloud) => Some(Link::DeviceCloud),
            _ => None,
        }
    }

    /// Its tiers, lower first.
    pub fn tiers(self) -> (Tier, Tier) {
        match self {
            Link::DeviceEdge => (Tier::Device, Tier::Edge),
            Link::EdgeCloud => (Tier::Edge, Tier::Cloud),
            Link::DeviceCloud => (Tier::Device, Tier::Cloud),
        }
    }

    /// Position in [`Link::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// `device-edge`, `edge-cloud`, `device-cloud`.
    pub fn name(self) -> &'static str {
        match self {
            Link::DeviceEdge => "device-edge",
            Link::EdgeCloud => "edge-cloud",
            Link::DeviceCloud => "device-cloud",
        }
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a link does now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkState {
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// Goodput away from the device (lower → higher tier), Mbit/s.
    pub up_mbps: f64,
    /// Goodput towards the device, Mbit/s.
    pub down_mbps: f64,
}

impl LinkState {
    /// Milliseconds to move `up` bytes up and `down` bytes down, RTT included.
    pub fn transfer_ms(&self, up: f64, down: f64) -> f64 {
        self.rtt_ms + up * ms_per_byte(self.up_mbps) + down * ms_per_byte(self.down_mbps)
    }
}

/// Milliseconds per byte at `mbps` megabits per second (infinite at 0).
pub fn ms_per_byte(mbps: f64) -> f64 {
    8.0 / (mbps * 1e3)
}

/// The device's power figures.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DevicePower {
    /// While computing, W.
    pub active_w: f64,
    /// While waiting for the network or other tiers, W.
    pub idle_w: f64,
    /// Radio energy per byte sent, nJ.
    pub tx_nj_per_byte: f64,
    /// Radio energy per byte received, nJ.
    pub rx_nj_per_byte: f64,
}

/// The conditions a plan is costed under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// Per link ([`Link::index`]); `None` where the link is unknown (plans that cross it cost infinity).
    pub links: [Option<LinkState>; 3],
    /// Per tier ([`Tier::index`]): measured compute time / profiled compute time (1 = as profiled).
    pub speed: [f64; 3],
    /// Per tier: expected wait for a compute slot, ms (device: 0).
    pub queue_ms: [f64; 3],
}

impl Conditions {
    /// The profiled conditions: these links, speed factors of 1, no queues.
    pub fn nominal(links: [Option<LinkState>; 3]) -> Conditions {
        Conditions {
            links,
            speed: [1.0; 3],
            queue_ms: [0.0; 3],
        }
    }

    /// The state of a link.
    pub fn link(&self, link: Link) -> Option<LinkState> {
        self.links[link.index()]
    }
}

/// One stage of a plan, as costing sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageCost {
    /// Where it runs.
    pub tier: Tier,
    /// Compute time, ms: at the profiled speed, or measured on this very device (`measured`).
    pub ms: f64,
    /// `ms` was measured where the plan will run: the tier's speed factor does not apply to it.
    pub measured: bool,
}

/// The bytes a plan moves over one hop of its chain of tiers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    /// The link.
    pub link: Link,
    /// Bytes going up (away from the device).
    pub up_bytes: f64,
    /// Bytes coming back down.
    pub down_bytes: f64,
}

/// A plan reduced to what costing needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanCost {
    /// Stages in execution order.
    pub stages: Vec<StageCost>,
    /// One per hop of the plan's chain of tiers (none for a device-only plan).
    pub transfers: Vec<Transfer>,
}

/// A plan's predicted figures under some conditions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// End to end, ms.
    pub latency_ms: f64,
    /// Device energy, mJ.
    pub energy_mj: f64,
    /// Of the latency, compute on the device, ms.
    pub device_ms: f64,
    /// Of the latency, on the network, ms.
    pub network_ms: f64,
}

/// Predicts a plan given as its stages and transfers (see the module docs); infinite when it crosses an
/// unknown link. Iterators, so a caller can cost a plan in its own representation without allocating.
pub fn predict(
    stages: impl IntoIterator<Item = StageCost>,
    transfers: impl IntoIterator<Item = Transfer>,
    conditions: &Conditions,
    power: &DevicePower,
) -> Prediction {
    let mut compute = 0.0;
    let mut device_ms = 0.0;
    let mut queued = [false; 3];
    for s in stages {
        let t = s.tier.index();
        let ms = if s.measured {
            s.ms
        } else {
            s.ms * conditions.speed[t]
        };
        compute += ms;
        if s.tier == Tier::Device {
            device_ms += ms;
        } else {
            queued[t] = true;
        }
    }
    let queue: f64 = (0..3)
        .filter(|&t| queued[t])
        .map(|t| conditions.queue_ms[t])
        .sum();
    let mut network_ms = 0.0;
    let mut sent = 0.0;
    let mut received = 0.0;
    for x in transfers {
        network_ms += match conditions.link(x.link) {
            Some(l) => l.transfer_ms(x.up_bytes, x.down_bytes),
            None => f64::INFINITY,
        };
        if x.link.tiers().0 == Tier::Device {
            sent += x.up_bytes;
            received += x.down_bytes;
        }
    }
    let latency_ms = compute + queue + network_ms;
    let energy_mj = device_ms * power.active_w
        + (latency_ms - device_ms) * power.idle_w
        + (sent * power.tx_nj_per_byte + received * power.rx_nj_per_byte) * 1e-6;
    Prediction {
        latency_ms,
        energy_mj,
        device_ms,
        network_ms,
    }
}

impl PlanCost {
    /// Predicts the plan under `conditions` (see the module docs). Infinite when it crosses an unknown link.
    pub fn predict(&self, conditions: &Conditions, power: &DevicePower) -> Prediction {
        predict(
            self.stages.iter().copied(),
            self.transfers.iter().copied(),
            conditions,
            power,
        )
    }

    /// Bytes the device sends.
    pub fn device_bytes_sent(&self) -> f64 {
        self.transfers
            .iter()
            .filter(|x| x.link.tiers().0 == Tier::Device)
            .map(|x| x.up_bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(rtt_ms: f64, mbps: f64) -> Option<LinkState> {
        Some(LinkState {
            rtt_ms,
            up_mbps: mbps,
            down_mbps: mbps,
        })
    }

    #[test]
    fn a_split_plan_costs_compute_queue_and_transfer() {
        let plan = PlanCost {
            stages: vec![
                StageCost {
                    tier: Tier::Device,
                    ms: 10.0,
                    measured: false,
                },
                StageCost {
                    tier: Tier::Edge,
                    ms: 4.0,
                    measured: false,
                },
            ],
            transfers: vec![Transfer {
                link: Link::DeviceEdge,
                up_bytes: 1e6,
                down_bytes: 4e3,
            }],
        };
        let mut c = Conditions::nominal([link(5.0, 8.0), None, None]);
        c.speed[Tier::Edge.index()] = 2.0;
        c.queue_ms[Tier::Edge.index()] = 3.0;
        let power = DevicePower {
            active_w: 1.0,
            idle_w: 0.1,
            tx_nj_per_byte: 1000.0,
            rx_nj_per_byte: 500.0,
        };
        let p = plan.predict(&c, &power);
        // 8 Mbit/s = 1 byte per µs: 1 MB up is 1,000 ms, 4 kB down 4 ms.
        let network = 5.0 + 1000.0 + 4.0;
        assert!((p.network_ms - network).abs() < 1e-9);
        assert!((p.latency_ms - (10.0 + 8.0 + 3.0 + network)).abs() < 1e-9);
        let energy = 10.0 * 1.0 + (p.latency_ms - 10.0) * 0.1 + (1e6 * 1000.0 + 4e3 * 500.0) * 1e-6;
        assert!((p.energy_mj - energy).abs() < 1e-9);
        assert_eq!(plan.device_bytes_sent(), 1e6);
    }

    #[test]
    fn an_unknown_link_makes_a_plan_infinitely_slow() {
        let plan = PlanCost {
            stages: vec![],
            transfers: vec![Transfer {
                link: Link::EdgeCloud,
                up_bytes: 1.0,
                down_bytes: 1.0,
            }],
        };
        let c = Conditions::nominal([link(1.0, 1.0), None, None]);
        assert!(
            plan.predict(&c, &DevicePower::default())
                .latency_ms
                .is_infinite()
        );
    }

    #[test]
    fn links_are_named_by_their_tiers_in_either_order() {
        assert_eq!(
            Link::between(Tier::Cloud, Tier::Device),
            Some(Link::DeviceCloud)
        );
        assert_eq!(Link::between(Tier::Edge, Tier::Edge), None);
        for l in Link::ALL {
            let (a, b) = l.tiers();
            assert_eq!(Link::between(a, b), Some(l));
        }
    }
}
