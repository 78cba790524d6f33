//! The one place where HTTP-level failures become `application/problem+json`: poem and
//! poem-openapi errors, oversized bodies, rate limits and failed health checks.

use poem::{
    Response,
    error::{MethodNotAllowedError, NotFoundError, ReadBodyError},
    http::{StatusCode, header},
};
use poem_openapi::error::{
    AuthorizationError, ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use serde_json::{Value, json};

use crate::spec::SPEC;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where the `type` URIs of problems point.
const PROBLEM_TYPE_BASE: &str = "https://docs.tybritelabs.com/errors/";

/// A problem document before it gets its `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: Some(detail.into()),
        }
    }

    /// A problem that says nothing beyond its status and code.
    pub fn bare(status: StatusCode, code: &'static str) -> Self {
        Self {
            status,
            code,
            detail: None,
        }
    }

    /// The JSON body: `type`, `title`, `status`, `code` and, when known, `detail`.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "type": format!("{PROBLEM_TYPE_BASE}{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
        });
        if let Some(detail) = &self.detail {
            body["detail"] = Value::String(detail.clone());
        }
        body
    }

    pub fn into_response(self) -> Response {
        Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, PROBLEM_JSON)
            .body(self.to_json().to_string())
    }
}

/// Turns any error that reached the edge of the app into a problem response. An error that
/// already carries a response (`poem::Error::from_response`) keeps it.
pub fn response_for_error(err: poem::Error, request_path: &str) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    problem_for_error(&err, request_path).into_response()
}

/// The problem a client sees for `err`. Causes of 5xx answers go to the log, never to the client.
pub fn problem_for_error(err: &poem::Error, request_path: &str) -> Problem {
    if let Some(path_err) = err.downcast_ref::<ParsePathError>() {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_path_parameter",
            path_parameter_detail(path_err, request_path),
        );
    }
    if err.is::<ParseParamError>() {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            without_values(&err.to_string()),
        );
    }
    if let Some(payload_err) = err.downcast_ref::<ParseRequestPayloadError>() {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "The request body is not valid: {}",
                without_values(&payload_err.reason)
            ),
        );
    }
    if err.is::<AuthorizationError>() {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "Send an API key as `Authorization: Bearer <key>`.",
        );
    }
    if err.is::<ContentTypeError>() {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            err.to_string(),
        );
    }
    if err.is::<NotFoundError>() {
        return Problem::new(StatusCode::NOT_FOUND, "not_found", "No such endpoint.");
    }
    if err.is::<MethodNotAllowedError>() {
        return Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "This endpoint does not support that method.",
        );
    }
    if let Some(read_err) = err.downcast_ref::<ReadBodyError>() {
        return read_body_problem(read_err, err);
    }
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return payload_too_large();
    }
    problem_by_status(err)
}

fn read_body_problem(read_err: &ReadBodyError, err: &poem::Error) -> Problem {
    match read_err {
        ReadBodyError::PayloadTooLarge => payload_too_large(),
        ReadBodyError::Io(_) | ReadBodyError::Utf8(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            read_err.to_string(),
        ),
        _ => problem_by_status(err),
    }
}

fn payload_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "The request body is larger than the server accepts.",
    )
}

/// A handler panicked: 500 for the client, the panic message for the log.
pub fn response_for_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "request handler panicked");
    Problem::bare(StatusCode::INTERNAL_SERVER_ERROR, "internal_error").into_response()
}

/// Errors of no known type: a client error keeps its status and message, anything else is a
/// 500 whose cause is logged and not shown.
fn problem_by_status(err: &poem::Error) -> Problem {
    let status = err.status();
    if status.is_client_error() {
        return Problem::new(status, code_for_client_status(status), err.to_string());
    }
    tracing::error!(error = %err, status = status.as_u16(), "request failed");
    Problem::bare(StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
}

fn code_for_client_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::CONFLICT => "conflict",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        _ => "bad_request",
    }
}

