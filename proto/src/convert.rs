//! The one place where Strata's own types meet their wire forms: [`Tier`], [`Privacy`], [`DType`] and
//! [`Digest`] to and from the `strata.v1` enums and strings. Decoding never guesses: an unspecified or
//! unknown code is a [`WireError`] naming the field, so a peer that sends garbage gets a clear refusal.

use strata_core::recost::{DevicePower, Link, LinkState, Transfer};
use strata_core::{DType, Digest, Privacy, Tier};

use crate::v1;

/// A wire value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// An enum field holds a number that is not one of its values (or is unspecified where a value is required).
    #[error("{field}: {code} is not a valid {kind}")]
    BadEnum {
        /// The field, for the message (`"stage.tier"`).
        field: &'static str,
        /// The enum's name.
        kind: &'static str,
        /// The number sent.
        code: i32,
    },
    /// A required enum field left unspecified (0).
    #[error("{field}: no {kind} given (the value was unspecified, 0); {expected}")]
    Missing {
        /// The field (`"meta.privacy"`).
        field: &'static str,
        /// The enum's name.
        kind: &'static str,
        /// What to send instead, for the message.
        expected: &'static str,
    },
    /// A digest field that is not a lower-case hex SHA-256.
    #[error("{field}: {source}")]
    BadDigest {
        /// The field.
        field: &'static str,
        /// Why.
        source: strata_core::DigestError,
    },
}

impl WireError {
    /// The gRPC status for a request that carried this value.
    pub fn into_status(self) -> tonic::Status {
        tonic::Status::invalid_argument(self.to_string())
    }
}

impl From<Tier> for v1::Tier {
    fn from(t: Tier) -> v1::Tier {
        match t {
            Tier::Device => v1::Tier::Device,
            Tier::Edge => v1::Tier::Edge,
            Tier::Cloud => v1::Tier::Cloud,
        }
    }
}

/// A wire tier (`field` names it in the error). Unspecified is an error: every stage and node has a tier.
pub fn tier(code: i32, field: &'static str) -> Result<Tier, WireError> {
    match v1::Tier::try_from(code) {
        Ok(v1::Tier::Device) => Ok(Tier::Device),
        Ok(v1::Tier::Edge) => Ok(Tier::Edge),
        Ok(v1::Tier::Cloud) => Ok(Tier::Cloud),
        Ok(v1::Tier::Unspecified) | Err(_) => Err(WireError::BadEnum {
            field,
            kind: "tier",
            code,
        }),
    }
}

/// The tier's name for display, or `"unspecified"` for a code that is none.
pub fn tier_name(code: i32) -> &'static str {
    tier(code, "tier").map_or("unspecified", Tier::name)
}

/// Whether a wire tier is `t` (false for an invalid code).
pub fn is_tier(code: i32, t: Tier) -> bool {
    code == v1::Tier::from(t) as i32
}

impl From<Privacy> for v1::Privacy {
    fn from(p: Privacy) -> v1::Privacy {
        match p {
            Privacy::Device => v1::Privacy::Device,
            Privacy::Edge => v1::Privacy::Edge,
            Privacy::Features => v1::Privacy::Features,
            Privacy::Open => v1::Privacy::Open,
        }
    }
}

/// A wire privacy level: `None` when unspecified (a request then keeps its model's level).
pub fn privacy(code: i32, field: &'static str) -> Result<Option<Privacy>, WireError> {
    match v1::Privacy::try_from(code) {
        Ok(v1::Privacy::Unspecified) => Ok(None),
        Ok(v1::Privacy::Device) => Ok(Some(Privacy::Device)),
        Ok(v1::Privacy::Edge) => Ok(Some(Privacy::Edge)),
        Ok(v1::Privacy::Features) => Ok(Some(Privacy::Features)),
        Ok(v1::Privacy::Open) => Ok(Some(Privacy::Open)),
        Err(_) => Err(WireError::BadEnum {
            field,
            kind: "privacy level",
            code,
        }),
    }
}

/// A model's own privacy level, which must be given: unspecified is [`WireError::Missing`] and an unknown code
/// [`WireError::BadEnum`]. Never defaulted: a model stored at a wider level than its owner meant would leak.
pub fn model_privacy(code: i32, field: &'static str) -> Result<Privacy, WireError> {
    privacy(code, field)?.ok_or(WireError::Missing {
        field,
        kind: "privacy level",
        expected: "send one of device, edge, features, open",
    })
}

/// The level's name for display, or `"unspecified"`.
pub fn privacy_name(code: i32) -> &'static str {
    match privacy(code, "privacy") {
        Ok(Some(p)) => p.name(),
        _ => "unspecified",
    }
}

impl From<DType> for v1::DataType {
    fn from(d: DType) -> v1::DataType {
        // The wire enum's numbers are ONNX's codes, and it names every dtype Strata carries.
        v1::DataType::try_from(d.onnx_code()).unwrap_or(v1::DataType::Unspecified)
    }
}

/// A wire element type.
pub fn dtype(code: i32, field: &'static str) -> Result<DType, WireError> {
    DType::from_onnx_code(code).ok_or(WireError::BadEnum {
        field,
        kind: "data type",
        code,
    })
}

/// A wire digest.
pub fn digest(s: &str, field: &'static str) -> Result<Digest, WireError> {
    s.parse()
        .map_err(|source| WireError::BadDigest { field, source })
}

