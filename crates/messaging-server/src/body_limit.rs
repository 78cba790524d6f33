//! Request body limit: the body is read once, up to the configured size, before anything else
//! sees it; a larger body is refused with 413. The bytes stay available to later layers.

use bytes::Bytes;
use poem::{Body, Request, error::ReadBodyError, http::header};

/// The request body, already read and within the limit.
#[derive(Debug, Clone)]
pub struct LimitedBody(pub Bytes);

/// Reads the body of `req` (at most `max_bytes`) and puts it back, also as [`LimitedBody`].
pub async fn limit_body(mut req: Request, max_bytes: usize) -> poem::Result<Request> {
    if declared_length(&req).is_some_and(|len| len > max_bytes as u64) {
        return Err(ReadBodyError::PayloadTooLarge.into());
    }
    let bytes = req.take_body().into_bytes_limit(max_bytes).await?;
    req.extensions_mut().insert(LimitedBody(bytes.clone()));
    req.set_body(Body::from_bytes(bytes));
    Ok(req)
}

fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
