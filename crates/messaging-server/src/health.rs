//! `/healthz`: 200 `{"status":"ok"}` while the database answers, 503 problem+json otherwise.

use messaging_service::MessagingService;
use poem::{
    Response,
    http::{StatusCode, header},
};

use crate::problem::Problem;

/// Checks the database and answers accordingly.
pub async fn health(service: &MessagingService) -> Response {
    match service.health().await {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(r#"{"status":"ok"}"#),
        Err(err) => {
            tracing::error!(error = %err, "health check failed: the database does not answer");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "The database does not answer.",
            )
            .into_response()
        }
    }
}
