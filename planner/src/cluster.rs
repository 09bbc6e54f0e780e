//! A cluster description: the tiers (device, edge, cloud) with their compute speed, memory and power, and the
//! links between them. Read from TOML; see `examples/clusters/` for annotated real-world examples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_core::Tier;

/// One tier's hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// What the hardware is (free text, for tables).
    #[serde(default)]
    pub name: String,
    /// Sustained throughput on CNN inference, GFLOP/s (not the datasheet peak); with `bandwidth_gbs`, the peak
    /// compute throughput of the roofline (see [`crate::roofline`]; `strata profile --fit` measures both).
    pub gflops: f64,
    /// Memory bandwidth, GB/s: when given, a node takes `max(FLOPs / gflops, bytes moved / bandwidth)` plus
    /// the overhead (the roofline); when absent, `FLOPs / gflops` plus the overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gbs: Option<f64>,
    /// Fixed cost per operator (kernel launch, dispatch), microseconds.
    #[serde(default)]
    pub op_overhead_us: f64,
    /// Memory available to Strata's stage (parameters + activations), MiB.
    pub memory_mib: f64,
    /// Power while computing, watts (used for the device tier's energy).
    #[serde(default)]
    pub active_w: f64,
    /// Power while waiting for the network or other tiers, watts.
    #[serde(default)]
    pub idle_w: f64,
    /// Radio energy per byte sent (device only), nanojoules.
    #[serde(default)]
    pub tx_nj_per_byte: f64,
    /// Radio energy per byte received (device only), nanojoules.
    #[serde(default)]
    pub rx_nj_per_byte: f64,
    /// True when `strata profile` ran on this very hardware, so a profile is used unscaled for this tier.
    #[serde(default)]
    pub measured_here: bool,
}

/// A network link between two tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Lower tier (sender of activations).
    pub from: Tier,
    /// Higher tier.
    pub to: Tier,
    /// Uplink bandwidth (from → to), Mbit/s.
    pub up_mbps: f64,
    /// Downlink bandwidth (to → from), Mbit/s; defaults to the uplink.
    #[serde(default)]
    pub down_mbps: Option<f64>,
    /// Round-trip time, ms.
    pub rtt_ms: f64,
}

/// A cluster: up to three tiers and the links between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// A short name.
    #[serde(default)]
    pub name: String,
    /// The tiers present (`device` is required).
    pub tiers: BTreeMap<Tier, TierSpec>,
    /// Links; device–edge and edge–cloud are needed when those tiers exist, device–cloud is optional (default:
    /// relayed through the edge).
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}

/// Why a cluster file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// TOML syntax or a missing/unknown field.
    #[error("cluster file: {0}")]
    Parse(String),
    /// A number out of range.
    #[error("cluster file: {what} = {value} is impossible ({why})")]
    Impossible {
        /// Which field.
        what: String,
        /// The value.
        value: f64,
        /// The rule it breaks.
        why: &'static str,
    },
    /// Something structural is missing.
    #[error("cluster file: {0}")]
    Invalid(String),
}

/// Effective link between two tiers after defaults (a device–cloud link relayed through the edge, or the best of
/// direct and relayed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hop {
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// Milliseconds per byte going up.
    pub up_ms_per_byte: f64,
    /// Milliseconds per byte coming back.
    pub down_ms_per_byte: f64,
}

impl Cluster {
    /// Parses and validates a cluster from TOML text.
    pub fn from_toml(text: &str) -> Result<Cluster, ClusterError> {
        let cluster: Cluster = toml::from_str(text).map_err(|e| {
            ClusterError::Parse(e.message().to_string() + &location(text, e.span()))
        })?;
        cluster.validate()?;
        Ok(cluster)
    }

