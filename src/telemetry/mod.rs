//! Logs and traces.
//!
//! - Logs: `tracing` with JSON lines by default ([`json`], formatted directly), text on
//!   request, to stderr. Without traces, the only spans are the requests' (an RPC's: it has
//!   `rpc.system`): the others (`verify`, `query`, `cloud_check`) exist for traces, and a
//!   callsite no layer wants costs nothing, so a login logged at `info` pays for one span.
//! - Traces: with `--otlp-endpoint`, spans (the RPC, `verify`, `query`) go to an OTLP/gRPC
//!   collector through a batch exporter, so a slow or dead collector never delays a request:
//!   spans are queued and dropped when the queue is full. W3C `traceparent` in the request
//!   metadata becomes the RPC span's parent.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

mod json;

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes queued spans.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (bounded by the exporter's own timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

/// Installs the global subscriber (once per process; later calls only return a handle).
/// Must run inside a tokio runtime when `otlp_endpoint` is set.
pub fn init(format: LogFormat, filter: &str, otlp_endpoint: Option<&str>) -> Telemetry {
    // Third-party chatter stays out of the operator's log unless asked for by name:
    // PostgreSQL NOTICEs (e.g. refinery's "relation … already exists, skipping") arrive through
    // tokio-postgres at INFO, and refinery logs its source paths.
    let quiet = "tokio_postgres=warn,refinery=warn,refinery_core=warn";
    let directives = format!("{quiet},{filter}");
    // Targets and levels only (the default `info`, or `agent_auth=debug`): a `Targets` filter,
    // decided once per callsite. `EnvFilter` only for what needs it (span and field
    // directives), since it also looks each span up on every enter and exit.
    let (targets, filter) = match directives.parse::<tracing_subscriber::filter::Targets>() {
        Ok(targets) => (Some(targets), None),
        Err(_) => (
            None,
            Some(
                tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(format!("{quiet},info"))
                }),
            ),
        ),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match format {
        LogFormat::Json => json::JsonLines::new(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = otlp_endpoint.and_then(tracer_provider);
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("agent-auth")));
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // Without traces, spans other than a request's are off at their callsites (interest
    // `never`, cached): logs show a request's span and nothing needs the others.
    let request_spans_only = provider.is_none().then(|| {
        tracing_subscriber::filter::filter_fn(|metadata| {
            !metadata.is_span() || metadata.fields().field("rpc.system").is_some()
        })
    });
    let exporting = traces.is_some();
    let installed = tracing_subscriber::registry()
        .with(targets)
        .with(filter)
        .with(request_spans_only)
        .with(logs)
        .with(traces)
        .try_init();
    if installed.is_ok() && exporting {
        TRACES_EXPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Telemetry { provider }
}

static TRACES_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the process's subscriber exports traces (`--otlp-endpoint`): only then is a
/// caller's trace context worth reading (without it, a span's parent goes nowhere).
pub fn traces_exported() -> bool {
    TRACES_EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn tracer_provider(endpoint: &str) -> Option<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(3))
        .build();
    match exporter {
        Ok(exporter) => Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("agent-auth")
                        .build(),
                )
                .build(),
        ),
        Err(e) => {
            eprintln!("agent-auth: traces disabled: cannot build the OTLP exporter: {e}");
            None
        }
    }
}
