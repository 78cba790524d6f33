//! Safe retries at the edge: the one entry point of `Idempotency-Key`. Every POST and PATCH
//! under `/v1/messaging/` and `/v1/webhooks/` that carries the header goes through [`handle`];
//! operations know nothing of it (storage: `messaging_service::idempotency`).
//!
//! A request with a key is claimed for its caller (store, mode, and customer, acting user or
//! the store itself) before it runs. A retry of a finished request gets the stored answer,
//! status and body byte for byte, with `Idempotent-Replayed: true`, and runs nothing; the same
//! key on a different request (method, path with query, body) is 422; a retry while the first
//! still runs is 409. The operation's write commits together with its answer; a 5xx is not
//! kept. Requests whose credentials do not resolve, and requests the generated layer refuses
//! before the operation runs (malformed parameters or body), write nothing and are not kept:
//! their retries get the same answer from the same checks.

use std::sync::Arc;

use messaging_service::{
    MessagingService,
    idempotency::{self, Answer, Begin, FinishError},
};
use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};

use crate::{
    body_limit::LimitedBody,
    problem::{PROBLEM_JSON, Problem},
    request_context::{RequestId, with_request_id},
};

/// The request header that names a logical operation.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The response header that marks a stored answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Path prefixes whose POST and PATCH operations take `Idempotency-Key`.
const COVERED_PREFIXES: [&str; 2] = ["/v1/messaging/", "/v1/webhooks/"];

/// Whether `req` is a write this layer covers.
fn is_covered(req: &Request) -> bool {
    (req.method() == Method::POST || req.method() == Method::PATCH)
        && COVERED_PREFIXES
            .iter()
            .any(|prefix| req.uri().path().starts_with(prefix))
}

/// Runs `req` through `inner`, idempotently when it carries a key.
pub async fn handle<E: Endpoint>(
    service: &MessagingService,
    inner: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    let pass = |inner: Arc<E>, req: Request| async move {
        inner.call(req).await.map(IntoResponse::into_response)
    };
    if !is_covered(&req) {
        return pass(inner, req).await;
    }
    let Some(raw_key) = req.headers().get(IDEMPOTENCY_KEY_HEADER) else {
        return pass(inner, req).await;
    };
    let Some(key) = raw_key
        .to_str()
        .ok()
        .filter(|key| idempotency::is_valid_key(key))
        .map(str::to_owned)
    else {
        return Ok(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
        )
        .into_response());
    };
    let text_of = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let api_key = text_of(header::AUTHORIZATION.as_str())
        .and_then(|value| {
            value
                .get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| &value[7..])
        })
        .unwrap_or_default();
    let Some(scope) = service
        .idempotency_scope(api_key, text_of("x-auth-token"), text_of("x-acting-user"))
        .await
    else {
        return pass(inner, req).await;
    };
    let body = req
        .extensions()
        .get::<LimitedBody>()
        .map(|body| body.0.clone())
        .unwrap_or_default();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    let fingerprint = idempotency::fingerprint(req.method().as_str(), target, &body);
    let claim = match service.begin_idempotent(&scope, &key, &fingerprint).await {
        Ok(Begin::Run(claim)) => claim,
        Ok(Begin::Replay(answer)) => return Ok(replay(answer)),
        Ok(Begin::Reused) => return Ok(reused()),
        Ok(Begin::InUse) => return Ok(in_use()),
        Err(err) => return Ok(internal(&err)),
    };
    let request_id = req.extensions().get::<RequestId>().cloned();
    let mut response = match claim.run(inner.call(req)).await {
        Ok(output) => output.into_response(),
        // Refused before the operation ran: nothing was written. The key is released before
        // the answer leaves, so a corrected request may reuse it at once; the error becomes
        // problem+json in the request context.
        Err(err) => {
            claim.abandon().await;
            return Err(err);
        }
    };
    let body = match response.take_body().into_bytes().await {
        Ok(body) => body,
        Err(err) => return Ok(internal(&err)),
    };
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A problem is stored as the client sees it, with the first request's id.
    let body = match (&request_id, &content_type) {
        (Some(id), Some(ct)) if ct.starts_with(PROBLEM_JSON) => with_request_id(&body, id).into(),
        _ => body,
    };
    let answer = Answer {
        status: response.status().as_u16(),
        content_type,
        body: body.to_vec(),
    };
    match claim.finish(&answer).await {
        Ok(()) => {
            response.set_body(body);
            Ok(response)
        }
        Err(FinishError::Lost) => Ok(in_use()),
        Err(FinishError::Database(err)) => Ok(internal(&err)),
    }
}

/// The stored answer again, marked as such.
fn replay(answer: Answer) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK))
        .header(REPLAYED_HEADER, HeaderValue::from_static("true"));
    if let Some(content_type) = answer
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
    {
        response = response.header(header::CONTENT_TYPE, content_type);
    }
    response.body(answer.body)
}

fn reused() -> Response {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request; use a new key for a new request.",
    )
    .into_response()
}

fn in_use() -> Response {
    Problem::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still running; retry it later.",
    )
    .into_response()
}

fn internal(err: &dyn std::error::Error) -> Response {
    tracing::error!(error = %err, "idempotency storage failed");
    Problem::bare(StatusCode::INTERNAL_SERVER_ERROR, "internal_error").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_under_messaging_and_webhooks_are_covered() {
        let req =
            |method: Method, path: &str| Request::builder().method(method).uri_str(path).finish();
        assert!(is_covered(&req(Method::POST, "/v1/messaging/threads")));
        assert!(is_covered(&req(Method::PATCH, "/v1/messaging/messages/x")));
        assert!(is_covered(&req(Method::POST, "/v1/webhooks/endpoints")));
        assert!(!is_covered(&req(Method::GET, "/v1/messaging/threads")));
        assert!(!is_covered(&req(
            Method::DELETE,
            "/v1/messaging/messages/x"
        )));
        assert!(!is_covered(&req(
            Method::PUT,
            "/v1/messaging/messages/x/reactions/y"
        )));
        assert!(!is_covered(&req(Method::POST, "/v1/auth/login")));
    }
}
