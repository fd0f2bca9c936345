//! `GET /api/ops/openapi.json`: the OpenAPI 3.1 document of every route the
//! control plane serves, derived from the code.
//!
//! [`api_router`] registers every route through utoipa-axum's `routes!`,
//! which takes each handler's path and method from its `#[utoipa::path]`
//! annotation and adds the same operation to the document: the router and
//! the document come from the same calls, so a route cannot be served
//! without being documented, or documented at a path it is not served at.
//! [`document`] then adds, for every operation, what the auth middleware
//! enforces, computed by the middleware's own rules ([`crate::auth`]): the
//! security requirement, the role (`x-required-role`, and a sentence in the
//! description) and the 401/403/429 answers, plus 413 on POSTs.
//!
//! Response and request schemas are the handlers' own types
//! (`#[derive(ToSchema)]` next to `Serialize`); where a handler builds its
//! answer with `json!`, a type below describes it.
//!
//! The document needs a viewer token like every other GET: SPEC 4 lists the
//! public routes (health, ready, the operations page, `/metrics` with
//! `metrics_public`), and this one holds no data an operator would miss
//! without it.

use std::sync::OnceLock;

use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{is_public, role_check};
use crate::config::TokenRole;
use crate::error::ApiError;
use crate::AppState;

/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";
/// The `?token=` scheme, accepted on WebSocket paths only.
pub const WS_TOKEN: &str = "ws_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "continuity control plane",
        description = "The control plane of continuity (SPEC 4, 5, 6, 8). \
            Every route but `/api/ops/health`, `/api/ops/ready`, the operations page and \
            (with `metrics_public = true`) `/metrics` needs `Authorization: Bearer TOKEN`. \
            GETs and WebSockets take a viewer or operator token; POSTs an operator token, \
            except heartbeats (reporter or operator). Each operation carries the role it \
            needs as `x-required-role` (`none`, `viewer`, `operator` or `reporter`; an \
            operator token may do everything). Errors are \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`; checks run in the \
            order 401, 403, 404, 400, 422, 409.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorEnvelope, ErrorBody, ErrorCode)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Health, readiness, uptime and SLA"),
        (name = "failover", description = "Failover status and operator switches"),
        (name = "redundancy", description = "Pools and planned switchovers"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "diagnostics", description = "Diagnostic events, slow queries and alerts"),
        (name = "alerts", description = "Alert acknowledgement, emergencies and heartbeats"),
        (name = "queue", description = "The HTTP gateway's durable queue"),
        (name = "config", description = "Live configuration reload"),
        (name = "websocket", description = "Live channels (SPEC 5)"),
        (name = "meta", description = "Metrics, identity, this document and the operations page"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token configured under [[control.tokens]] (its SHA-256 digest is \
                         configured, never the token). Roles: viewer, operator, reporter.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            WS_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same token as `?token=TOKEN`, on /ws/ paths only (browsers cannot set \
                 headers on a WebSocket). Never logged.",
            ))),
        );
    }
}

/// Every route of the control plane: the router and its document.
pub fn api_router() -> OpenApiRouter<AppState> {
    use crate::routes::{
        audit, cluster, config, failover, health, metrics, queue, redundancy, whoami,
    };
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::deep))
        .routes(routes!(health::service))
        .routes(routes!(config::reload))
        .routes(routes!(failover::status))
        .routes(routes!(failover::trigger))
        .routes(routes!(failover::recover))
        .routes(routes!(cluster::status))
        .routes(routes!(audit::logs))
        .routes(routes!(audit::report))
        .routes(routes!(audit::status))
        .routes(routes!(audit::verify))
        .routes(routes!(redundancy::status))
        .routes(routes!(redundancy::failover))
        .routes(routes!(redundancy::failback))
        .routes(routes!(redundancy::resync))
        .routes(routes!(redundancy::pool_by_name))
        .routes(routes!(queue::summary))
        .routes(routes!(queue::entry))
        .routes(routes!(metrics::metrics))
        .routes(routes!(whoami::whoami))
        .routes(routes!(openapi_json))
        .merge(crate::diagnostics::routes())
        .merge(crate::snapshots::routes())
        .merge(crate::alerts::routes())
        .merge(crate::ws::routes())
        .merge(crate::ui::routes())
}

/// The finished document (built once).
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = api_router().split_for_parts();
        finish(&mut doc);
        doc
    })
}

/// An axum path template as OpenAPI writes it: `{*path}` is `{path}`.
pub fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

/// Wildcard paths, auth, roles and the errors every route shares.
fn finish(doc: &mut utoipa::openapi::OpenApi) {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, mut item) in paths {
        let path = openapi_path(&path);
        for (method, op) in [
            (Method::GET, item.get.as_mut()),
            (Method::POST, item.post.as_mut()),
            (Method::PUT, item.put.as_mut()),
            (Method::DELETE, item.delete.as_mut()),
            (Method::PATCH, item.patch.as_mut()),
        ] {
            if let Some(op) = op {
                apply_auth(&method, &path, op);
            }
        }
        doc.paths.paths.insert(path, item);
    }
}

