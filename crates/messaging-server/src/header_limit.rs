//! Limits on the request head, checked before anything reads it: a URI longer than
//! [`MAX_URI_BYTES`] is 414 and headers larger in total than the configured size are 431, both
//! as problem+json. (hyper itself refuses a head past about 400 KiB with a bare 431.) A
//! credential or identity header that is not visible ASCII is 400 `invalid_header`: read as text
//! it would look absent, and the request would run as a different caller.

use poem::{Request, http::StatusCode};

use crate::problem::Problem;

/// Longest request URI (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Headers that say who calls; their values are ids, keys and tokens (visible ASCII).
const CALLER_HEADERS: [&str; 3] = ["authorization", "x-auth-token", "x-acting-user"];

/// Refuses `req` when its URI or its headers are too large, or a caller header is not text.
pub fn limit_head(req: Request, max_header_bytes: usize) -> poem::Result<Request> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Err(refuse(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("The request URI is longer than {MAX_URI_BYTES} bytes."),
        ));
    }
    // As on the wire: `name: value\r\n`.
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > max_header_bytes {
        return Err(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("The request headers are larger than {max_header_bytes} bytes."),
        ));
    }
    for name in CALLER_HEADERS {
        if req
            .headers()
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_err())
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!("{name} must be visible ASCII."),
            ));
        }
    }
    Ok(req)
}

fn refuse(status: StatusCode, code: &'static str, detail: String) -> poem::Error {
    poem::Error::from_response(Problem::new(status, code, detail).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_heads_are_refused() {
        let small = Request::builder()
            .uri_str("/v1/messaging/threads")
            .header("x-auth-token", "a".repeat(1000))
            .finish();
        assert!(limit_head(small, 4096).is_ok());

        let big_header = Request::builder()
            .uri_str("/v1/messaging/threads")
            .header("x-auth-token", "a".repeat(5000))
            .finish();
        let err = limit_head(big_header, 4096).unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

        let long_uri = Request::builder()
            .uri_str(format!("/v1/messaging/threads?fields={}", "a".repeat(9000)))
            .finish();
        assert_eq!(
            limit_head(long_uri, 4096).unwrap_err().status(),
            StatusCode::URI_TOO_LONG
        );
    }

    #[test]
    fn caller_headers_that_are_not_text_are_refused() {
        let latin1 = Request::builder()
            .uri_str("/v1/messaging/threads")
            .header(
                "x-acting-user",
                poem::http::HeaderValue::from_bytes(b"\xd7\xf8").unwrap(),
            )
            .finish();
        assert_eq!(
            limit_head(latin1, 4096).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
