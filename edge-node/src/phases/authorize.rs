//! Authorization phase: may this caller use this service now? Lifecycle (a retired API
//! answers 403 to everyone, before credentials are even asked for) and subscriptions (an
//! authenticated app needs an approved subscription). Also the lifecycle headers of a
//! deprecated API's answers.

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};
use tollgate_proto::model::{Approval, ServiceState, SubscriptionStatus};

use crate::error::ProxyError;
use crate::phases::ctx::RequestCtx;
use crate::phases::service::ServiceEntry;

/// Subscriptions of one config: tenant -> service -> app -> status (looked up per request
/// without building a key).
#[derive(Debug, Default)]
pub struct Subscriptions(HashMap<String, HashMap<String, HashMap<String, Option<SubscriptionStatus>>>>);

impl Subscriptions {
    pub fn insert(&mut self, tenant: &str, service: &str, app: &str, status: Option<SubscriptionStatus>) {
        self.0
            .entry(tenant.to_string())
            .or_default()
            .entry(service.to_string())
            .or_default()
            .insert(app.to_string(), status);
    }

    /// The status of `app`'s subscription to `service`: `None` when there is none. A stored
    /// subscription without a status counts as the service's approval mode says.
    pub fn status(&self, service: &ServiceEntry, app: &str) -> Option<SubscriptionStatus> {
        let status = *self.0.get(&service.tenant)?.get(&service.name)?.get(app)?;
        Some(status.unwrap_or(match service.approval {
            Approval::Auto => SubscriptionStatus::Approved,
            Approval::Manual => SubscriptionStatus::Pending,
        }))
    }
}

/// Refuses retired services.
pub fn check_lifecycle(service: &ServiceEntry) -> Result<(), ProxyError> {
    match service.state {
        ServiceState::Retired => Err(ProxyError::ApiRetired),
        _ => Ok(()),
    }
}

/// Requires an approved subscription of the authenticated app to the service (open
/// services, with no consumer, need none).
pub fn check_subscription(ctx: &RequestCtx, subscriptions: &Subscriptions) -> Result<(), ProxyError> {
    let Some(consumer) = &ctx.consumer else {
        return Ok(());
    };
    match subscriptions.status(&ctx.route()?.service, &consumer.app) {
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
