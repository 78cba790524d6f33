//! The messaging server: the HTTP app around `MessagingService` (the generated poem-openapi API,
//! the spec documents, Swagger UI, health) with its middleware, and the functions that run it.
//!
//! Layers, outermost first: request context (request id, span, access log, every error to
//! problem+json), panics to 500, URI and header limits, body limit, rate limits, `Allow` on every
//! 405, safe retries (`Idempotency-Key`), then the routes.

mod body_limit;
mod connections;
mod docs;
mod header_limit;
mod health;
mod idempotency;
mod method_not_allowed;
mod metrics;
mod problem;
mod rate_limit;
mod request_context;
mod server;
mod settings;
mod spec;
mod telemetry;

use std::sync::Arc;

use messaging_api::Api;
use messaging_service::MessagingService;
use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route,
    endpoint::{make, make_sync},
    get,
    middleware::CatchPanic,
};
use poem_openapi::{OpenApiService, OperationId};

pub use header_limit::MAX_URI_BYTES;
pub use idempotency::{IDEMPOTENCY_KEY_HEADER, REPLAYED_HEADER};
pub use problem::{PROBLEM_JSON, Problem};
pub use rate_limit::{RedisBudgets, RedisError};
pub use request_context::{REQUEST_ID_HEADER, RequestId};
pub use server::{ServeError, ServerConfig, run, serve, shutdown_signal, spawn};
pub use settings::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, HttpSettings, RateLimitSettings,
};
pub use spec::SPEC_YAML;
pub use telemetry::{LogFormat, init_tracing};

use crate::{
    docs::SwaggerUi, method_not_allowed::AllowedMethods, rate_limit::RateLimiter, spec::SPEC,
};

/// The whole HTTP app: API, documents, Swagger UI and health, behind the middleware.
pub fn app(
    service: MessagingService,
    settings: &HttpSettings,
) -> impl Endpoint<Output = Response> + 'static {
    metrics::install();
    with_middleware(routes(service.clone()), service, settings)
}

/// The poem-openapi service for the generated API, titled and described as the spec is.
fn api_service(service: MessagingService) -> OpenApiService<Api<MessagingService>, ()> {
    let info = &SPEC.info;
    let api = OpenApiService::new(Api(service), &info.title, &info.version);
    match &info.description {
        Some(description) => api.description(description),
        None => api,
    }
}

fn routes(service: MessagingService) -> Route {
    let api = api_service(service.clone());
    let generated_schema = bytes::Bytes::from(api.spec());
    let swagger_ui = Arc::new(SwaggerUi::new());
    let health = service.clone();
    Route::new()
        .at(
            "/healthz",
            named("/healthz", get(make(move |_| health_of(health.clone())))),
        )
        .at(
            "/metrics",
            named(
                "/metrics",
                get(make(move |_| metrics::render(service.clone()))),
            ),
        )
        .at(
            "/openapi.yaml",
            named("/openapi.yaml", get(make_sync(|_| docs::spec_yaml()))),
        )
        .at(
            "/openapi.json",
            named(
                "/openapi.json",
                get(make_sync(move |_| {
                    docs::generated_spec(generated_schema.clone())
                })),
            ),
        )
        .at(
            "/openapi/spec.json",
            named("/openapi/spec.json", get(make_sync(|_| docs::spec_json()))),
        )
        .at(
            "/docs",
            named("/docs", get(make_sync(|_| docs::redirect_to_docs()))),
        )
        .at("/docs/", named("/docs", get(Arc::clone(&swagger_ui))))
        .at("/docs/*path", named("/docs", get(swagger_ui)))
        .nest("/", api)
}

/// `inner` with `Allow` on every 405. It sits outside safe retries, so a 405 (no operation ran)
/// reaches that layer as a refusal, which it does not keep.
fn with_allow<E: Endpoint<Output = Response> + 'static>(
    inner: E,
) -> impl Endpoint<Output = Response> {
    let allowed = Arc::new(AllowedMethods::of::<Api<MessagingService>>());
    inner.around(move |inner, req| {
        let allowed = allowed.clone();
        async move {
            let path = req.uri().path().to_owned();
            let result = inner.call(req).await;
            allowed.answer(result, &path)
        }
    })
}

/// Names a route outside the API for metrics and logs, as poem-openapi names each operation of
/// the API with its operationId.
fn named(
    name: &'static str,
    endpoint: impl Endpoint + 'static,
) -> impl Endpoint<Output = Response> {
    endpoint.after(move |result| async move {
        let mut result = result.map(IntoResponse::into_response);
        match &mut result {
            Ok(response) => response.set_data(OperationId(name)),
            Err(err) => err.set_data(OperationId(name)),
        }
        result
    })
}

async fn health_of(service: MessagingService) -> Response {
    health::health(&service).await
}

/// Request context outermost, then panic catching, the head limits, the body limit, rate
/// limits, `Allow` on 405s and safe retries.
fn with_middleware<E>(
    routes: E,
    service: MessagingService,
    settings: &HttpSettings,
) -> impl Endpoint<Output = Response> + 'static
where
    E: Endpoint + 'static,
{
    let limiter = settings
        .rate_limits
        .as_ref()
        .map(|limits| Arc::new(RateLimiter::new(limits, service.clone())));
    let max_body_bytes = settings.max_body_bytes;
    let max_header_bytes = settings.max_header_bytes;
    let safe_retries = routes.around(move |inner, req| {
        let service = service.clone();
        async move { idempotency::handle(&service, inner, req).await }
    });
    with_allow(safe_retries)
        .around(move |inner, req| enforce_rate_limits(limiter.clone(), inner, req))
        .before(move |req| body_limit::limit_body(req, max_body_bytes))
        .before(move |req| async move { header_limit::limit_head(req, max_header_bytes) })
        .with(CatchPanic::new().with_handler(problem::response_for_panic))
        .around(|inner, req| async move { request_context::handle(inner.as_ref(), req).await })
}

async fn enforce_rate_limits<E: Endpoint>(
    limiter: Option<Arc<RateLimiter>>,
    inner: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    match limiter {
        Some(limiter) => limiter.enforce(inner.as_ref(), req).await,
        None => inner.call(req).await.map(IntoResponse::into_response),
    }
}