impl From<Link> for v1::Link {
    fn from(l: Link) -> v1::Link {
        match l {
            Link::DeviceEdge => v1::Link::DeviceEdge,
            Link::EdgeCloud => v1::Link::EdgeCloud,
            Link::DeviceCloud => v1::Link::DeviceCloud,
        }
    }
}

/// A wire link (`field` names it in the error).
pub fn link(code: i32, field: &'static str) -> Result<Link, WireError> {
    match v1::Link::try_from(code) {
        Ok(v1::Link::DeviceEdge) => Ok(Link::DeviceEdge),
        Ok(v1::Link::EdgeCloud) => Ok(Link::EdgeCloud),
        Ok(v1::Link::DeviceCloud) => Ok(Link::DeviceCloud),
        Ok(v1::Link::Unspecified) | Err(_) => Err(WireError::BadEnum {
            field,
            kind: "link",
            code,
        }),
    }
}

/// A plan's transfers on the wire.
pub fn transfers_to_wire(transfers: &[Transfer]) -> Vec<v1::Transfer> {
    transfers
        .iter()
        .map(|x| v1::Transfer {
            link: v1::Link::from(x.link) as i32,
            up_bytes: x.up_bytes.round() as u64,
            down_bytes: x.down_bytes.round() as u64,
        })
        .collect()
}

/// The compute factor each tier of a table was planned with, by [`Tier::index`]: 1 where absent or not a
/// positive finite number.
pub fn tier_calibration(table: &v1::RouteTable) -> [f64; 3] {
    [0, 1, 2].map(|i| {
        table
            .tier_calibration
            .get(i)
            .copied()
            .filter(|f| f.is_finite() && *f > 0.0)
            .unwrap_or(1.0)
    })
}

/// The profiled links of a route table, by [`Link::index`] (links with a bad code are left out).
pub fn link_profiles(table: &v1::RouteTable) -> [Option<LinkState>; 3] {
    let mut out = [None; 3];
    for p in &table.links {
        if let Ok(l) = link(p.link, "link") {
            out[l.index()] = Some(LinkState {
                rtt_ms: p.rtt_ms,
                up_mbps: p.up_mbps,
                down_mbps: p.down_mbps,
            });
        }
    }
    out
}

/// Profiled links on the wire.
pub fn link_profiles_to_wire(links: &[Option<LinkState>; 3]) -> Vec<v1::LinkProfile> {
    Link::ALL
        .iter()
        .filter_map(|&l| {
            links[l.index()].map(|s| v1::LinkProfile {
                link: v1::Link::from(l) as i32,
                rtt_ms: s.rtt_ms,
                up_mbps: s.up_mbps,
                down_mbps: s.down_mbps,
            })
        })
        .collect()
}

/// The device power figures of a route table (zeros when absent).
pub fn device_power(table: &v1::RouteTable) -> DevicePower {
    table
        .device_power
        .map_or(DevicePower::default(), |p| DevicePower {
            active_w: p.active_w,
            idle_w: p.idle_w,
            tx_nj_per_byte: p.tx_nj_per_byte,
            rx_nj_per_byte: p.rx_nj_per_byte,
        })
}

impl From<DevicePower> for v1::DevicePower {
    fn from(p: DevicePower) -> v1::DevicePower {
        v1::DevicePower {
            active_w: p.active_w,
            idle_w: p.idle_w,
            tx_nj_per_byte: p.tx_nj_per_byte,
            rx_nj_per_byte: p.rx_nj_per_byte,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_and_garbage_is_refused() {
        for t in Tier::ALL {
            assert_eq!(tier(v1::Tier::from(t) as i32, "t"), Ok(t));
            assert!(is_tier(v1::Tier::from(t) as i32, t));
        }
        assert!(tier(0, "t").is_err(), "unspecified tier");
        assert!(tier(99, "t").is_err());
        for p in Privacy::ALL {
            assert_eq!(privacy(v1::Privacy::from(p) as i32, "p"), Ok(Some(p)));
        }
        assert_eq!(privacy(0, "p"), Ok(None));
        assert_eq!(
            model_privacy(v1::Privacy::Features as i32, "p"),
            Ok(Privacy::Features)
        );
        let err = privacy(42, "request.privacy").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "request.privacy: 42 is not a valid privacy level"
        );
        for code in 1..=13 {
            if let Ok(d) = dtype(code, "d") {
                assert_eq!(v1::DataType::from(d) as i32, code);
            }
        }
        assert!(dtype(8, "d").is_err(), "strings are not carried");
        assert!(digest("abc", "digest").is_err());
    }

    #[test]
    fn a_model_privacy_level_is_never_defaulted() {
        let unspecified = model_privacy(0, "meta.privacy").expect_err("unspecified");
        assert!(
            matches!(unspecified, WireError::Missing { .. }),
            "{unspecified:?}"
        );
        assert!(
            unspecified
                .to_string()
                .contains("meta.privacy: no privacy level given"),
            "{unspecified}"
        );
        assert!(matches!(
            model_privacy(99, "meta.privacy"),
            Err(WireError::BadEnum { code: 99, .. })
        ));
        assert_eq!(
            unspecified.into_status().code(),
            tonic::Code::InvalidArgument
        );
    }
}
