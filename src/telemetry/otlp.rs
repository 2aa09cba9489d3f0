//! Spans over OTLP/gRPC: one SERVER span per call, with child spans for the
//! wait for a pooled connection and for the statement, joined to the
//! caller's trace when it sends a W3C `traceparent`.
//!
//! A `tracing` layer turns the spans named in [`EXPORTED`] into OTLP spans
//! as they close and hands them to a background exporter, which sends them
//! in batches; when the exporter falls behind, spans are dropped rather than
//! slowing calls down. The OTLP messages are declared here (the few fields
//! the service sends, with the numbers of `opentelemetry-proto`), so that
//! tracing adds no dependency.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

use super::trace_context::RemoteParent;

/// The call span ([`SERVER_SPAN`]) and the store's child spans.
pub(crate) const EXPORTED: [&str; 3] = [SERVER_SPAN, "db.pool_wait", "db.statement"];
/// Name of the span every unary call runs in (see `grpc::service`).
pub(crate) const SERVER_SPAN: &str = "rpc";
const SERVICE: &str = "batchhistory.v1.BatchHistory";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Spans waiting for the exporter; past this, new ones are dropped.
const QUEUE: usize = 8_192;
/// Spans per export request, and the longest a span waits to be sent.
const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Where and as what to export, from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub(crate) endpoint: String,
    /// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`,
    /// else `batch-history`.
    pub(crate) service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `key=value` pairs.
    pub(crate) resource: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, sent as gRPC metadata.
    pub(crate) headers: Vec<(String, String)>,
}

/// Why the `OTEL_*` variables cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OtlpConfigError {
    #[error("{name} is not key=value pairs separated by commas")]
    Pairs { name: &'static str },
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL={0}: only grpc is supported; point \
         OTEL_EXPORTER_OTLP_ENDPOINT at a collector's gRPC port (4317)"
    )]
    Protocol(String),
    #[error("{0} must be an http:// or https:// URL, e.g. http://localhost:4317")]
    Endpoint(&'static str),
}

impl OtlpConfig {
    /// The exporter's settings, or `None` when no endpoint is set (or
    /// `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` turn it off).
    /// `var` looks a variable up.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, OtlpConfigError> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
        {
            return Ok(None);
        }
        let (name, endpoint) = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(endpoint), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            (None, Some(endpoint)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            (None, None) => return Ok(None),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(OtlpConfigError::Endpoint(name));
        }
        if let Some(protocol) = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .filter(|protocol| protocol != "grpc")
        {
            return Err(OtlpConfigError::Protocol(protocol));
        }
        let resource = pairs(var("OTEL_RESOURCE_ATTRIBUTES"), "OTEL_RESOURCE_ATTRIBUTES")?;
        let service_name = var("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource
                    .iter()
                    .find(|(key, _)| key == "service.name")
                    .map(|(_, value)| value.clone())
            })
            .unwrap_or_else(|| "batch-history".into());
        Ok(Some(Self {
            endpoint,
            service_name,
            resource,
            headers: pairs(
                var("OTEL_EXPORTER_OTLP_HEADERS"),
                "OTEL_EXPORTER_OTLP_HEADERS",
            )?,
        }))
    }
}

