//! The tiers of the hierarchy. Data only ever flows device → edge → cloud (results return to the device).

use serde::{Deserialize, Serialize};

use crate::UnknownName;

/// A tier of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The chip in the user's hands (or on their face); model inputs are born here.
    Device,
    /// A gateway or home box on the same LAN.
    Edge,
    /// GPU servers in a data centre.
    Cloud,
}

impl Tier {
    /// All tiers in data-flow order.
    pub const ALL: [Tier; 3] = [Tier::Device, Tier::Edge, Tier::Cloud];

    /// Position in the data-flow order (device 0, edge 1, cloud 2).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The tier at a position.
    pub fn from_index(i: usize) -> Option<Tier> {
        Tier::ALL.get(i).copied()
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Edge => "edge",
            Tier::Cloud => "cloud",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Tier {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownName {
                kind: "tier",
                given: s.to_string(),
                expected: "device, edge, cloud",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_names_round_trip() {
        for (i, t) in Tier::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(Tier::from_index(i), Some(t));
            assert_eq!(t.name().parse::<Tier>(), Ok(t));
        }
        assert_eq!(Tier::from_index(3), None);
        assert!("fog".parse::<Tier>().is_err());
    }
}
