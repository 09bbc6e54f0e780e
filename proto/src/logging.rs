//! One logging and tracing setup for every Strata binary (`strata`, `strata-edge-agent`, the testbed's
//! drivers).
//!
//! Logs: `tracing` to standard error, filtered by `STRATA_LOG` in `tracing`'s `EnvFilter` syntax (`info`,
//! `warn,strata_edge_agent=debug`, …). `RUST_LOG` is read when `STRATA_LOG` is not set, for setups written
//! before the two were one; a filter that does not parse is reported and the default used, never ignored
//! silently.
//!
//! Traces (with the `otlp` feature): the same `tracing` spans, Strata's at `info` and above whatever the log
//! filter says, bridged to OpenTelemetry and exported over OTLP/gRPC, configured the standard way
//! ([`otlp_setting`]: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SDK_DISABLED`). Off unless an endpoint
//! is set; trace context crosses processes in the W3C format ([`crate::trace`]).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// The variable that sets the log filter.
pub const ENV: &str = "STRATA_LOG";

/// What [`init`] set up. Hold it until the process exits: dropping it sends the traces not yet exported
/// (waiting at most the exporter's timeout) and stops the exporter.
#[must_use = "dropping the telemetry guard stops the trace exporter"]
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    exporter: Option<otlp::Exporter>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.exporter.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown();
        }
    }
}

/// Logs to standard error at `default` (`info` for servers, `warn` for commands that print their own
/// output) unless `STRATA_LOG` (or else `RUST_LOG`) says otherwise, and exports traces as `service` (unless
/// `OTEL_SERVICE_NAME` says otherwise) when OTLP is configured. Call once, first thing in `main`, and keep
/// the guard.
pub fn init(service: &str, default: &str) -> Telemetry {
    let (filter, problem) = filter(
        std::env::var(ENV).ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
        default,
    );
    let (export, refused) = match otlp_setting(|k| std::env::var(k).ok()) {
        OtlpSetting::Off => (Export::Nothing, None),
        OtlpSetting::On => (Export::Otlp { endpoint: None }, None),
        OtlpSetting::Refused(why) => (Export::Nothing, Some(why)),
    };
    let (dispatch, telemetry, failed) = build(service, filter, std::io::stderr, export);
    if tracing::dispatcher::set_global_default(dispatch).is_err() {
        eprintln!(
            "warning: logging was set up already; STRATA_LOG and OTEL_* are not applied again"
        );
        return Telemetry::default();
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    if let Some(why) = refused.or(failed) {
        tracing::warn!("traces are not exported: {why}");
    }
    crate::trace::set_exporting(telemetry.exporting());
    telemetry
}

/// Where traces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Nowhere: spans serve the logs only.
    Nothing,
    /// OTLP over gRPC, to `endpoint`, or to where the `OTEL_EXPORTER_OTLP_*` variables say when `None`
    /// (with the `otlp` feature; without it, nothing is exported and the subscriber says why).
    Otlp {
        /// The collector's URL (`http://host:4317`), overriding the environment.
        endpoint: Option<String>,
    },
}

/// The binaries' subscriber, not installed: logs filtered by `log_filter` (`EnvFilter` syntax; directives that
/// do not parse are ignored) written to `logs`, and the OpenTelemetry layer when `export` asks for it. Returns
/// the dispatcher, the exporter's guard, and why nothing is exported when an export was asked for and could
/// not start. [`init`] installs the same globally; a benchmark can run several side by side with
/// [`tracing::dispatcher::with_default`].
pub fn subscriber<W>(
    service: &str,
    log_filter: &str,
    logs: W,
    export: Export,
) -> (tracing::Dispatch, Telemetry, Option<String>)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    build(service, EnvFilter::new(log_filter), logs, export)
}

fn build<W>(
    service: &str,
    filter: EnvFilter,
    logs: W,
    export: Export,
) -> (tracing::Dispatch, Telemetry, Option<String>)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(logs)
        .with_filter(filter);
    #[cfg(feature = "otlp")]
    {
        let (exporter, layer, failed) = match export {
            Export::Nothing => (None, None, None),
            Export::Otlp { endpoint } => match otlp::Exporter::start(service, endpoint) {
                Ok((exporter, tracer)) => {
                    let layer = tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(otlp::spans());
                    (Some(exporter), Some(layer), None)
                }
                Err(why) => (None, None, Some(why)),
            },
        };
        let dispatch =
            tracing::Dispatch::new(tracing_subscriber::registry().with(logs).with(layer));
        (dispatch, Telemetry { exporter }, failed)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = service;
        let failed = match export {
            Export::Nothing => None,
            Export::Otlp { .. } => {
                Some("this build has no OTLP exporter (feature `otlp`)".to_string())
            }
        };
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(logs));
        (dispatch, Telemetry::default(), failed)
    }
}

/// Whether the environment asks for OTLP trace export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtlpSetting {
    /// Not asked for (no endpoint), or switched off (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
    Off,
    /// Export over OTLP/gRPC.
    On,
    /// Asked for in a way Strata cannot honour: why (logged; the binary runs without exporting).
    Refused(String),
}

