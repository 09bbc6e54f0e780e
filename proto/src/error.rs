//! Typed error reasons on the wire: a server attaches an [`ErrorReason`] to a status (as the `reason` of a
//! `google.rpc.ErrorInfo` in the status details, gRPC's richer error model), and a client reads it back with
//! [`reason`], so no client ever parses a message's prose.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::v1::ErrorReason;

/// The `ErrorInfo.domain` of Strata's reasons.
pub const DOMAIN: &str = "strata.v1";

/// A status with `code`, `message` and a typed `reason`.
pub fn status(code: Code, message: impl Into<String>, reason: ErrorReason) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason.as_str_name(), DOMAIN, HashMap::new()),
    )
}

/// The reason a Strata server attached to `status`, if any.
pub fn reason(status: &Status) -> Option<ErrorReason> {
    let info = status.get_details_error_info()?;
    if info.domain != DOMAIN {
        return None;
    }
    ErrorReason::from_str_name(&info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_survives_the_status_and_foreign_ones_are_ignored() {
        let s = status(
            Code::Unavailable,
            "etcd is down",
            ErrorReason::StoreUnavailable,
        );
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "etcd is down");
        assert_eq!(reason(&s), Some(ErrorReason::StoreUnavailable));
        assert_eq!(reason(&Status::unavailable("no details")), None);
        let foreign = Status::with_error_details(
            Code::Unavailable,
            "x",
            ErrorDetails::with_error_info("STORE_UNAVAILABLE", "example.com", HashMap::new()),
        );
        assert_eq!(
            reason(&foreign),
            None,
            "another domain's reason is not ours"
        );
    }
}
