//! Structured logs on standard error, and spans over OTLP when asked for.

pub mod otlp;
pub(crate) mod trace_context;

use tracing_subscriber::{
    EnvFilter, Layer, filter::filter_fn, layer::SubscriberExt, util::SubscriberInitExt,
};

pub use otlp::OtlpConfig;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Pretty,
}

impl LogFormat {
    /// `pretty` for a person at a terminal, `json` for everything else
    /// (compose, CI, log collectors).
    pub fn for_stderr() -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Self::Pretty
        } else {
            Self::Json
        }
    }
}

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

/// `error` and its causes, outermost first, joined by `: `; a cause that
/// only repeats the text before it (as some libraries' wrappers do) is left
/// out.
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut last = chain.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !last.ends_with(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn a_cause_that_repeats_its_wrapper_is_said_once() {
        let error = Layer {
            text: "health check failed",
            source: Some(Box::new(Layer {
                text: "tcp connect error",
                source: Some(Box::new(Layer {
                    text: "tcp connect error",
                    source: Some(Box::new(Layer {
                        text: "Connection refused (os error 111)",
                        source: None,
                    })),
                })),
            })),
        };
        assert_eq!(
            cause_chain(&error),
            "health check failed: tcp connect error: Connection refused (os error 111)"
        );
    }
}
