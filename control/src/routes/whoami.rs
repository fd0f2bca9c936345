//! `GET /api/ops/whoami`: who the presented token is, so that a client
//! (the operations center page) can show it and offer only what its role
//! may do. Any authenticated role may ask (viewer, operator; a reporter
//! token is refused by the role check like on every GET).

use axum::Json;
use serde::Serialize;

use crate::auth::Actor;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct WhoAmI {
    /// The token's configured `name` (the `actor` of its audit entries).
    pub name: String,
    /// `viewer`, `operator` or `reporter`.
    pub role: &'static str,
}

pub async fn whoami(actor: Actor) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: actor.name,
        role: actor.role.as_str(),
    })
}
