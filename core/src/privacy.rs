//! Privacy levels: what data may leave the device, or the home. A request may only tighten its model's level.

use serde::{Deserialize, Serialize};

use crate::UnknownName;

/// How far a model's data may travel. Ordered from strictest to loosest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Nothing leaves the device.
    Device,
    /// Nothing reaches the cloud tier.
    Edge,
    /// No raw model input crosses the network: every node reading one runs on the device, and raw inputs are
    /// never forwarded; only intermediate activations travel.
    Features,
    /// No constraint.
    Open,
}

impl Privacy {
    /// All levels, strictest first.
    pub const ALL: [Privacy; 4] = [
        Privacy::Device,
        Privacy::Edge,
        Privacy::Features,
        Privacy::Open,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Privacy::Device => "device",
            Privacy::Edge => "edge",
            Privacy::Features => "features",
            Privacy::Open => "open",
        }
    }
}

impl std::fmt::Display for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Privacy {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Privacy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownName {
                kind: "privacy level",
                given: s.to_string(),
                expected: "device, edge, features, open",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for p in Privacy::ALL {
            assert_eq!(p.name().parse::<Privacy>(), Ok(p));
        }
        let err = "public".parse::<Privacy>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown privacy level \"public\"; expected one of device, edge, features, open"
        );
    }
}
