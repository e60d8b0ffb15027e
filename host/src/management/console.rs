//! The web console (`host/console/`): three static files built into the binary and served
//! without a login (the page logs in to the API itself, with basic auth on each request).
//! A strict content security policy: the page loads nothing but its own script and style.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/style.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      img-src 'self' data:; connect-src 'self'; form-action 'none'; \
                      frame-ancestors 'none'; base-uri 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// GET /
pub(super) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// GET /console/{file}: the script and the style sheet.
pub(super) async fn file(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "app.js" => Ok(page("text/javascript; charset=utf-8", SCRIPT)),
        "style.css" => Ok(page("text/css; charset=utf-8", STYLE)),
        _ => Err(ApiError::not_found()),
    }
}
