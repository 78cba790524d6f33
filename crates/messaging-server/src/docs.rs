//! The API's documents: the checked-in spec (`/openapi.yaml`, and as JSON at
//! `/openapi/spec.json`), the schema generated from the code (`/openapi.json`) and Swagger UI
//! (`/docs/`) showing the checked-in spec.

use std::sync::Arc;

use bytes::Bytes;
use poem::{
    Body, Endpoint, Request, Response,
    http::{HeaderValue, StatusCode, header},
    web::Redirect,
};
use utoipa_swagger_ui::Config;

use crate::{
    problem::Problem,
    spec::{SPEC_JSON, SPEC_YAML},
};

/// Where Swagger UI lives.
pub const DOCS_PATH: &str = "/docs/";

/// The URL Swagger UI loads the spec from.
const SPEC_URL: &str = "/openapi.yaml";

/// `/openapi.yaml`: the checked-in spec, verbatim.
pub fn spec_yaml() -> Response {
    document(SPEC_YAML, "application/yaml")
}

/// `/openapi/spec.json`: the checked-in spec as JSON.
pub fn spec_json() -> Response {
    document(SPEC_JSON.as_str(), "application/json")
}

/// `/openapi.json`: the schema poem-openapi generates from the code.
pub fn generated_spec(schema: Bytes) -> Response {
    document(schema, "application/json")
}

fn document(body: impl Into<Body>, content_type: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
}

/// `/docs`: Swagger UI's relative asset paths need the trailing slash.
pub fn redirect_to_docs() -> Redirect {
    Redirect::permanent(DOCS_PATH)
}

/// Serves Swagger UI's files from under [`DOCS_PATH`].
pub struct SwaggerUi {
    config: Arc<Config<'static>>,
}

impl SwaggerUi {
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config::new([SPEC_URL])),
        }
    }

    fn file(&self, tail: &str) -> Response {
        match utoipa_swagger_ui::serve(tail, Arc::clone(&self.config)) {
            Ok(Some(file)) => {
                let mut response = Response::builder()
                    .header(header::CONTENT_TYPE, file.content_type)
                    .body(file.bytes.into_owned());
                if file.gzpipped {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                response
            }
            Ok(None) => {
                Problem::new(StatusCode::NOT_FOUND, "not_found", "No such file.").into_response()
            }
            Err(err) => {
                tracing::error!(error = %err, "Swagger UI could not serve a file");
                Problem::bare(StatusCode::INTERNAL_SERVER_ERROR, "internal_error").into_response()
            }
        }
    }
}

impl Default for SwaggerUi {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoint for SwaggerUi {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let tail = req.uri().path().strip_prefix(DOCS_PATH).unwrap_or_default();
        Ok(self.file(tail))
    }
}