/// The OTLP setting from the variables `var` reads: on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set or `OTEL_TRACES_EXPORTER` names `otlp`; off when neither, or when
/// `OTEL_SDK_DISABLED` is `true` or `OTEL_TRACES_EXPORTER` is `none`; refused for an exporter other than
/// `otlp` or a protocol other than `grpc`.
pub fn otlp_setting(var: impl Fn(&str) -> Option<String>) -> OtlpSetting {
    let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return OtlpSetting::Off;
    }
    let asked = match set("OTEL_TRACES_EXPORTER") {
        Some(exporters) => {
            let names: Vec<String> = exporters
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .collect();
            if names.iter().any(|n| n == "none") {
                return OtlpSetting::Off;
            }
            if let Some(other) = names.iter().find(|n| *n != "otlp") {
                return OtlpSetting::Refused(format!(
                    "OTEL_TRACES_EXPORTER names \"{other}\"; Strata exports traces over OTLP only (otlp or none)"
                ));
            }
            true
        }
        None => {
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
                || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        }
    };
    if !asked {
        return OtlpSetting::Off;
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = set(variable) {
            if protocol.trim() != "grpc" {
                return OtlpSetting::Refused(format!(
                    "{variable}={protocol:?}; Strata exports OTLP over gRPC only (grpc)"
                ));
            }
            break;
        }
    }
    OtlpSetting::On
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
    use tracing_subscriber::filter::Targets;

    /// The exporter and the runtime its gRPC client runs on (a thread of its own, so that it works under any
    /// runtime or none, and a busy server's workers never delay an export).
    pub struct Exporter {
        provider: SdkTracerProvider,
        runtime: tokio::runtime::Runtime,
    }

    impl Exporter {
        /// Starts an OTLP/gRPC exporter configured by the environment (to `endpoint` if given), for `service`
        /// unless `OTEL_SERVICE_NAME` names another; sets the W3C propagator.
        pub fn start(
            service: &str,
            endpoint: Option<String>,
        ) -> Result<(Exporter, SdkTracer), String> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("strata-otlp")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the exporter's runtime: {e}"))?;
            // The channel is made inside the runtime, whose thread then drives it.
            let exporter = {
                let _inside = runtime.enter();
                let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                match endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint).build(),
                    None => builder.build(),
                }
                .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?
            };
            // One instance per process (the spec's `service.instance.id`), unless OTEL_RESOURCE_ATTRIBUTES
            // names one: a trace across an edge and a cloud agent shows two instances of one service.
            let mut resource = Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name(service.to_string());
            }
            let named = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
                .is_ok_and(|a| a.contains("service.instance.id="));
            if !named {
                resource = resource.with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    instance_id(),
                ));
            }
            let resource = resource.build();
            // The sampler comes from OTEL_TRACES_SAMPLER (parent-based, always on by default).
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let tracer = provider.tracer("strata");
            Ok((Exporter { provider, runtime }, tracer))
        }

        /// Exports what is left and stops.
        pub fn shutdown(self) {
            if let Err(e) = self.provider.shutdown() {
                eprintln!("warning: traces not exported at exit: {e}");
            }
            self.runtime.shutdown_background();
        }
    }

    /// This process among its service's: the host name and the process id.
    fn instance_id() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        format!("{host}-{}", std::process::id())
    }

    /// The spans exported: Strata's at `info` and above (the request path, planning, reconcile passes,
    /// store calls), not the libraries' underneath.
    pub fn spans() -> Targets {
        let info = tracing::Level::INFO;
        [
            "strata",
            "strata_proto",
            "strata_edge_agent",
            "strata_control_plane",
            "strata_device_sdk",
            "strata_runtime",
            "strata_cli",
            "strata_testbed",
        ]
        .into_iter()
        .fold(Targets::new(), |t, target| t.with_target(target, info))
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

    fn setting(vars: &[(&str, &str)]) -> OtlpSetting {
        otlp_setting(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn traces_are_exported_only_when_an_otlp_endpoint_or_exporter_is_asked_for() {
        assert_eq!(setting(&[]), OtlpSetting::Off);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(setting(&[endpoint]), OtlpSetting::On);
        assert_eq!(
            setting(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]),
            OtlpSetting::On
        );
        assert_eq!(
            setting(&[("OTEL_TRACES_EXPORTER", "otlp")]),
            OtlpSetting::On
        );
        assert_eq!(
            setting(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]),
            OtlpSetting::Off
        );
        assert_eq!(
            setting(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            OtlpSetting::Off
        );
        assert_eq!(
            setting(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]),
            OtlpSetting::Off
        );
    }

    #[test]
    fn an_exporter_or_protocol_strata_lacks_is_refused_with_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let OtlpSetting::Refused(why) = setting(&[("OTEL_TRACES_EXPORTER", "zipkin")]) else {
            panic!("zipkin refused")
        };
        assert!(
            why.contains("OTEL_TRACES_EXPORTER") && why.contains("zipkin"),
            "{why}"
        );
        let OtlpSetting::Refused(why) =
            setting(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
        else {
            panic!("http refused")
        };
        assert!(why.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{why}");
        // The traces-specific variable wins over the general one.
        assert_eq!(
            setting(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ]),
            OtlpSetting::On
        );
    }

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
