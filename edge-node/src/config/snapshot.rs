//! The compiled config the request path reads: router, services with their resolved
//! upstreams, API keys, apps, subscriptions, JWT issuers and introspection endpoints. Built whole from a [`ConfigState`] off the request
//! path and swapped in atomically; never changed afterwards (the balancers' counters are
//! atomics).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::HeaderValue;
use tollgate_proto::model::{
    Approval, AuthKind, Policy, ResourceKey, Service, ServiceState, Spec, SubscriptionStatus,
};

use crate::config::resources::{ConfigState, ResourceError};
use crate::phases::auth::introspect::{Introspector, Introspectors};
use crate::phases::auth::jwt::{Issuer, Issuers};
use crate::phases::policy::Policies;
use crate::phases::router::{Router, RouterBuilder};
use crate::listen::tls::CertStore;
use crate::upstream::{Clients, UpstreamPool};

/// Where a service's traffic goes.
#[derive(Debug)]
pub enum Backend {
    Upstream(Arc<UpstreamPool>),
    /// An AI service (the AI gateway comes later).
    Ai,
}

/// A service as the request path needs it.
#[derive(Debug)]
pub struct ServiceEntry {
    pub tenant: String,
    pub name: String,
    pub state: ServiceState,
    pub approval: Approval,
    /// `Sunset` header value (an HTTP date) when the service names one.
    pub sunset: Option<HeaderValue>,
    /// Accepted credential kinds; empty means open.
    pub auth: Vec<AuthKind>,
    pub backend: Backend,
    pub policies: Policies,
}

/// A stored API key (only its SHA-256 is known).
#[derive(Debug)]
pub struct KeyEntry {
    pub tenant: String,
    pub app: String,
    /// Lowercase hex SHA-256 of the whole key.
    pub sha256: String,
}

/// A compiled config.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub router: Router<Arc<ServiceEntry>>,
    /// By key id.
    api_keys: HashMap<String, KeyEntry>,
    /// tenant -> service -> app -> status (looked up per request without building a key).
    subscriptions: HashMap<String, HashMap<String, HashMap<String, Option<SubscriptionStatus>>>>,
    /// tenant -> app names.
    apps: HashMap<String, HashSet<String>>,
    /// JWT issuers by tenant and `iss`.
    pub issuers: Issuers,
    /// OAuth2 introspection endpoints by tenant.
    pub introspectors: Introspectors,
    /// TLS certificates by host, for the TLS listener.
    pub certificates: CertStore,
}

