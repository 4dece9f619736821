//! Authorization phase: may this caller use this service now? Lifecycle (a retired API
//! answers 403 to everyone, before credentials are even asked for) and subscriptions (an
//! authenticated app needs an approved subscription). Also the lifecycle headers of a
//! deprecated API's answers.

use http::{HeaderMap, HeaderValue};
use tollgate_proto::model::{ServiceState, SubscriptionStatus};

use crate::phases::auth::Consumer;
use crate::error::ProxyError;
use crate::config::snapshot::{ServiceEntry, Snapshot};

/// Refuses retired services.
pub fn check_lifecycle(service: &ServiceEntry) -> Result<(), ProxyError> {
    match service.state {
        ServiceState::Retired => Err(ProxyError::ApiRetired),
        _ => Ok(()),
    }
}

/// Requires an approved subscription of the consumer's app to the service.
pub fn check_subscription(
    snapshot: &Snapshot,
    service: &ServiceEntry,
    consumer: &Consumer,
) -> Result<(), ProxyError> {
    match snapshot.subscription(service, &consumer.app) {
        Some(SubscriptionStatus::Approved) => Ok(()),
        Some(SubscriptionStatus::Pending) => Err(ProxyError::SubscriptionPending),
        Some(SubscriptionStatus::Rejected) | None => Err(ProxyError::NotSubscribed),
    }
}

/// Adds `Deprecation: true` and `Sunset` (when set) to a deprecated service's answers.
pub fn add_lifecycle_headers(service: &ServiceEntry, headers: &mut HeaderMap) {
    if service.state == ServiceState::Deprecated {
        headers.insert("deprecation", HeaderValue::from_static("true"));
        if let Some(sunset) = &service.sunset {
            headers.insert("sunset", sunset.clone());
        }
    }
}
