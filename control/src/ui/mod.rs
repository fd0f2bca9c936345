//! The operations center page (SPEC 8): `GET /operations-center` and its
//! static assets under `/operations-center/assets/`, embedded in the
//! binary at build time, so that running it needs no web server and no
//! build step.
//!
//! The page and its assets are public and hold no data (the auth
//! middleware lets these paths through); the page asks for a token and
//! only then calls the REST routes and the WebSocket channels with it.
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles,
//! images and connections from this origin only (WebSockets included:
//! CSP 3's `'self'` covers `ws:`/`wss:` to the same host and port), no
//! inline script or style, no frames, no plugins. A strong ETag (SHA-256 of
//! the embedded bytes, computed once) with `Cache-Control: no-cache` lets a
//! browser keep its copy and revalidate it with a 304 on each load, so a
//! new binary is picked up at once without stale assets.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::AppState;

/// The policy sent with the page and every asset.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    /// Its name under `/operations-center/assets/` (`""` for the page itself).
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page (index 0) and its assets.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../ui/index.html"),
    },
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/live.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/panels.js", JS),
    asset!("js/actions.js", JS),
];

/// The strong ETag of each asset, in [`ASSETS`] order.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                format!("\"{}\"", hex::encode(&digest[..16]))
            })
            .collect()
    })
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(page_slash))
        .routes(routes!(asset))
}

#[utoipa::path(
    get, path = "/operations-center", tag = "meta",
    summary = "The operations center page (SPEC 8)",
    description = "Holds no data; it asks for a token and then calls the API with it. Strict CSP; strong ETag with `Cache-Control: no-cache`.",
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
async fn page(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// The page at `/operations-center/` too (its own handler so that the
/// OpenAPI document lists both paths).
#[utoipa::path(
    get, path = "/operations-center/", tag = "meta",
    summary = "The operations center page (SPEC 8)",
    description = "Holds no data; it asks for a token and then calls the API with it. Strict CSP; strong ETag with `Cache-Control: no-cache`.",
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
async fn page_slash(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

#[utoipa::path(
    get, path = "/operations-center/assets/{*path}", tag = "meta",
    summary = "A static asset of the operations center",
    params(("path" = String, Path, description = "`app.css`, `favicon.svg`, `js/app.js`, ...")),
    responses(
        (status = 200, description = "The asset (text/css, text/javascript, image/svg+xml)", body = String, content_type = "text/plain"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "`not_found`: no such asset", body = crate::openapi::ErrorEnvelope),
    ),
)]
async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS
        .iter()
        .position(|a| !a.name.is_empty() && a.name == path)
    {
        Some(i) => serve(i, &headers),
        None => ApiError::NotFound("no such asset".to_string()).into_response(),
    }
}

/// True if `If-None-Match` lists `etag` (or is `*`).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn serve(index: usize, headers: &HeaderMap) -> Response {
    let (Some(asset), Some(etag)) = (ASSETS.get(index), etags().get(index)) else {
        return ApiError::NotFound("no such asset".to_string()).into_response();
    };
    let mut response = if matches(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_and_assets_weigh_at_most_250_kb() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total <= 250 * 1024, "{total} bytes");
    }

    #[test]
    fn every_asset_the_page_names_is_embedded_and_nothing_inline() {
        let page = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for a in &ASSETS[1..] {
            assert!(
                a.name.ends_with(".js") || page.contains(a.name),
                "{}",
                a.name
            );
        }
        // CSP forbids inline script and style: none may be written.
        assert!(!page.contains("<script>") && !page.contains("style="));
        assert!(!page.contains("<style"));
        // No other origin is named (the SVG namespace is a name, not a fetch).
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).expect("utf-8");
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
                "{} names another origin",
                a.name
            );
        }
    }

    #[test]
    fn served_with_csp_and_revalidated_with_304() {
        let first = serve(0, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let h = first.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        let etag = h[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag.clone());
        let second = serve(0, &again);
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(second.headers()[header::ETAG], etag);
        // Each asset has its own tag and type.
        let js = ASSETS
            .iter()
            .position(|a| a.name == "js/app.js")
            .expect("app.js");
        let r = serve(js, &again);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
    }

    #[test]
    fn if_none_match() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b\""),
        );
        assert!(matches(&h, "\"b\""));
        assert!(!matches(&h, "\"c\""));
    }
}
