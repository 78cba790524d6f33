//! `/metrics`: the server's metrics in the Prometheus text format.
//!
//! - `http_requests_total{method, operation, status}`: requests answered.
//! - `http_request_duration_seconds{method, operation}`: how long they took (histogram).
//! - `db_pool_connections{state}`: the database pool's `idle` and `in_use` connections, read
//!   when scraped.
//! - `messaging_messages_published_total`: scheduled messages the publisher moved into their
//!   channels (recorded by the service).
//! - `messaging_events_written_total`, `messaging_events_delivered_total`: events this process
//!   committed, and handed to its streams and long-polls; `messaging_event_streams_open`,
//!   `messaging_event_long_polls_waiting`: its open streams and waiting long-polls (recorded by
//!   the service's event feed).
//! - `webhook_attempts_total{outcome}`: webhook delivery attempts by outcome (`succeeded`,
//!   `http_error`, `timeout`, `connect_error`, `refused`), and
//!   `webhook_attempt_duration_seconds` how long they took (histogram), both per process.
//! - `webhook_deliveries_created_total`: deliveries queued (one per event and matching endpoint);
//!   `webhook_deliveries_completed_total{status}`: deliveries that ended `succeeded` or `failed`.
//! - `webhook_deliveries_pending`: deliveries waiting for an attempt or a retry, in the whole
//!   database (every replica's), read when scraped.
//!
//! Every series but the `http_*` ones is in the first scrape (the publication counter at 0);
//! an `http_*` series appears with the first request of its label set.
//! - `rate_limit_redis_errors_total`: rate-limit calls to Redis that failed and fell back.
//!
//! `operation` is the spec's operationId, the name the server gives its other routes
//! (`/healthz`, `/docs`, …), `unmatched` for a path or method no route has (404, 405), or `none`
//! when the middleware answered before any operation ran (rate limits, size limits, a panic):
//! never a raw path, so the set of series stays small whatever clients request.

use std::{sync::OnceLock, time::Duration};

use messaging_service::{MessagingService, PUBLISHED_MESSAGES_METRIC, webhook_metrics};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::{
    Response,
    http::{Method, StatusCode, header},
};

const REQUESTS: &str = "http_requests_total";
const DURATION: &str = "http_request_duration_seconds";
const POOL: &str = "db_pool_connections";
const WEBHOOK_BACKLOG: &str = "webhook_deliveries_pending";

/// Webhook attempt buckets, in seconds: a local receiver up to the 10 s timeout.
const WEBHOOK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Latency buckets, in seconds: sub-millisecond reads up to slow writes.
const BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often recorded histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide recorder, installed on first use (every app in a process shares it).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(webhook_metrics::ATTEMPT_DURATION_METRIC.to_owned()),
                WEBHOOK_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will stay empty");
        }
        metrics::describe_counter!(REQUESTS, "HTTP requests answered.");
        metrics::describe_histogram!(
            DURATION,
            metrics::Unit::Seconds,
            "Time to answer an HTTP request."
        );
        metrics::describe_gauge!(POOL, "Database pool connections by state.");
        metrics::describe_counter!(
            PUBLISHED_MESSAGES_METRIC,
            "Scheduled messages published to their channels."
        );
        metrics::describe_counter!(
            crate::rate_limit::REDIS_ERRORS,
            "Rate-limit calls to Redis that failed and fell back to per-process budgets."
        );
        metrics::describe_counter!(
            "messaging_events_written_total",
            "Events committed by this process."
        );
        metrics::describe_counter!(
            "messaging_events_delivered_total",
            "Events handed to this process's streams and long-polls."
        );
        metrics::describe_gauge!(
            "messaging_event_streams_open",
            "Event streams open on this process."
        );
        metrics::describe_gauge!(
            "messaging_event_long_polls_waiting",
            "Long-polls of the event feed waiting on this process."
        );
        metrics::describe_counter!(
            webhook_metrics::ATTEMPTS_METRIC,
            "Webhook delivery attempts by outcome."
        );
        metrics::describe_histogram!(
            webhook_metrics::ATTEMPT_DURATION_METRIC,
            metrics::Unit::Seconds,
            "Time a webhook delivery attempt took."
        );
        metrics::describe_counter!(
            webhook_metrics::CREATED_METRIC,
            "Webhook deliveries queued, one per event and matching endpoint."
        );
        metrics::describe_counter!(
            webhook_metrics::COMPLETED_METRIC,
            "Webhook deliveries that succeeded or failed for good."
        );
        metrics::describe_gauge!(
            WEBHOOK_BACKLOG,
            "Webhook deliveries waiting for an attempt or a retry."
        );
        // Every unlabelled series exists from the start, at 0, so a scrape (and an alert on its
        // rate) sees it before the first publication, event or delivery. The pool gauges and
        // the webhook backlog are set at every scrape.
        for counter in [
            PUBLISHED_MESSAGES_METRIC,
            "messaging_events_written_total",
            "messaging_events_delivered_total",
            webhook_metrics::CREATED_METRIC,
            crate::rate_limit::REDIS_ERRORS,
        ] {
            metrics::counter!(counter).increment(0);
        }
        for gauge in [
            "messaging_event_streams_open",
            "messaging_event_long_polls_waiting",
        ] {
            metrics::gauge!(gauge).increment(0.0);
        }
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            })
            .expect("the metrics upkeep thread starts");
        handle
    })
}

/// Installs the recorder, so metrics recorded before the first scrape are kept.
pub fn install() {
    handle();
}

/// Records one answered request; `operation` is the name of the route that answered it.
pub fn record_request(
    method: &Method,
    operation: Option<&'static str>,
    status: StatusCode,
    elapsed: Duration,
) {
    let operation = operation.unwrap_or_else(|| unnamed_label(status));
    let method = method_label(method);
    metrics::counter!(REQUESTS, "method" => method, "operation" => operation, "status" => status.as_str().to_owned())
        .increment(1);
    metrics::histogram!(DURATION, "method" => method, "operation" => operation)
        .record(elapsed.as_secs_f64());
}

/// The scrape: pool gauges refreshed, then every metric in the text format.
pub async fn render(service: MessagingService) -> Response {
    let pool = service.pool_status();
    metrics::gauge!(POOL, "state" => "idle").set(pool.idle as f64);
    metrics::gauge!(POOL, "state" => "in_use").set(pool.in_use as f64);
    match service.webhook_backlog().await {
        Ok(pending) => metrics::gauge!(WEBHOOK_BACKLOG).set(pending as f64),
        Err(err) => tracing::warn!(error = %err, "cannot count pending webhook deliveries"),
    }
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(handle().render())
}

/// The label of a response that no named route produced.
fn unnamed_label(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "unmatched",
        _ => "none",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_of_no_route_are_unmatched_or_refused() {
        assert_eq!(unnamed_label(StatusCode::NOT_FOUND), "unmatched");
        assert_eq!(unnamed_label(StatusCode::METHOD_NOT_ALLOWED), "unmatched");
        assert_eq!(unnamed_label(StatusCode::TOO_MANY_REQUESTS), "none");
        assert_eq!(unnamed_label(StatusCode::PAYLOAD_TOO_LARGE), "none");
    }
}
