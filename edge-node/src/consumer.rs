//! Who is calling: the app a credential proved, as the phases after authentication and the
//! upstream request see it.

use std::sync::Arc;

use http::HeaderName;
use serde_json::{Map, Value};

/// The calling app, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    pub tenant: String,
    pub app: String,
    /// The header that carried the credential (stripped before forwarding).
    pub credential_header: HeaderName,
    /// The credential's public part, for the call record: `tgk_<id>` for an API key.
    pub key_id: Option<String>,
    /// The verified claims of the caller's JWT (a rate limit may count by one).
    pub claims: Option<Arc<Map<String, Value>>>,
}