impl Snapshot {
    /// Compiles a resource set; every problem found is reported.
    pub fn compile(state: &ConfigState, clients: &mut Clients) -> Result<Snapshot, Vec<ResourceError>> {
        let specs = state.decode()?;
        let mut errors = Vec::new();

        let mut upstreams = HashMap::new();
        for spec in &specs {
            if let Spec::Upstream(u) = spec {
                match UpstreamPool::compile(u, clients) {
                    Ok(pool) => {
                        upstreams.insert((u.tenant.as_str(), u.name.as_str()), Arc::new(pool));
                    }
                    Err(m) => errors.push(ResourceError::new(&spec.key(), m)),
                }
            }
        }

        let policies: HashMap<(&str, &str), &Policy> = specs
            .iter()
            .filter_map(|s| match s {
                Spec::Policy(p) => Some(((p.tenant.as_str(), p.name.as_str()), p)),
                _ => None,
            })
            .collect();
        let mut router = RouterBuilder::default();
        let mut api_keys = HashMap::new();
        let mut subscriptions: HashMap<String, HashMap<String, HashMap<String, _>>> = HashMap::new();
        let mut apps: HashMap<String, HashSet<String>> = HashMap::new();
        let mut issuers = Issuers::default();
        let mut introspectors = Introspectors::default();
        for spec in &specs {
            match spec {
                Spec::App(a) => {
                    apps.entry(a.tenant.clone()).or_default().insert(a.name.clone());
                }
                Spec::JwtIssuer(j) => {
                    let compiled = Issuer::compile(j, &mut clients.idp)
                        .and_then(|issuer| issuers.insert(&j.tenant, issuer));
                    if let Err(m) = compiled {
                        errors.push(ResourceError::new(&spec.key(), m));
                    }
                }
                Spec::Oauth2Introspection(o) => match Introspector::compile(o, &mut clients.idp) {
                    Ok(i) => introspectors.insert(&o.tenant, i),
                    Err(m) => errors.push(ResourceError::new(&spec.key(), m)),
                },
                Spec::Service(s) if s.state != ServiceState::Draft => {
                    let key = spec.key();
                    match compile_service(s, &upstreams, &policies) {
                        Ok(entry) => {
                            let entry = Arc::new(entry);
                            for (i, r) in s.routes.iter().enumerate() {
                                if let Err(m) = router.add_route(r, entry.clone()) {
                                    errors.push(ResourceError::new(&key, format!("routes[{i}].{m}")));
                                }
                            }
                        }
                        Err(m) => errors.push(ResourceError::new(&key, m)),
                    }
                }
                Spec::ApiKey(k) => {
                    api_keys.insert(
                        k.id.clone(),
                        KeyEntry {
                            tenant: k.tenant.clone(),
                            app: k.app.clone(),
                            sha256: k.sha256.to_ascii_lowercase(),
                        },
                    );
                }
                Spec::Subscription(sub) => {
                    subscriptions
                        .entry(sub.tenant.clone())
                        .or_default()
                        .entry(sub.service.clone())
                        .or_default()
                        .insert(sub.app.clone(), sub.status);
                }
                _ => {}
            }
        }
        let certificates = CertStore::compile(specs.iter().filter_map(|s| match s {
            Spec::Certificate(c) => Some(c),
            _ => None,
        }))
        .unwrap_or_else(|mut e| {
            errors.append(&mut e);
            CertStore::default()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Snapshot {
            version: state.version,
            router: router.build(),
            api_keys,
            subscriptions,
            apps,
            issuers,
            introspectors,
            certificates,
        })
    }

    pub fn api_key(&self, id: &str) -> Option<&KeyEntry> {
        self.api_keys.get(id)
    }

    /// Whether `app` is an app of `tenant`.
    pub fn has_app(&self, tenant: &str, app: &str) -> bool {
        self.apps.get(tenant).is_some_and(|apps| apps.contains(app))
    }

    /// The status of `app`'s subscription to `service`: `None` when there is none. A stored
    /// subscription without a status counts as the service's approval mode says.
    pub fn subscription(&self, service: &ServiceEntry, app: &str) -> Option<SubscriptionStatus> {
        let status = *self
            .subscriptions
            .get(&service.tenant)?
            .get(&service.name)?
            .get(app)?;
        Some(status.unwrap_or(match service.approval {
            Approval::Auto => SubscriptionStatus::Approved,
            Approval::Manual => SubscriptionStatus::Pending,
        }))
    }
}

fn compile_service(
    s: &Service,
    upstreams: &HashMap<(&str, &str), Arc<UpstreamPool>>,
    policies: &HashMap<(&str, &str), &Policy>,
) -> Result<ServiceEntry, String> {
    let backend = match (&s.upstream, &s.ai) {
        (Some(u), _) => match upstreams.get(&(s.tenant.as_str(), u.as_str())) {
            Some(pool) => Backend::Upstream(pool.clone()),
            None => {
                let missing = ResourceKey::new(tollgate_proto::Kind::Upstream, &s.tenant, u);
                return Err(format!(
                    "upstream: references {missing}, which does not exist or is invalid"
                ));
            }
        },
        (None, Some(_)) => Backend::Ai,
        (None, None) => return Err("upstream: a service needs an upstream (or ai)".into()),
    };
    let sunset = match &s.sunset {
        Some(t) => {
            let date =
                crate::http_date::from_rfc3339(t).ok_or_else(|| format!("sunset: invalid time {t:?}"))?;
            Some(HeaderValue::from_str(&date).expect("http dates are valid header values"))
        }
        None => None,
    };
    Ok(ServiceEntry {
        tenant: s.tenant.clone(),
        name: s.name.clone(),
        state: s.state,
        approval: s.approval,
        sunset,
        auth: s.auth.clone(),
        backend,
        policies: Policies::compile(s, policies)?,
    })
}