    /// Checks every number and the links.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if !self.tiers.contains_key(&Tier::Device) {
            return Err(ClusterError::Invalid(
                "no [tiers.device]: every cluster has a device tier, where model inputs are born"
                    .into(),
            ));
        }
        for (tier, spec) in &self.tiers {
            positive(&format!("tiers.{tier}.gflops"), spec.gflops)?;
            positive(&format!("tiers.{tier}.memory_mib"), spec.memory_mib)?;
            if let Some(bw) = spec.bandwidth_gbs {
                positive(&format!("tiers.{tier}.bandwidth_gbs"), bw)?;
            }
            for (field, v) in [
                ("op_overhead_us", spec.op_overhead_us),
                ("active_w", spec.active_w),
                ("idle_w", spec.idle_w),
                ("tx_nj_per_byte", spec.tx_nj_per_byte),
                ("rx_nj_per_byte", spec.rx_nj_per_byte),
            ] {
                non_negative(&format!("tiers.{tier}.{field}"), v)?;
            }
        }
        let mut seen = Vec::new();
        for link in &self.links {
            let label = format!("links[{}->{}]", link.from, link.to);
            if link.from >= link.to {
                return Err(ClusterError::Invalid(format!(
                    "{label}: a link goes from a lower tier to a higher one (device → edge → cloud)"
                )));
            }
            for t in [link.from, link.to] {
                if !self.tiers.contains_key(&t) {
                    return Err(ClusterError::Invalid(format!(
                        "{label}: tier {t} is not defined under [tiers]"
                    )));
                }
            }
            if seen.contains(&(link.from, link.to)) {
                return Err(ClusterError::Invalid(format!("{label} is defined twice")));
            }
            seen.push((link.from, link.to));
            positive(&format!("{label}.up_mbps"), link.up_mbps)?;
            if let Some(d) = link.down_mbps {
                positive(&format!("{label}.down_mbps"), d)?;
            }
            non_negative(&format!("{label}.rtt_ms"), link.rtt_ms)?;
        }
        let present: Vec<Tier> = self.tiers.keys().copied().collect();
        for pair in present.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if self.link(a, b).is_none() {
                return Err(ClusterError::Invalid(format!(
                    "no link between {a} and {b}: add a [[links]] entry with from = \"{a}\", to = \"{b}\""
                )));
            }
        }
        Ok(())
    }

    /// The tier spec, if the tier is present.
    pub fn tier(&self, tier: Tier) -> Option<&TierSpec> {
        self.tiers.get(&tier)
    }

    fn link(&self, from: Tier, to: Tier) -> Option<&LinkSpec> {
        self.links.iter().find(|l| l.from == from && l.to == to)
    }

    /// The effective hop between two present tiers (from < to). A device–cloud hop with an edge tier present is
    /// the better, componentwise, of the direct link (if given) and the relay through the edge, so hop costs obey
    /// the triangle inequality the partitioner relies on.
    pub fn hop(&self, from: Tier, to: Tier) -> Option<Hop> {
        let direct = self.link(from, to).map(|l| Hop {
            rtt_ms: l.rtt_ms,
            up_ms_per_byte: ms_per_byte(l.up_mbps),
            down_ms_per_byte: ms_per_byte(l.down_mbps.unwrap_or(l.up_mbps)),
        });
        if from == Tier::Device && to == Tier::Cloud && self.tiers.contains_key(&Tier::Edge) {
            let relay = match (
                self.hop(Tier::Device, Tier::Edge),
                self.hop(Tier::Edge, Tier::Cloud),
            ) {
                (Some(a), Some(b)) => Some(Hop {
                    rtt_ms: a.rtt_ms + b.rtt_ms,
                    up_ms_per_byte: a.up_ms_per_byte + b.up_ms_per_byte,
                    down_ms_per_byte: a.down_ms_per_byte + b.down_ms_per_byte,
                }),
                _ => None,
            };
            return match (direct, relay) {
                (Some(d), Some(r)) => Some(Hop {
                    rtt_ms: d.rtt_ms.min(r.rtt_ms),
                    up_ms_per_byte: d.up_ms_per_byte.min(r.up_ms_per_byte),
                    down_ms_per_byte: d.down_ms_per_byte.min(r.down_ms_per_byte),
                }),
                (d, r) => d.or(r),
            };
        }
        direct
    }
}

fn ms_per_byte(mbps: f64) -> f64 {
    8.0 / (mbps * 1e6) * 1e3
}

fn positive(what: &str, value: f64) -> Result<(), ClusterError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ClusterError::Impossible {
            what: what.to_string(),
            value,
            why: "must be a finite number > 0",
        })
    }
}

fn non_negative(what: &str, value: f64) -> Result<(), ClusterError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ClusterError::Impossible {
            what: what.to_string(),
            value,
            why: "must be a finite number >= 0",
        })
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!(" (line {line})")
        }
        None => String::new(),
    }
}