/// The role an operation needs, by the middleware's own rules.
pub fn required_role(method: &Method, path: &str) -> &'static str {
    if is_public(method, path, false) {
        return "none";
    }
    let may = |role| role_check(role, method, path).is_ok();
    if may(TokenRole::Viewer) {
        "viewer"
    } else if may(TokenRole::Reporter) {
        "reporter"
    } else {
        "operator"
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build(),
    )
}

fn apply_auth(method: &Method, path: &str, op: &mut Operation) {
    let role = required_role(method, path);
    let metrics_public = !is_public(method, path, false) && is_public(method, path, true);
    let sentence = match role {
        "none" => "Public: no token needed.".to_string(),
        "viewer" if metrics_public => {
            "Needs a viewer or operator token, unless `[control] metrics_public = true`."
                .to_string()
        }
        "viewer" => "Needs a viewer or operator token.".to_string(),
        "reporter" => "Needs a reporter or operator token.".to_string(),
        _ => "Needs an operator token.".to_string(),
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
        _ => sentence,
    });
    let mut ext = op.extensions.take().unwrap_or_default();
    ext.merge(
        ExtensionsBuilder::new()
            .add("x-required-role", role)
            .build(),
    );
    op.extensions = Some(ext);
    if role == "none" {
        op.security = Some(vec![SecurityRequirement::default()]);
        return;
    }
    let mut security = vec![SecurityRequirement::new(BEARER, Vec::<String>::new())];
    if path.starts_with("/ws/") {
        security.push(SecurityRequirement::new(WS_TOKEN, Vec::<String>::new()));
        let token = ParameterBuilder::new()
            .name("token")
            .parameter_in(ParameterIn::Query)
            .description(Some("The token, for clients that cannot set headers."))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String),
            ))
            .build();
        op.parameters
            .get_or_insert_with(Vec::new)
            .push(RefOr::T(token));
    }
    if metrics_public {
        security.push(SecurityRequirement::default());
    }
    op.security = Some(security);
    let responses = &mut op.responses.responses;
    let mut add = |code: &str, description: &str| {
        responses
            .entry(code.to_string())
            .or_insert_with(|| error_response(description));
    };
    add(
        "401",
        "`unauthorized`: no token, or one that matches no configured token.",
    );
    add(
        "403",
        "`forbidden`: a valid token whose role may not do this.",
    );
    add(
        "429",
        "`rate_limited`: too many failed authentications from this address; `Retry-After` says when to retry. A valid token is never refused with 429.",
    );
    if *method == Method::POST {
        add("413", "`payload_too_large`: a body over 64 KiB.");
        add(
            "500",
            "`internal`: a fault on our side, e.g. the action's audit entry could not be written, so the action was refused; the detail is in the log.",
        );
    }
}

/// The document's JSON text (built once).
fn json_text() -> Result<&'static str, ApiError> {
    static TEXT: OnceLock<Result<String, String>> = OnceLock::new();
    TEXT.get_or_init(|| serde_json::to_string(document()).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            ApiError::Internal
        })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/ops/openapi.json",
    tag = "meta",
    summary = "The OpenAPI document of every route",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)),
)]
pub async fn openapi_json() -> Result<Response, ApiError> {
    let text = json_text()?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

mod schemas;
pub use schemas::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_the_auth_rules() {
        assert_eq!(required_role(&Method::GET, "/api/ops/health"), "none");
        assert_eq!(
            required_role(&Method::GET, "/operations-center/assets/{path}"),
            "none"
        );
        assert_eq!(
            required_role(&Method::GET, "/api/ops/openapi.json"),
            "viewer"
        );
        assert_eq!(required_role(&Method::GET, "/metrics"), "viewer");
        assert_eq!(required_role(&Method::GET, "/ws/ops/health"), "viewer");
        assert_eq!(
            required_role(&Method::POST, "/api/ops/failover/trigger/{type}"),
            "operator"
        );
        assert_eq!(
            required_role(&Method::POST, "/api/ops/heartbeat/{name}"),
            "reporter"
        );
    }

    #[test]
    fn every_operation_has_its_role_security_and_errors() {
        let doc = serde_json::to_value(document()).expect("serialises");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(
            paths.contains_key("/operations-center/assets/{path}"),
            "wildcard renamed"
        );
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                let role = op["x-required-role"].as_str().unwrap_or_default();
                assert!(
                    ["none", "viewer", "operator", "reporter"].contains(&role),
                    "{method} {path}: {role}"
                );
                let codes = op["responses"].as_object().expect("responses");
                assert!(
                    codes.keys().any(|c| c.starts_with('2') || c == "101"),
                    "{method} {path}"
                );
                if role != "none" {
                    for c in ["401", "403", "429"] {
                        assert!(codes.contains_key(c), "{method} {path} lacks {c}");
                    }
                    assert_eq!(op["security"][0]["bearer"], serde_json::json!([]));
                } else {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{path}");
                }
                if method == "post" {
                    assert!(codes.contains_key("413"), "{path}");
                }
                let described = op["description"].as_str().unwrap_or_default();
                assert!(
                    described.contains("token") || described.contains("Public"),
                    "{path}"
                );
            }
        }
        assert_eq!(
            doc["paths"]["/api/ops/heartbeat/{name}"]["post"]["x-required-role"],
            "reporter"
        );
    }
}
