//! `GET /api/ops/whoami`: who the presented token is, so that a client
//! (the operations center page) can show it and offer only what its role
//! may do. Any authenticated role may ask (viewer, operator; a reporter
//! token is refused by the role check like on every GET).

use axum::Json;
use serde::Serialize;

use crate::auth::Actor;

#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's configured `name` (the `actor` of its audit entries).
    pub name: String,
    /// `viewer`, `operator` or `reporter`.
    #[schema(value_type = crate::openapi::RoleName)]
    pub role: &'static str,
}

#[utoipa::path(
    get, path = "/api/ops/whoami", tag = "meta",
    summary = "Who the presented token is",
    responses((status = 200, description = "The token's name and role", body = WhoAmI)),
)]
pub async fn whoami(actor: Actor) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: actor.name,
        role: actor.role.as_str(),
    })
}
