//! The API's errors, as RabbitMQ's management plugin writes them.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::meta::MetaError;

/// An error response: a status and RabbitMQ's `{"error": ..., "reason": ...}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// RabbitMQ's error word (`not_authorised`, `Object Not Found`, `bad_request`, ...).
    pub error: &'static str,
    /// What went wrong.
    pub reason: String,
}

impl ApiError {
    /// 401: no or wrong credentials, or a user whose tags do not allow the request
    /// (RabbitMQ answers 401 to both).
    pub fn not_authorised(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: reason.into(),
        }
    }

    /// 404, RabbitMQ's text.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    /// 400 with a reason.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    /// 500: the broker could not do it (the meta log could not be written).
    pub fn internal(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error",
            reason: reason.into(),
        }
    }
}

impl ApiError {
    /// 503: in a cluster, no leader could take the change.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "service_unavailable",
            reason: reason.into(),
        }
    }
}

impl From<MetaError> for ApiError {
    fn from(error: MetaError) -> Self {
        match error {
            MetaError::NotFound(_) => Self::not_found(),
            MetaError::Invalid(reason) => Self::bad_request(reason),
            MetaError::Storage(reason) => Self::internal(reason),
            MetaError::Unavailable(reason) => Self::unavailable(reason),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.error, "reason": self.reason }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // What makes a browser or curl ask for credentials.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"bourse management\""),
            );
        }
        response
    }
}
