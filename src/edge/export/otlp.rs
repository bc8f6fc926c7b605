//! The OTLP sink of the export: each batch of export lines as one OTLP `ExportLogsServiceRequest`
//! over gRPC to an OpenTelemetry Collector (which routes it to Kafka, Loki, Elasticsearch or
//! object storage). The messages and client are the official ones, from `opentelemetry-proto`.
//!
//! Each log record's body is the export line itself (the same JSON as the JSON-lines sink, so a
//! Collector's file exporter gives back what `audit verify --export` reads), with the log name,
//! the sequence number, the leaf hash and the kind as attributes to route and search by.

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::transport::{Channel, Endpoint};

use crate::edge::export::ExportLine;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many bytes of log bodies per request: well under the 4 MiB a Collector's gRPC
/// receiver takes by default, however far behind the export is.
const MAX_REQUEST_BODY_BYTES: usize = 1 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a batch did not reach the Collector (it is sent again).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OtlpError {
    #[error("the OTLP endpoint {0:?} is not a URI")]
    Endpoint(String),
    #[error("connecting to the Collector: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("the Collector refused the batch: {0}")]
    Refused(String),
}

/// An OTLP/gRPC logs exporter to one endpoint, connected on first use and again after a failure.
pub(crate) struct OtlpSink {
    endpoint: String,
    client: Option<LogsServiceClient<Channel>>,
}

impl OtlpSink {
    pub(crate) fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            client: None,
        }
    }

    /// Sends `lines` of log `log`, in requests of at most [`MAX_REQUEST_BODY_BYTES`] of bodies;
    /// Ok once the Collector accepted every record (a failure sends the whole batch again).
    pub(crate) async fn send(&mut self, log: &str, lines: &[ExportLine]) -> Result<(), OtlpError> {
        let bodies: Vec<String> = lines
            .iter()
            .map(|line| serde_json::to_string(line).unwrap_or_default())
            .collect();
        let sizes: Vec<usize> = bodies.iter().map(String::len).collect();
        for range in requests(&sizes, MAX_REQUEST_BODY_BYTES) {
            self.send_request(log, &lines[range.clone()], &bodies[range])
                .await?;
        }
        Ok(())
    }

    async fn send_request(
        &mut self,
        log: &str,
        lines: &[ExportLine],
        bodies: &[String],
    ) -> Result<(), OtlpError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let endpoint = Endpoint::from_shared(self.endpoint.clone())
                    .map_err(|_| OtlpError::Endpoint(self.endpoint.clone()))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT);
                let channel = endpoint.connect().await.map_err(OtlpError::Connect)?;
                self.client.insert(LogsServiceClient::new(channel))
            }
        };
        let result = client.export(request(log, lines, bodies)).await;
        let response = match result {
            Ok(response) => response.into_inner(),
            Err(status) => {
                self.client = None;
                return Err(OtlpError::Refused(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
        };
        match response.partial_success {
            Some(partial) if partial.rejected_log_records > 0 => Err(OtlpError::Refused(format!(
                "{} of {} records rejected: {}",
                partial.rejected_log_records,
                lines.len(),
                partial.error_message
            ))),
            _ => Ok(()),
        }
    }
}

/// Consecutive ranges of bodies, each at most `max` bytes (a larger body alone).
fn requests(sizes: &[usize], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start + 1;
        let mut bytes = sizes[start];
        while end < sizes.len() && bytes + sizes[end] <= max {
            bytes += sizes[end];
            end += 1;
        }
        ranges.push(start..end);
        start = end;
    }
    ranges
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// One request: the log as the resource, one OTLP log record per line.
fn request(log: &str, lines: &[ExportLine], bodies: &[String]) -> ExportLogsServiceRequest {
    let observed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let log_records = lines
        .iter()
        .zip(bodies)
        .map(|(line, body)| {
            let mut attributes = vec![text("meshroot.log", &line.log)];
            let kind = match (&line.checkpoint, &line.pruned_leaf) {
                (Some(_), _) => "checkpoint",
                (None, Some(_)) => "pruned",
                (None, None) => "record",
            };
            attributes.push(text("meshroot.kind", kind));
            if let Some(sequence) = line.sequence {
                attributes.push(KeyValue {
                    key: "meshroot.sequence".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(
                            i64::try_from(sequence).unwrap_or(i64::MAX),
                        )),
                    }),
                    ..KeyValue::default()
                });
            }
            if let Some(hash) = &line.leaf_hash {
                attributes.push(text("meshroot.leaf_hash", hash));
            }
            LogRecord {
                observed_time_unix_nano: observed,
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(body.clone())),
                }),
                attributes,
                event_name: format!("meshroot.audit.{kind}"),
                ..LogRecord::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![text("service.name", "meshroot"), text("meshroot.log", log)],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "meshroot.audit".into(),
                    ..InstrumentationScope::default()
                }),
                log_records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_goes_out_in_requests_under_the_size_bound() {
        assert_eq!(requests(&[], 10), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(requests(&[4, 4, 4, 4, 4], 10), [0..2, 2..4, 4..5]);
        // A body over the bound still goes, alone.
        assert_eq!(requests(&[3, 12, 3], 10), [0..1, 1..2, 2..3]);
        let sizes = vec![1_500; 4096];
        let ranges = requests(&sizes, MAX_REQUEST_BODY_BYTES);
        assert!(ranges
            .iter()
            .all(|r| r.len() * 1_500 <= MAX_REQUEST_BODY_BYTES));
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 4096);
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    }
}
