//! The compiled config the request path reads: router, services with their resolved
//! upstreams, API keys, apps, subscriptions, JWT issuers and introspection endpoints. Built whole from a [`ConfigState`] off the request
//! path and swapped in atomically; never changed afterwards (the balancers' counters are
//! atomics).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tollgate_proto::model::{Policy, ServiceState, Spec};

use crate::ai::provider::Provider;
use crate::config::resources::{ConfigState, ResourceError};
use crate::listen::tls::CertStore;
use crate::observe::metrics::Registry;
use crate::phases::auth::{Credentials, Idp, KeyEntry};
use crate::phases::authorize::Subscriptions;
use crate::phases::router::{Router, RouterBuilder};
use crate::phases::service::{Routed, ServiceEntry};
use crate::upstream::guarded::GuardedClient;
use crate::upstream::{Clients, UpstreamPool};

/// What outlives snapshots, so that a config change keeps what it does not change: the
/// upstreams' clients, their targets' live state (warm connections among it) and health
/// checkers, and the identity providers' clients, JWKS and introspection caches. Owned by
/// the one task that compiles.
#[derive(Default)]
pub struct Retained {
    pub upstreams: Clients,
    pub idp: Idp,
    /// Each route's request metrics, handed from config to config.
    pub stats: Arc<Registry>,
    /// The clients towards AI providers (with and without internal addresses allowed).
    pub ai_clients: [Option<GuardedClient>; 2],
}

/// A compiled config.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub router: Router<Routed>,
    /// API keys, apps, JWT issuers and introspection endpoints (phase authenticate).
    pub credentials: Credentials,
    /// Phase authorize.
    pub subscriptions: Subscriptions,
    /// TLS certificates by host, for the TLS listener.
    pub certificates: CertStore,
    /// Every rate limit of the services, by limiter id, and whether it is cluster-wide
    /// (`/limits`, `/metrics`).
    pub limiters: BTreeMap<Arc<str>, bool>,
}

impl Snapshot {
    /// Compiles a resource set; every problem found is reported.
    pub fn compile(state: &ConfigState, kept: &mut Retained) -> Result<Snapshot, Vec<ResourceError>> {
        let specs = state.decode()?;
        let mut errors = Vec::new();

        let mut upstreams = HashMap::new();
        for spec in &specs {
            if let Spec::Upstream(u) = spec {
                match UpstreamPool::compile(u, &mut kept.upstreams) {
                    Ok(pool) => {
                        upstreams.insert((u.tenant.as_str(), u.name.as_str()), Arc::new(pool));
                    }
                    Err(m) => errors.push(ResourceError::new(&spec.key(), m)),
                }
            }
        }

        let mut providers = HashMap::new();
        for spec in &specs {
            if let Spec::AiProvider(p) = spec {
                match Provider::compile(p, &mut kept.ai_clients) {
                    Ok(compiled) => {
                        providers.insert((p.tenant.as_str(), p.name.as_str()), Arc::new(compiled));
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
        let mut credentials = Credentials::default();
        let mut subscriptions = Subscriptions::default();
        let mut limiters = BTreeMap::new();
        let mut live = HashSet::new();
        for spec in &specs {
            match spec {
                Spec::App(a) => {
                    credentials.add_app(&a.tenant, &a.name);
                }
                Spec::JwtIssuer(j) => {
                    let compiled = kept
                        .idp
                        .issuer(j)
                        .and_then(|issuer| credentials.issuers.insert(&j.tenant, issuer));
                    if let Err(m) = compiled {
                        errors.push(ResourceError::new(&spec.key(), m));
                    }
                }
                Spec::Oauth2Introspection(o) => match kept.idp.introspector(o) {
                    Ok(i) => credentials.introspectors.insert(&o.tenant, i),
                    Err(m) => errors.push(ResourceError::new(&spec.key(), m)),
                },
                Spec::Service(s) if s.state != ServiceState::Draft => {
                    let key = spec.key();
                    match ServiceEntry::compile(s, &upstreams, &providers, &policies) {
                        Ok(entry) => {
                            for (id, cluster) in entry.policies.rate_limits.ids() {
                                limiters.insert(id.clone(), cluster);
                            }
                            let entry = Arc::new(entry);
                            for (i, r) in s.routes.iter().enumerate() {
                                let label = r.paths.first().map_or("", String::as_str);
                                let routed = Routed {
                                    service: entry.clone(),
                                    stats: kept.stats.route(&s.tenant, &s.name, label),
                                };
                                live.insert(routed.stats.labels.clone());
                                if let Err(m) = router.add_route(r, routed) {
                                    errors.push(ResourceError::new(&key, format!("routes[{i}].{m}")));
                                }
                            }
                        }
                        Err(m) => errors.push(ResourceError::new(&key, m)),
                    }
                }
                Spec::ApiKey(k) => {
                    credentials.add_key(
                        &k.id,
                        KeyEntry {
                            tenant: k.tenant.clone(),
                            app: k.app.clone(),
                            sha256: k.sha256.to_ascii_lowercase(),
                        },
                    );
                }
                Spec::Subscription(sub) => {
                    subscriptions.insert(&sub.tenant, &sub.service, &sub.app, sub.status);
                }
                _ => {}
            }
        }
        let certificates = CertStore::compile(specs.iter().filter_map(|s| match s {
            Spec::Certificate(c) => Some(c),
            _ => None,
        }))
        .unwrap_or_else(|e| {
            errors.extend(e.iter().map(|(key, m)| ResourceError::new(key, m)));
            CertStore::default()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        kept.stats.keep_only(&live);
        Ok(Snapshot {
            version: state.version,
            router: router.build(),
            credentials,
            subscriptions,
            certificates,
            limiters,
        })
    }
}
