//! One logging setup for every Strata binary (`strata`, `strata-edge-agent`, the testbed's drivers): `tracing`
//! to standard error, filtered by `STRATA_LOG` in `tracing`'s `EnvFilter` syntax (`info`,
//! `warn,strata_edge_agent=debug`, …). `RUST_LOG` is read when `STRATA_LOG` is not set, for setups written
//! before the two were one; a filter that does not parse is reported and the default used, never ignored
//! silently.

use tracing_subscriber::EnvFilter;

/// The variable that sets the log filter.
pub const ENV: &str = "STRATA_LOG";

/// Logs to standard error at `default` (`info` for servers, `warn` for commands that print their own
/// output) unless `STRATA_LOG` (or else `RUST_LOG`) says otherwise. Call once, first thing in `main`.
pub fn init(default: &str) {
    let (filter, problem) = filter(
        std::env::var(ENV).ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
        default,
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

/// The filter from the variables' values, and what was wrong with them, if anything.
fn filter(
    strata_log: Option<&str>,
    rust_log: Option<&str>,
    default: &str,
) -> (EnvFilter, Option<String>) {
    let (variable, value) = match (strata_log, rust_log) {
        (Some(v), _) => (ENV, v),
        (None, Some(v)) => ("RUST_LOG", v),
        (None, None) => return (EnvFilter::new(default), None),
    };
    match EnvFilter::try_new(value) {
        Ok(filter) => (filter, None),
        Err(e) => (
            EnvFilter::new(default),
            Some(format!(
                "{variable}={value:?} is not a log filter ({e}); logging at \"{default}\""
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_log_wins_then_rust_log_then_the_default() {
        let show = |f: EnvFilter| f.to_string();
        assert_eq!(
            show(filter(Some("debug"), Some("error"), "info").0),
            "debug"
        );
        assert_eq!(show(filter(None, Some("error"), "info").0), "error");
        assert_eq!(show(filter(None, None, "info").0), "info");
    }

    #[test]
    fn a_filter_that_does_not_parse_is_reported_and_the_default_used() {
        let (f, problem) = filter(Some("info,[bad"), None, "warn");
        assert_eq!(f.to_string(), "warn");
        let problem = problem.expect("a problem");
        assert!(problem.contains("STRATA_LOG"), "{problem}");
    }
}
