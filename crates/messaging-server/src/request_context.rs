//! Per-request context, outermost in the app: the request id (taken from a valid
//! `x-request-id` or a fresh UUID v7), the tracing span, the access log line and the request
//! metrics, the conversion of every remaining error into problem+json, and the `request_id`
//! stamped into problem bodies.

use std::time::Instant;

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, header},
};
use poem_openapi::OperationId;
use serde_json::Value;
use tracing::Instrument;

use crate::{
    idempotency::REPLAYED_HEADER,
    problem::{PROBLEM_JSON, response_for_error},
};

/// The header that carries the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest incoming request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of the current request, also in request extensions for handlers that want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The caller's id when it is 1 to 128 visible ASCII characters, else a new UUID v7.
    pub fn from_request(req: &Request) -> Self {
        req.header(REQUEST_ID_HEADER)
            .filter(|id| is_valid_request_id(id))
            .map(|id| Self(id.to_owned()))
            .unwrap_or_else(|| Self(uuid::Uuid::now_v7().to_string()))
    }
}

fn is_valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Runs `inner` for `req` inside the request's span and returns a response in every case.
pub async fn handle<E: Endpoint>(inner: &E, mut req: Request) -> poem::Result<Response> {
    let request_id = RequestId::from_request(&req);
    req.extensions_mut().insert(request_id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %request_id.0);
    let started = Instant::now();

    let response = async {
        let (response, operation) = match inner.call(req).await {
            Ok(output) => {
                let response = output.into_response();
                let operation = response.data::<OperationId>().map(|id| id.0);
                (response, operation)
            }
            Err(err) => {
                let operation = err.data::<OperationId>().map(|id| id.0);
                (response_for_error(err, &path), operation)
            }
        };
        let response = stamp_request_id(response, &request_id).await;
        let elapsed = started.elapsed();
        crate::metrics::record_request(&method, operation, response.status(), elapsed);
        tracing::info!(
            %method,
            %path,
            operation,
            status = response.status().as_u16(),
            latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            "request finished"
        );
        response
    }
    .instrument(span)
    .await;
    Ok(response)
}

/// Sets `x-request-id` and, on a problem+json body, its `request_id` field.
async fn stamp_request_id(mut response: Response, request_id: &RequestId) -> Response {
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    // A replayed answer is the first one byte for byte, with the first request's id.
    if !is_problem_json(&response) || response.headers().contains_key(REPLAYED_HEADER) {
        return response;
    }
    let body = match response.take_body().into_bytes().await {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "could not read a problem body");
            return response;
        }
    };
    response.set_body(with_request_id(&body, request_id));
    response
}

fn is_problem_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON))
}

/// The body with `request_id` set, or the body unchanged when it is not a JSON object.
pub(crate) fn with_request_id(body: &[u8], request_id: &RequestId) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut problem)) => {
            problem.insert("request_id".to_owned(), Value::String(request_id.0.clone()));
            serde_json::to_vec(&problem).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_visible_ascii() {
        assert!(is_valid_request_id("abc-123"));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id("has space"));
        assert!(!is_valid_request_id("é"));
        assert!(!is_valid_request_id(&"a".repeat(129)));
        assert!(is_valid_request_id(&"a".repeat(128)));
    }

    #[test]
    fn request_id_is_written_into_problem_bodies() {
        let id = RequestId("req-1".to_owned());
        let body = with_request_id(br#"{"code":"not_found","request_id":null}"#, &id);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["request_id"], "req-1");
        assert_eq!(value["code"], "not_found");
        assert_eq!(with_request_id(b"not json", &id), b"not json");
    }
}
