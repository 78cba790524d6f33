//! The one place where failures become statuses: `ServiceError` and its problem+json form.
//!
//! Expected failures carry a status class, a stable `code` and a detail for the client.
//! Unexpected ones (`Internal`) keep their cause for the log and show the client nothing of it.

use messaging_api::Problem;

/// Failures that stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sea_orm::DbErr),
    #[error("cannot run migrations: {0}")]
    Migrate(#[source] sea_orm::DbErr),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the event feed's position: {0}")]
    EventFeed(#[source] sea_orm::DbErr),
    #[error("cannot load the server secret: {0}")]
    Secret(#[source] sea_orm::DbErr),
    #[error(
        "the database {name} does not exist and could not be created: {source}; create it \
         (`createdb {name}`) or connect as a role allowed to create databases (CREATEDB)"
    )]
    CreateDatabase {
        name: String,
        source: sea_orm::sqlx::Error,
    },
}

/// The status class of an expected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    /// Something that existed is gone for good (410), e.g. events past retention.
    Gone,
}

/// A failure of one request.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A failure the client caused and can fix.
    #[error("{code}: {detail}")]
    Expected {
        kind: Kind,
        code: &'static str,
        detail: String,
    },
    /// A failure of ours. The cause goes to the log, never to the client.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ServiceError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Expected {
            kind: Kind::BadRequest,
            code,
            detail: detail.into(),
        }
    }
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Expected {
            kind: Kind::Unauthorized,
            code,
            detail: detail.into(),
        }
    }
    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Expected {
            kind: Kind::Forbidden,
            code,
            detail: detail.into(),
        }
    }
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Expected {
            kind: Kind::NotFound,
            code,
            detail: detail.into(),
        }
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Expected {
            kind: Kind::Conflict,
            code,
            detail: detail.into(),
        }
    }
    pub fn gone(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Expected {
            kind: Kind::Gone,
            code,
            detail: detail.into(),
        }
    }
    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(err))
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Expected { code, .. } => code,
            Self::Internal(_) => "internal_error",
        }
    }

    /// The problem+json body for this failure. Internal causes are logged here, once.
    pub fn into_problem(self) -> Problem {
        let (status, title, code, detail) = match self {
            Self::Expected { kind, code, detail } => {
                let (status, title) = match kind {
                    Kind::BadRequest => (400, "Bad Request"),
                    Kind::Unauthorized => (401, "Unauthorized"),
                    Kind::Forbidden => (403, "Forbidden"),
                    Kind::NotFound => (404, "Not Found"),
                    Kind::Conflict => (409, "Conflict"),
                    Kind::Gone => (410, "Gone"),
                };
                (status, title, code, Some(detail))
            }
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (500, "Internal Server Error", "internal_error", None)
            }
        };
        Problem {
            r#type: format!("https://docs.tybritelabs.com/errors/{code}"),
            title: title.to_owned(),
            status,
            detail,
            code: code.to_owned(),
            request_id: None,
        }
    }
}

impl From<sea_orm::DbErr> for ServiceError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::internal(err)
    }
}

impl From<sea_orm::TransactionError<ServiceError>> for ServiceError {
    fn from(err: sea_orm::TransactionError<ServiceError>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => Self::internal(db),
            sea_orm::TransactionError::Transaction(inner) => inner,
        }
    }
}

/// Whether a database error is a unique-constraint violation (the caller decides what it means).
pub fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