/// poem-openapi says what it found where a value had the wrong type (`Expected input type
/// "string", found {"token":"…"}.`). The value may be a password or a token sent in the wrong
/// shape, so the problem names only its JSON type.
fn without_values(message: &str) -> String {
    const FOUND: &str = ", found ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(FOUND) {
        let (head, tail) = rest.split_at(at + FOUND.len());
        out.push_str(head);
        // The value is the shortest prefix of `tail` that is JSON followed by a period.
        let value_end = tail
            .match_indices('.')
            .map(|(i, _)| i)
            .find(|&i| serde_json::from_str::<Value>(&tail[..i]).is_ok());
        match value_end {
            Some(end) => {
                let kind = match serde_json::from_str::<Value>(&tail[..end]) {
                    Ok(Value::Null) => "null",
                    Ok(Value::Bool(_)) => "a boolean",
                    Ok(Value::Number(_)) => "a number",
                    Ok(Value::String(_)) => "a string",
                    Ok(Value::Array(_)) => "an array",
                    Ok(Value::Object(_)) => "an object",
                    Err(_) => "another value",
                };
                out.push_str(kind);
                rest = &tail[end..];
            }
            None => {
                out.push_str("another value.");
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// "id must be a UUID": poem-openapi names path parameters `param0`, `param1`…, so the name
/// and the expected form come from the spec path the request matched.
fn path_parameter_detail(err: &ParsePathError, request_path: &str) -> String {
    let index = err
        .name
        .strip_prefix("param")
        .and_then(|n| n.parse::<usize>().ok());
    let param = index.and_then(|i| SPEC.path_params_of(request_path)?.get(i).copied());
    match param {
        Some(param) => match param.format.as_deref() {
            Some("uuid") => format!("{} must be a UUID", param.name),
            Some("integer" | "int32" | "int64") => format!("{} must be an integer", param.name),
            _ => format!("{} is not valid: {}", param.name, err.reason),
        },
        None => format!("A path parameter is not valid: {}", err.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_message_id_is_named_as_in_the_spec() {
        let err: poem::Error = ParsePathError {
            name: "param0",
            reason: "bad uuid".to_owned(),
        }
        .into();
        let problem = problem_for_error(&err, "/v1/messaging/messages/nope");
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
        assert_eq!(problem.code, "invalid_path_parameter");
        assert_eq!(problem.detail.as_deref(), Some("id must be a UUID"));
    }

    #[test]
    fn internal_errors_leak_nothing() {
        let err = poem::Error::from_string("db password is hunter2", StatusCode::BAD_GATEWAY);
        let body = problem_for_error(&err, "/").to_json();
        assert_eq!(body["status"], 500);
        assert_eq!(body["code"], "internal_error");
        assert!(body.get("detail").is_none());
        assert!(!body.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn panics_answer_500_without_the_message() {
        let response = response_for_panic(Box::new("secret state"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().into_string().await.unwrap();
        assert!(body.contains("internal_error"));
        assert!(!body.contains("secret state"));
    }

    #[test]
    fn values_of_the_wrong_type_are_not_echoed() {
        assert_eq!(
            without_values(
                r#"Expected input type "string", found {"tok":"SECRET. x"}. (occurred while parsing "RefreshRequest")"#
            ),
            r#"Expected input type "string", found an object. (occurred while parsing "RefreshRequest")"#
        );
        assert_eq!(
            without_values(r#"Expected input type "string", found 12345678."#),
            r#"Expected input type "string", found a number."#
        );
        assert_eq!(
            without_values(r#"Expected input type "string", found ["a", "b"]"#),
            r#"Expected input type "string", found another value."#
        );
        assert_eq!(without_values("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn problem_json_has_type_title_status_and_code() {
        let body = Problem::new(StatusCode::NOT_FOUND, "not_found", "gone").to_json();
        assert_eq!(
            body["type"],
            "https://docs.tybritelabs.com/errors/not_found"
        );
        assert_eq!(body["title"], "Not Found");
        assert_eq!(body["status"], 404);
        assert_eq!(body["detail"], "gone");
    }
}
