//! `Allow` on every 405: the methods the matched route serves. For the API they come from the
//! generated API's own metadata (what poem-openapi routes), keyed by the route pattern poem
//! reports; the server's other routes serve only `GET` (and `HEAD`).

use std::collections::HashMap;

use poem::{
    PathPattern, Response,
    error::MethodNotAllowedError,
    http::{HeaderValue, Method, header},
};
use poem_openapi::OpenApi;

use crate::problem::response_for_error;

/// What the server's own routes (documents, health, metrics) allow.
const OWN_ROUTES_ALLOW: &str = "GET, HEAD";

/// The `Allow` value of every route pattern of the API.
pub struct AllowedMethods(HashMap<String, HeaderValue>);

impl AllowedMethods {
    /// Collects the methods of every path of `T` (an OpenAPI path `{id}` is poem's `:id`).
    pub fn of<T: OpenApi>() -> Self {
        let mut methods: HashMap<String, Vec<Method>> = HashMap::new();
        for path in T::meta().into_iter().flat_map(|api| api.paths) {
            let pattern = shape(&path.path);
            methods
                .entry(pattern)
                .or_default()
                .extend(path.operations.into_iter().map(|op| op.method));
        }
        Self(
            methods
                .into_iter()
                .map(|(pattern, methods)| (pattern, allow_value(methods)))
                .collect(),
        )
    }

    /// `Allow` for a route pattern: the API's methods, else the server's own routes'.
    fn allow(&self, pattern: Option<&str>) -> HeaderValue {
        pattern
            .and_then(|pattern| self.0.get(pattern))
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(OWN_ROUTES_ALLOW))
    }

    /// A 405 becomes its problem response with `Allow`; anything else passes unchanged.
    pub fn answer(&self, result: poem::Result<Response>, path: &str) -> poem::Result<Response> {
        match result {
            Err(err) if err.is::<MethodNotAllowedError>() => {
                let pattern = err.data::<PathPattern>().map(|p| shape(&p.0));
                let mut response = response_for_error(err, path);
                response
                    .headers_mut()
                    .insert(header::ALLOW, self.allow(pattern.as_deref()));
                Ok(response)
            }
            other => other,
        }
    }
}

/// A route pattern with its parameters unnamed, so that the OpenAPI form
/// (`/v1/messaging/threads/{id}`) and poem's (`/v1/messaging/threads/:param0`) agree:
/// `/v1/messaging/threads/:`.
fn shape(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| {
            if segment.starts_with(':') || (segment.starts_with('{') && segment.ends_with('}')) {
                ":"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The methods in a stable order, with `HEAD` wherever `GET` is (poem answers it from `GET`).
fn allow_value(mut methods: Vec<Method>) -> HeaderValue {
    if methods.contains(&Method::GET) {
        methods.push(Method::HEAD);
    }
    let order = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    let mut names: Vec<&str> = order
        .iter()
        .filter(|m| methods.contains(m))
        .map(Method::as_str)
        .collect();
    names.dedup();
    HeaderValue::from_str(&names.join(", ")).expect("method names are valid header text")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_paths_and_poem_patterns_have_one_shape() {
        let shaped = "/v1/messaging/threads/:/subscribers/:";
        assert_eq!(
            shape("/v1/messaging/threads/{id}/subscribers/{subscriber_id}"),
            shaped
        );
        assert_eq!(
            shape("/v1/messaging/threads/:param0/subscribers/:param1"),
            shaped
        );
    }

    #[test]
    fn get_brings_head_and_the_order_is_stable() {
        assert_eq!(
            allow_value(vec![Method::PATCH, Method::GET]),
            "GET, HEAD, PATCH"
        );
        assert_eq!(
            allow_value(vec![Method::DELETE, Method::PUT]),
            "PUT, DELETE"
        );
    }
}
