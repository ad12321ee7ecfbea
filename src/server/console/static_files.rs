//! Static files, embedded in the binary: vendored htmx and its WebSocket extension, and Swagger UI
//! for the API page (version in the file name, licences kept), our stylesheet and our small scripts.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (path under /static/, content type, bytes)
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "vendor/htmx-2.0.11.min.js",
        "text/javascript",
        include_bytes!("../../../static/vendor/htmx-2.0.11.min.js"),
    ),
    (
        "vendor/htmx-ext-ws-2.0.4.min.js",
        "text/javascript",
        include_bytes!("../../../static/vendor/htmx-ext-ws-2.0.4.min.js"),
    ),
    (
        "vendor/LICENSE-htmx",
        "text/plain; charset=utf-8",
        include_bytes!("../../../static/vendor/LICENSE-htmx"),
    ),
    (
        "vendor/LICENSE-htmx-ext-ws",
        "text/plain; charset=utf-8",
        include_bytes!("../../../static/vendor/LICENSE-htmx-ext-ws"),
    ),
    // Swagger UI for /api/docs, from npm's swagger-ui-dist 5.35.0 (the bundle and its stylesheet,
    // unchanged; about 1.9 MB, sent only to that page).
    (
        "vendor/swagger-ui-bundle-5.35.0.js",
        "text/javascript",
        include_bytes!("../../../static/vendor/swagger-ui-bundle-5.35.0.js"),
    ),
    (
        "vendor/swagger-ui-5.35.0.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../static/vendor/swagger-ui-5.35.0.css"),
    ),
    (
        "vendor/LICENSE-swagger-ui",
        "text/plain; charset=utf-8",
        include_bytes!("../../../static/vendor/LICENSE-swagger-ui"),
    ),
    (
        "vendor/NOTICE-swagger-ui",
        "text/plain; charset=utf-8",
        include_bytes!("../../../static/vendor/NOTICE-swagger-ui"),
    ),
    (
        "vendor/swagger-ui-bundle-5.35.0.js.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../../static/vendor/swagger-ui-bundle-5.35.0.js.LICENSE.txt"),
    ),
    (
        "api-docs.js",
        "text/javascript",
        include_bytes!("../../../static/api-docs.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../static/console.css"),
    ),
    (
        "console.js",
        "text/javascript",
        include_bytes!("../../../static/console.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../../static/favicon.svg"),
    ),
];

/// Browsers ask for `/favicon.ico` whatever the page says: answer with the SVG icon.
pub async fn favicon() -> Response {
    serve(Path("favicon.svg".to_string())).await
}

pub async fn serve(Path(path): Path<String>) -> Response {
    let Some((name, content_type, bytes)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Vendored files carry their version in the name and never change; ours may change with a
    // new build, so browsers keep them an hour at most.
    let cache = if name.starts_with("vendor/") {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=3600"
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        *bytes,
    )
        .into_response()
}