/// `k1=v1,k2=v2`, values percent-decoded as the specification asks.
fn pairs(
    text: Option<String>,
    name: &'static str,
) -> Result<Vec<(String, String)>, OtlpConfigError> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or(OtlpConfigError::Pairs { name })?;
            Ok((key.trim().to_owned(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the layer sends the exporter.
enum Message {
    Span(Box<proto::Span>),
    /// Send everything queued, then answer.
    Flush(oneshot::Sender<()>),
}

static EXPORTER: OnceLock<mpsc::Sender<Message>> = OnceLock::new();

/// Starts the exporter (on the current Tokio runtime) and returns the layer
/// that feeds it.
pub(crate) fn layer<S>(config: OtlpConfig) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let (sender, receiver) = mpsc::channel(QUEUE);
    let _ = EXPORTER.set(sender.clone());
    tokio::spawn(export(config, receiver));
    OtlpLayer {
        sender,
        ids: IdSource::new(),
    }
}

/// Sends the spans still queued, waiting at most `within`.
pub async fn flush(within: Duration) {
    let Some(sender) = EXPORTER.get() else {
        return;
    };
    let (done, flushed) = oneshot::channel();
    if sender.send(Message::Flush(done)).await.is_ok() {
        let _ = tokio::time::timeout(within, flushed).await;
    }
}

/// The exporter: batches spans and sends them, dropping a batch the
/// collector does not take (with a warning, at most one a minute).
async fn export(config: OtlpConfig, mut queue: mpsc::Receiver<Message>) {
    let resource = proto::Resource {
        attributes: std::iter::once(("service.name".to_owned(), config.service_name.clone()))
            .chain(
                config
                    .resource
                    .iter()
                    .filter(|(key, _)| key != "service.name")
                    .cloned(),
            )
            .map(|(key, value)| proto::KeyValue::string(key, value))
            .collect(),
    };
    let channel = match tonic::transport::Endpoint::from_shared(config.endpoint.clone()) {
        Ok(endpoint) => endpoint.timeout(Duration::from_secs(10)).connect_lazy(),
        Err(error) => {
            tracing::warn!(%error, "OTLP endpoint unusable; spans are not exported");
            return;
        }
    };
    let mut client = tonic::client::Grpc::new(channel);
    let mut batch = Vec::new();
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let message = tokio::time::timeout(BATCH_DELAY, queue.recv()).await;
        let flushed = match message {
            Ok(Some(Message::Span(span))) => {
                batch.push(*span);
                if batch.len() < BATCH {
                    continue;
                }
                None
            }
            Ok(Some(Message::Flush(done))) => Some(done),
            Ok(None) => return,
            Err(_elapsed) => None,
        };
        while let Ok(Message::Span(span)) = queue.try_recv() {
            batch.push(*span);
        }
        if !batch.is_empty() {
            let request = proto::ExportTraceServiceRequest {
                resource_spans: vec![proto::ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![proto::ScopeSpans {
                        scope: Some(proto::InstrumentationScope {
                            name: "batch-history".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                        }),
                        spans: std::mem::take(&mut batch),
                    }],
                }],
            };
            if let Err(error) = send(&mut client, &config.headers, request).await
                && last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
            {
                last_warning = Some(tokio::time::Instant::now());
                tracing::warn!(error = %error, "could not export spans; dropping them");
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

async fn send(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    headers: &[(String, String)],
    request: proto::ExportTraceServiceRequest,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    client.ready().await?;
    let mut request = tonic::Request::new(request);
    for (key, value) in headers {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
    let codec = tonic_prost::ProstCodec::<
        proto::ExportTraceServiceRequest,
        proto::ExportTraceServiceResponse,
    >::default();
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(EXPORT_PATH),
            codec,
        )
        .await?;
    Ok(())
}

/// Turns exported `tracing` spans into OTLP spans.
struct OtlpLayer {
    sender: mpsc::Sender<Message>,
    ids: IdSource,
}

/// The OTLP span of an open `tracing` span, in its extensions.
struct Recording(proto::Span);

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let name = attrs.metadata().name();
        if !EXPORTED.contains(&name) {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        // A child joins its parent's trace; a call joins its caller's, or
        // starts one. Store spans outside any call are not exported.
        let parent = span.parent().and_then(|parent| {
            let extensions = parent.extensions();
            extensions
                .get::<Recording>()
                .map(|Recording(span)| (span.trace_id.clone(), span.span_id.clone()))
        });
        let (trace_id, parent_span_id, kind) = match (name, parent) {
            (SERVER_SPAN, _) => match fields.traceparent.as_deref().and_then(RemoteParent::parse) {
                // Parent-based sampling, OpenTelemetry's default: a caller
                // that does not record its trace does not get ours.
                Some(remote) if !remote.sampled => return,
                Some(remote) => (
                    remote.trace_id.to_vec(),
                    remote.span_id.to_vec(),
                    proto::SPAN_KIND_SERVER,
                ),
                None => (
                    self.ids.trace_id().to_vec(),
                    Vec::new(),
                    proto::SPAN_KIND_SERVER,
                ),
            },
            (_, Some((trace_id, parent_id))) => (trace_id, parent_id, proto::SPAN_KIND_INTERNAL),
            (_, None) => return,
        };
        let mut attributes = fields.attributes;
        if name == SERVER_SPAN {
            attributes.push(proto::KeyValue::string("rpc.system", "grpc"));
            attributes.push(proto::KeyValue::string("rpc.service", SERVICE));
        } else {
            attributes.push(proto::KeyValue::string("db.system", "postgresql"));
        }
        let span_name = match (&fields.method, name) {
            (Some(method), SERVER_SPAN) => format!("{SERVICE}/{method}"),
            _ => name.to_owned(),
        };
        span.extensions_mut().insert(Recording(proto::Span {
            trace_id,
            span_id: self.ids.span_id().to_vec(),
            trace_state: fields.tracestate.unwrap_or_default(),
            parent_span_id,
            name: span_name,
            kind,
            start_time_unix_nano: unix_nanos(),
            end_time_unix_nano: 0,
            attributes,
            status: None,
        }));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(Recording(recording)) = extensions.get_mut::<Recording>() else {
            return;
        };
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(code) = fields.code {
            // The codes that mean the server failed (OpenTelemetry's gRPC
            // conventions); a caller's mistake leaves the status unset.
            const SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];
            if SERVER_ERRORS.contains(&code) {
                recording.status = Some(proto::Status {
                    message: String::new(),
                    code: proto::STATUS_CODE_ERROR,
                });
            }
        }
        recording.attributes.extend(fields.attributes);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(Recording(mut span)) = span.extensions_mut().remove::<Recording>() else {
            return;
        };
        span.end_time_unix_nano = unix_nanos();
        // Full: drop the span rather than slow the call down.
        let _ = self.sender.try_send(Message::Span(Box::new(span)));
    }
}

/// The fields of an exported span that become OTLP attributes, and those
/// that steer it.
#[derive(Default)]
struct Fields {
    attributes: Vec<proto::KeyValue>,
    method: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    code: Option<i64>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_text(field, value.to_owned());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "code" {
            self.code = Some(value);
            self.attributes
                .push(proto::KeyValue::int("rpc.grpc.status_code", value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_text(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record_text(&mut self, field: &Field, value: String) {
        match field.name() {
            "method" => {
                self.attributes
                    .push(proto::KeyValue::string("rpc.method", value.clone()));
                self.method = Some(value);
            }
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value),
            "request_id" => self
                .attributes
                .push(proto::KeyValue::string("batch_history.request_id", value)),
            "batch_id" => self
                .attributes
                .push(proto::KeyValue::string("batch_history.batch_id", value)),
            _ => {}
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// Random-looking, unique span and trace ids without a system call each:
/// a counter from a random start, mixed by SplitMix64.
struct IdSource {
    next: AtomicU64,
}

impl IdSource {
    fn new() -> Self {
        let mut seed = [0; 8];
        let _ = getrandom::fill(&mut seed);
        Self {
            next: AtomicU64::new(u64::from_le_bytes(seed)),
        }
    }

    fn draw(&self) -> u64 {
        let mut z = self
            .next
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    }

    fn span_id(&self) -> [u8; 8] {
        self.draw().to_be_bytes()
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.draw().to_be_bytes());
        id[8..].copy_from_slice(&self.draw().to_be_bytes());
        id
    }
}

/// The OTLP messages the exporter sends: the fields it uses, numbered as in
/// `opentelemetry-proto` (`collector/trace/v1`, `trace/v1`, `common/v1`,
/// `resource/v1`).
mod proto {
    pub(crate) const SPAN_KIND_INTERNAL: i32 = 1;
    pub(crate) const SPAN_KIND_SERVER: i32 = 2;
    pub(crate) const STATUS_CODE_ERROR: i32 = 2;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub(crate) resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ExportTraceServiceResponse {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub(crate) resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub(crate) attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub(crate) scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub(crate) name: String,
        #[prost(string, tag = "2")]
        pub(crate) version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(crate) span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub(crate) trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub(crate) parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub(crate) name: String,
        #[prost(int32, tag = "6")]
        pub(crate) kind: i32,
        #[prost(fixed64, tag = "7")]
        pub(crate) start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub(crate) end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub(crate) attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub(crate) status: Option<Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Status {
        #[prost(string, tag = "2")]
        pub(crate) message: String,
        #[prost(int32, tag = "3")]
        pub(crate) code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct KeyValue {
        #[prost(string, tag = "1")]
        pub(crate) key: String,
        #[prost(message, optional, tag = "2")]
        pub(crate) value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 3")]
        pub(crate) value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(int64, tag = "3")]
        Int(i64),
    }

    impl KeyValue {
        pub(crate) fn string(key: impl Into<String>, value: impl Into<String>) -> Self {
            Self {
                key: key.into(),
                value: Some(AnyValue {
                    value: Some(Value::String(value.into())),
                }),
            }
        }

        pub(crate) fn int(key: impl Into<String>, value: i64) -> Self {
            Self {
                key: key.into(),
                value: Some(AnyValue {
                    value: Some(Value::Int(value)),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn the_standard_variables_configure_the_exporter() {
        assert_eq!(OtlpConfig::from_env(env(&[])).unwrap(), None);
        let config = OtlpConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=bh,deployment.environment=prod%2Ceu",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.endpoint, "http://collector:4317");
        assert_eq!(config.service_name, "bh");
        assert_eq!(
            config.resource[1],
            ("deployment.environment".into(), "prod,eu".into())
        );
        assert_eq!(config.headers, [("x-api-key".into(), "abc".into())]);
        assert_eq!(
            OtlpConfig::from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ]))
            .unwrap(),
            None
        );
    }

    #[test]
    fn unusable_settings_say_what_to_fix() {
        let protocol = OtlpConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap_err();
        assert!(protocol.to_string().contains("only grpc"), "{protocol}");
        let endpoint =
            OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]))
                .unwrap_err();
        assert!(endpoint.to_string().contains("http://"), "{endpoint}");
    }

    #[test]
    fn ids_are_unique_and_never_zero() {
        let ids = IdSource::new();
        let drawn: std::collections::HashSet<_> = (0..10_000).map(|_| ids.span_id()).collect();
        assert_eq!(drawn.len(), 10_000);
        assert!(!drawn.contains(&[0; 8]));
    }
}
