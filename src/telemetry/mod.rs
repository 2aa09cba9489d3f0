//! Structured logs on standard error, and spans over OTLP when asked for.

pub mod otlp;
pub mod trace_context;

use tracing_subscriber::{
    EnvFilter, Layer, filter::filter_fn, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::LogFormat;

pub use otlp::OtlpConfig;

/// Installs the global subscriber: log lines in `format` at the levels of
/// `RUST_LOG` (default `info`), and with `otlp`, the exported spans
/// whatever `RUST_LOG` says. Call once, first thing, inside the runtime.
pub fn init(format: LogFormat, otlp: Option<OtlpConfig>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let lines = match format {
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => lines.boxed(),
    };
    let spans = otlp.map(|config| {
        otlp::layer(config).with_filter(filter_fn(|metadata| {
            otlp::EXPORTED.contains(&metadata.name())
        }))
    });
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .init();
}

/// `error` and its causes, outermost first, joined by `: `.
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
