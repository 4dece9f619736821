//! The resource model: the declarative document of DESIGN.md §3 and the records the control
//! plane keeps besides it (API keys, secrets).
//!
//! Every declarative item is keyed by `(kind, tenant, name)`; tenants themselves have an
//! empty tenant. Unknown fields are refused everywhere (`deny_unknown_fields`), so a typo in
//! a file is an error instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// A declarative document: what `tollgate apply -f` reads and `tollgate export` writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<Tenant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<App>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_issuers: Vec<JwtIssuer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth2_introspections: Vec<Oauth2Introspection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ai_providers: Vec<AiProvider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
}

/// Every kind of resource the control plane stores. All but API keys and secrets are
/// declarative (they appear in documents); those two are managed by their own verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Tenant,
    Upstream,
    Service,
    Policy,
    App,
    Subscription,
    JwtIssuer,
    Oauth2Introspection,
    AiProvider,
    Certificate,
    ApiKey,
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Tenant,
        Kind::Upstream,
        Kind::Service,
        Kind::Policy,
        Kind::App,
        Kind::Subscription,
        Kind::JwtIssuer,
        Kind::Oauth2Introspection,
        Kind::AiProvider,
        Kind::Certificate,
        Kind::ApiKey,
        Kind::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::Upstream => "upstream",
            Kind::Service => "service",
            Kind::Policy => "policy",
            Kind::App => "app",
            Kind::Subscription => "subscription",
            Kind::JwtIssuer => "jwt_issuer",
            Kind::Oauth2Introspection => "oauth2_introspection",
            Kind::AiProvider => "ai_provider",
            Kind::Certificate => "certificate",
            Kind::ApiKey => "api_key",
            Kind::Secret => "secret",
        }
    }

    /// The document's list name for this kind (`services` for `service`).
    pub fn list_name(self) -> &'static str {
        match self {
            Kind::Tenant => "tenants",
            Kind::Upstream => "upstreams",
            Kind::Service => "services",
            Kind::Policy => "policies",
            Kind::App => "apps",
            Kind::Subscription => "subscriptions",
            Kind::JwtIssuer => "jwt_issuers",
            Kind::Oauth2Introspection => "oauth2_introspections",
            Kind::AiProvider => "ai_providers",
            Kind::Certificate => "certificates",
            Kind::ApiKey => "api_keys",
            Kind::Secret => "secrets",
        }
    }

    /// Declarative kinds appear in documents, `apply` and `export`.
    pub fn is_declarative(self) -> bool {
        !matches!(self, Kind::ApiKey | Kind::Secret)
    }

    /// Kinds sent to edge nodes over the config stream (secrets never are).
    pub fn is_streamed(self) -> bool {
        !matches!(self, Kind::Secret)
    }

    /// Parses a kind as operators type it: `service`, `services`, `jwt-issuer`...
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s || k.list_name() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a stored resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    /// Empty for tenants.
    pub tenant: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, tenant: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            tenant: tenant.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tenant.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.tenant, self.name)
        }
    }
}

/// A stored resource's content, one variant per kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec", rename_all = "snake_case")]
// Specs live in maps on the control plane and are compiled into other shapes on the edge;
// they are never on a hot path, so boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Spec {
    Tenant(Tenant),
    Upstream(Upstream),
    Service(Service),
    Policy(Policy),
    App(App),
    Subscription(Subscription),
    JwtIssuer(JwtIssuer),
    Oauth2Introspection(Oauth2Introspection),
    AiProvider(AiProvider),
    Certificate(Certificate),
    ApiKey(ApiKey),
    Secret(SecretRecord),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Tenant(_) => Kind::Tenant,
            Spec::Upstream(_) => Kind::Upstream,
            Spec::Service(_) => Kind::Service,
            Spec::Policy(_) => Kind::Policy,
            Spec::App(_) => Kind::App,
            Spec::Subscription(_) => Kind::Subscription,
            Spec::JwtIssuer(_) => Kind::JwtIssuer,
            Spec::Oauth2Introspection(_) => Kind::Oauth2Introspection,
            Spec::AiProvider(_) => Kind::AiProvider,
            Spec::Certificate(_) => Kind::Certificate,
            Spec::ApiKey(_) => Kind::ApiKey,
            Spec::Secret(_) => Kind::Secret,
        }
    }

    pub fn key(&self) -> ResourceKey {
        let (tenant, name) = match self {
            Spec::Tenant(t) => ("", t.name.clone()),
            Spec::Upstream(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::Service(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::Policy(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::App(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::Subscription(r) => (r.tenant.as_str(), r.id()),
            Spec::JwtIssuer(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::Oauth2Introspection(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::AiProvider(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::Certificate(r) => (r.tenant.as_str(), r.name.clone()),
            Spec::ApiKey(r) => (r.tenant.as_str(), r.id.clone()),
            Spec::Secret(r) => (r.tenant.as_str(), r.name.clone()),
        };
        ResourceKey::new(self.kind(), tenant, name)
    }

    /// The optimistic-concurrency guard written in the document, if any.
    pub fn resource_version(&self) -> Option<u64> {
        match self {
            Spec::Tenant(r) => r.resource_version,
            Spec::Upstream(r) => r.resource_version,
            Spec::Service(r) => r.resource_version,
            Spec::Policy(r) => r.resource_version,
            Spec::App(r) => r.resource_version,
            Spec::Subscription(r) => r.resource_version,
            Spec::JwtIssuer(r) => r.resource_version,
            Spec::Oauth2Introspection(r) => r.resource_version,
            Spec::AiProvider(r) => r.resource_version,
            Spec::Certificate(r) => r.resource_version,
            Spec::ApiKey(_) | Spec::Secret(_) => None,
        }
    }

    /// The same spec without its `resource_version` guard (what is stored and compared).
    pub fn without_resource_version(mut self) -> Self {
        match &mut self {
            Spec::Tenant(r) => r.resource_version = None,
            Spec::Upstream(r) => r.resource_version = None,
            Spec::Service(r) => r.resource_version = None,
            Spec::Policy(r) => r.resource_version = None,
            Spec::App(r) => r.resource_version = None,
            Spec::Subscription(r) => r.resource_version = None,
            Spec::JwtIssuer(r) => r.resource_version = None,
            Spec::Oauth2Introspection(r) => r.resource_version = None,
            Spec::AiProvider(r) => r.resource_version = None,
            Spec::Certificate(r) => r.resource_version = None,
            Spec::ApiKey(_) | Spec::Secret(_) => {}
        }
        self
    }

    /// JSON of the inner resource (the declarative form), as sent in `Resource.spec_json`.
    pub fn to_json(&self) -> String {
        let value = match self {
            Spec::Tenant(r) => serde_json::to_string(r),
            Spec::Upstream(r) => serde_json::to_string(r),
            Spec::Service(r) => serde_json::to_string(r),
            Spec::Policy(r) => serde_json::to_string(r),
            Spec::App(r) => serde_json::to_string(r),
            Spec::Subscription(r) => serde_json::to_string(r),
            Spec::JwtIssuer(r) => serde_json::to_string(r),
            Spec::Oauth2Introspection(r) => serde_json::to_string(r),
            Spec::AiProvider(r) => serde_json::to_string(r),
            Spec::Certificate(r) => serde_json::to_string(r),
            Spec::ApiKey(r) => serde_json::to_string(r),
            Spec::Secret(r) => serde_json::to_string(r),
        };
        value.expect("model types always serialize")
    }

    /// The resource as the config stream (and `get`) carries it, at `version`.
    pub fn to_resource(&self, version: u64) -> crate::v1::Resource {
        let key = self.key();
        crate::v1::Resource {
            kind: key.kind.as_str().into(),
            tenant: key.tenant,
            name: key.name,
            version,
            spec_json: self.to_json(),
        }
    }

    /// Inverse of [`Spec::to_json`].
    pub fn from_json(kind: Kind, json: &str) -> Result<Spec, serde_json::Error> {
        Ok(match kind {
            Kind::Tenant => Spec::Tenant(serde_json::from_str(json)?),
            Kind::Upstream => Spec::Upstream(serde_json::from_str(json)?),
            Kind::Service => Spec::Service(serde_json::from_str(json)?),
            Kind::Policy => Spec::Policy(serde_json::from_str(json)?),
            Kind::App => Spec::App(serde_json::from_str(json)?),
            Kind::Subscription => Spec::Subscription(serde_json::from_str(json)?),
            Kind::JwtIssuer => Spec::JwtIssuer(serde_json::from_str(json)?),
            Kind::Oauth2Introspection => Spec::Oauth2Introspection(serde_json::from_str(json)?),
            Kind::AiProvider => Spec::AiProvider(serde_json::from_str(json)?),
            Kind::Certificate => Spec::Certificate(serde_json::from_str(json)?),
            Kind::ApiKey => Spec::ApiKey(serde_json::from_str(json)?),
            Kind::Secret => Spec::Secret(serde_json::from_str(json)?),
        })
    }
}

impl Document {
    /// Parses YAML or JSON (YAML is a superset of JSON). Errors name the line and field.
    pub fn parse(text: &str) -> Result<Document, String> {
        if text.trim().is_empty() {
            return Err("document is empty".into());
        }
        serde_saphyr::from_str(text).map_err(|e| {
            // The first line says where and what ("line 5 column 5: unknown field ..."); the
            // rest is a source snippet, too long for a one-line CLI error.
            let full = e.to_string();
            let first = full.lines().next().unwrap_or_default();
            format!("malformed document: {}", first.trim_start_matches("error: "))
        })
    }

    /// All items as specs, in document order, kinds in dependency order.
    pub fn into_specs(self) -> Vec<Spec> {
        let mut out = Vec::new();
        out.extend(self.tenants.into_iter().map(Spec::Tenant));
        out.extend(self.certificates.into_iter().map(Spec::Certificate));
        out.extend(self.upstreams.into_iter().map(Spec::Upstream));
        out.extend(self.policies.into_iter().map(Spec::Policy));
        out.extend(self.jwt_issuers.into_iter().map(Spec::JwtIssuer));
        out.extend(
            self.oauth2_introspections
                .into_iter()
                .map(Spec::Oauth2Introspection),
        );
        out.extend(self.ai_providers.into_iter().map(Spec::AiProvider));
        out.extend(self.services.into_iter().map(Spec::Service));
        out.extend(self.apps.into_iter().map(Spec::App));
        out.extend(self.subscriptions.into_iter().map(Spec::Subscription));
        out
    }

    /// Builds a document from declarative specs (others are skipped), sorted by key so that
    /// equal configs export byte-identically.
    pub fn from_specs<'a>(specs: impl IntoIterator<Item = &'a Spec>) -> Document {
        let mut doc = Document::default();
        let mut specs: Vec<&Spec> = specs.into_iter().collect();
        specs.sort_by_key(|s| s.key());
        for spec in specs {
            match spec.clone() {
                Spec::Tenant(r) => doc.tenants.push(r),
                Spec::Upstream(r) => doc.upstreams.push(r),
                Spec::Service(r) => doc.services.push(r),
                Spec::Policy(r) => doc.policies.push(r),
                Spec::App(r) => doc.apps.push(r),
                Spec::Subscription(r) => doc.subscriptions.push(r),
                Spec::JwtIssuer(r) => doc.jwt_issuers.push(r),
                Spec::Oauth2Introspection(r) => doc.oauth2_introspections.push(r),
                Spec::AiProvider(r) => doc.ai_providers.push(r),
                Spec::Certificate(r) => doc.certificates.push(r),
                Spec::ApiKey(_) | Spec::Secret(_) => {}
            }
        }
        doc
    }

    /// The tenants this document touches (named as tenants or as the tenant of an item).
    pub fn tenants_named(specs: &[Spec]) -> std::collections::BTreeSet<String> {
        specs
            .iter()
            .map(|s| match s {
                Spec::Tenant(t) => t.name.clone(),
                other => other.key().tenant,
            })
            .collect()
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What a service of this tenant needs before it is published (or deprecated): the
    /// tenant's publishing rules. Empty: no rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_requires: Vec<PublishRequirement>,
    /// Optimistic concurrency: apply only if the stored resource is at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub tenant: String,
    pub targets: Vec<Target>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// For `consistent_hash`: the request header to hash (client IP when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Allow targets on link-local or cloud-metadata addresses (refused by default).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_internal_addresses: bool,
    /// How `https` targets are verified (default: Mozilla's roots, the target's host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

/// TLS towards an upstream's `https` targets. Certificates are always verified unless
/// `insecure_skip_verify` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA certificates to trust *instead of* the default roots (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The name sent as SNI and checked against the certificate, instead of the target's
    /// host (for targets addressed by IP, or behind a shared front).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// DANGEROUS: accept any certificate, so anyone on the path can read and change the
    /// traffic. For throw-away test setups only; prefer `ca_pem`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub url: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    ConsistentHash,
    Ewma,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

fn default_health_interval() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_unhealthy_after() -> u32 {
    3
}
fn default_healthy_after() -> u32 {
    2
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect_timeout")]
    pub connect: HumanDuration,
    #[serde(default = "default_request_timeout")]
    pub request: HumanDuration,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Draft,
    #[default]
    Published,
    Deprecated,
    Retired,
}

/// A tenant's publishing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishRequirement {
    /// Docs a person wrote: an attached `openapi` document or a `description`.
    Docs,
    /// An `owner` (a team or a person to ask).
    Owner,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    #[default]
    Tenant,
    Public,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    #[default]
    Auto,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    ApiKey,
    Jwt,
    Oauth2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub tenant: String,
    /// The API's version label (`v1`), so two versions can live side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub state: ServiceState,
    /// RFC 3339 time sent as `Sunset` while deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    pub approval: Approval,
    #[serde(default)]
    pub auth: Vec<AuthKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who answers for the API: a team or a person (shown in the portal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Labels to find it by in the catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The API's OpenAPI 3 document (an object), shown as its docs in the portal and
    /// returned by `tollgate get openapi`; without one, docs are generated from the routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `/p` prefix, `=/p` exact, `~^re$` regex.
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Exact hosts or `*.example.com` wildcards; empty matches any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Header name -> exact value the request must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_prefix: bool,
}

/// Route of an AI service: either a unified OpenAI-compatible surface over `models`, or a
/// prompt API when `prompt` is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiRoute {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptTemplate>,
    /// How long a streamed answer may be silent before the edge sends a keep-alive comment;
    /// default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<HumanDuration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplate {
    pub template: String,
    #[serde(default)]
    pub variables: Vec<PromptVariable>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptVariable {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// The JSON type a value must have; default string.
    #[serde(default, rename = "type", skip_serializing_if = "VariableType::is_string")]
    pub kind: VariableType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The type of a prompt variable's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariableType {
    #[default]
    String,
    Number,
    Integer,
    Boolean,
}

impl VariableType {
    pub fn is_string(&self) -> bool {
        *self == VariableType::String
    }

    /// Its JSON Schema name.
    pub fn name(&self) -> &'static str {
        match self {
            VariableType::String => "string",
            VariableType::Number => "number",
            VariableType::Integer => "integer",
            VariableType::Boolean => "boolean",
        }
    }
}

/// A policy: exactly one of the kind fields is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_filter: Option<IpFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_size: Option<RequestSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderTransform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_limit: Option<TokenLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

impl Policy {
    /// Names of the kind fields that are set (valid policies have exactly one).
    pub fn kinds_set(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.rate_limit.is_some() {
            v.push("rate_limit");
        }
        if self.quota.is_some() {
            v.push("quota");
        }
        if self.ip_filter.is_some() {
            v.push("ip_filter");
        }
        if self.cors.is_some() {
            v.push("cors");
        }
        if self.request_size.is_some() {
            v.push("request_size");
        }
        if self.headers.is_some() {
            v.push("headers");
        }
        if self.token_limit.is_some() {
            v.push("token_limit");
        }
        v
    }
}

/// What a limit counts by: `app`, `tenant`, `service`, `ip`, `header:<name>` or
/// `claim:<name>` (a claim of the caller's JWT). A request without the app, header or claim
/// is counted by its client address instead.
pub type LimitKey = String;

fn default_limit_key() -> LimitKey {
    "app".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Cluster,
    Local,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreFailure {
    #[default]
    LocalShare,
    Open,
    Closed,
}

/// How a rate limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitAlgorithm {
    /// At most `limit` requests in any `window` (the previous window's count weighted by how
    /// much of it still overlaps).
    #[default]
    SlidingWindow,
    /// `limit` tokens per `window`, refilled evenly, up to `burst` saved.
    TokenBucket,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub limit: u64,
    pub window: HumanDuration,
    #[serde(default = "default_limit_key")]
    pub key: LimitKey,
    #[serde(default)]
    pub scope: LimitScope,
    #[serde(default)]
    pub on_store_failure: OnStoreFailure,
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: LimitAlgorithm,
    /// Token bucket only: most tokens saved up (default `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Month,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub limit: u64,
    pub period: QuotaPeriod,
    #[serde(default = "default_limit_key")]
    pub key: LimitKey,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Proxies whose X-Forwarded-For is believed (CIDRs); the client is the first address
    /// from the right that is not one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_credentials: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSize {
    pub max_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderTransform {
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request: HeaderOps,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response: HeaderOps,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.rename.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Spend cap in USD per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_day: Option<f64>,
    /// Spend cap in USD per month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_month: Option<f64>,
    #[serde(default = "default_limit_key")]
    pub key: LimitKey,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Pending,
    Approved,
    Rejected,
}

impl SubscriptionStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" | "approve" => Some(Self::Approved),
            "rejected" | "reject" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// An app's subscription to a service. Its name is `<app>:<service>`. When `status` is not
/// written, a new subscription starts `approved` for `approval: auto` services and `pending`
/// for `manual` ones, and an existing one keeps its status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub app: String,
    pub service: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SubscriptionStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

impl Subscription {
    pub fn id(&self) -> String {
        format!("{}:{}", self.app, self.service)
    }
}

/// A JWT issuer of a tenant: tokens whose `iss` claim is `issuer` are verified with its keys
/// (a JWKS URL the edges fetch, or static PEM public keys, and for HS algorithms a shared
/// secret) and its rules (algorithms, audiences, leeway); `app_claim` names the calling app.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    pub name: String,
    pub tenant: String,
    /// The exact `iss` of its tokens; one issuer per `iss` within a tenant.
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM public keys (`PUBLIC KEY`, `RSA PUBLIC KEY`) when no JWKS URL is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// Name of the secret (same tenant) holding the shared key of HS256/HS384/HS512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs_secret: Option<String>,
    /// The HS key (hex), filled in by the control plane on the config stream only: refused
    /// in documents, never stored, shown or exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs_key_hex: Option<String>,
    /// Accepted `aud` values; a token must name one of them. With none configured, tokens
    /// that carry an `aud` are refused (RFC 7519 §4.1.3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Allowed algorithms; `none` is never accepted.
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    /// Claim naming the calling app.
    #[serde(default = "default_app_claim")]
    pub app_claim: String,
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_internal_addresses: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

/// Never prints the HS key.
impl fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("issuer", &self.issuer)
            .field("jwks_url", &self.jwks_url)
            .field("public_keys", &self.public_keys.len())
            .field("hs_secret", &self.hs_secret)
            .field("hs_key_hex", &self.hs_key_hex.as_ref().map(|_| "<redacted>"))
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("app_claim", &self.app_claim)
            .field("leeway", &self.leeway)
            .field("resource_version", &self.resource_version)
            .finish_non_exhaustive()
    }
}

/// An OAuth2 token introspection endpoint (RFC 7662) of a tenant. Services with
/// `auth: [oauth2]` send bearer tokens that are not JWTs to it (HTTP Basic client
/// authentication with `client_id` and the secret named by `client_secret_secret`), accept
/// only `active: true` answers, and cache them for at most `cache_ttl` and never past the
/// token's `exp`. The app is the answer's `app_claim` field (`client_id` by default).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oauth2Introspection {
    pub name: String,
    pub tenant: String,
    /// The introspection endpoint (http or https).
    pub url: String,
    pub client_id: String,
    /// Name of the secret (same tenant) holding the client secret.
    pub client_secret_secret: String,
    /// The client secret, filled in by the control plane on the config stream only: refused
    /// in documents, never stored, shown or exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// When set, the answer's `aud` (string or array) must name one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Field of the introspection answer naming the calling app.
    #[serde(default = "default_introspection_app_claim")]
    pub app_claim: String,
    /// Longest time an answer is reused (never past the token's `exp`); `0s` disables the
    /// cache. At most 5m.
    #[serde(default = "default_introspection_cache_ttl")]
    pub cache_ttl: HumanDuration,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_internal_addresses: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

/// Never prints the client secret.
impl fmt::Debug for Oauth2Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oauth2Introspection")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret_secret", &self.client_secret_secret)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("audiences", &self.audiences)
            .field("app_claim", &self.app_claim)
            .field("cache_ttl", &self.cache_ttl)
            .field("resource_version", &self.resource_version)
            .finish_non_exhaustive()
    }
}

fn default_introspection_app_claim() -> String {
    "client_id".into()
}
fn default_introspection_cache_ttl() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_app_claim() -> String {
    "sub".into()
}
fn default_leeway() -> HumanDuration {
    HumanDuration::from_secs(30)
}

pub const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
    "EdDSA",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AiProviderKind {
    Openai,
    Anthropic,
    Gemini,
    Mistral,
    Ollama,
    OpenaiCompatible,
}

/// An LLM provider of a tenant: where it is, how it is spoken to (`kind`), its API keys
/// (named secrets, never the keys themselves) and its models with their prices.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiProvider {
    pub name: String,
    pub tenant: String,
    pub kind: AiProviderKind,
    /// The API's root, without `/v1` (`https://api.openai.com`, `http://127.0.0.1:11434`);
    /// a trailing `/v1` (or `/v1beta` for Gemini) is accepted too.
    pub base_url: String,
    /// Name of the secret (`tollgate secret set`) holding the provider's API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    /// More keys of the same provider (a pool): used in turn, a key answered 401 or 429 is
    /// rested for a while.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_secrets: Vec<String>,
    /// The keys, opened by the control plane on the config stream only: refused in
    /// documents, never stored, shown or exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<String>>,
    /// How long the provider may take to send its answer's head (time to first byte);
    /// default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub models: Vec<AiModel>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_internal_addresses: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

impl AiProvider {
    /// The names of the secrets holding its keys, `api_key_secret` first.
    pub fn key_secrets(&self) -> impl Iterator<Item = &String> {
        self.api_key_secret.iter().chain(&self.api_key_secrets)
    }
}

/// Never prints the keys.
impl fmt::Debug for AiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AiProvider")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key_secret", &self.api_key_secret)
            .field("api_key_secrets", &self.api_key_secrets)
            .field(
                "api_keys",
                &self.api_keys.as_ref().map(|k| format!("<{} redacted>", k.len())),
            )
            .field("models", &self.models)
            .field("resource_version", &self.resource_version)
            .finish_non_exhaustive()
    }
}

/// A model of a provider and its prices, in USD per million tokens of each type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiModel {
    pub name: String,
    /// Uncached input tokens.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// Input tokens read from the provider's prompt cache; default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
    /// Output tokens other than reasoning.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Reasoning ("thinking") tokens; default: the output price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_mtok: Option<f64>,
}

/// A TLS certificate the edges serve (by SNI) for `hosts`. The private key is never written
/// in a document: it is a secret (`tollgate secret set`) of the same tenant, named by
/// `key_secret`. The control plane opens it only when streaming the certificate to edges,
/// which then receive it as `key_pem`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub name: String,
    pub tenant: String,
    /// Exact host names or `*.domain` wildcards, each claimed by one certificate only.
    pub hosts: Vec<String>,
    /// The PEM chain: the server's certificate first, then intermediates.
    pub cert_pem: String,
    /// Name of the secret (same tenant) holding the PEM private key.
    pub key_secret: String,
    /// The private key, filled in by the control plane on the config stream only: refused
    /// in documents, never stored, shown or exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

/// Never prints the private key.
impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("hosts", &self.hosts)
            .field("key_secret", &self.key_secret)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("resource_version", &self.resource_version)
            .finish_non_exhaustive()
    }
}

/// An API key as stored: only its SHA-256 is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Public id (the 12 hex chars after `tgk_`).
    pub id: String,
    pub tenant: String,
    pub app: String,
    /// Hex SHA-256 of the whole key.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Unix milliseconds.
    pub created_ms: u64,
}

/// A secret as stored: AES-256-GCM ciphertext under the cluster's master key, which is kept
/// outside the Raft store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRecord {
    pub name: String,
    pub tenant: String,
    /// Hex of nonce || ciphertext || tag.
    pub sealed: String,
    /// Id of the master key that sealed it.
    pub key_id: String,
    pub updated_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let doc = Document::parse(
            r#"
tenants: [{name: acme}]
upstreams: [{name: orders-be, tenant: acme, targets: [{url: "http://127.0.0.1:9001", weight: 1}],
             balance: round_robin, health: {path: /healthz, interval: 5s, unhealthy_after: 3, healthy_after: 2},
             timeouts: {connect: 2s, request: 30s}, retries: 1}]
services: [{name: orders, tenant: acme, version: v1, state: published, sunset: "2027-06-30T00:00:00Z",
            visibility: tenant, approval: manual, auth: [api_key, jwt], upstream: orders-be,
            policies: [per-app-100rps], routes: [{paths: ["/orders"], methods: [GET, POST], hosts: [], strip_prefix: false}]}]
policies: [{name: per-app-100rps, tenant: acme, rate_limit: {limit: 100, window: 1s, key: app, scope: cluster, on_store_failure: local_share}},
           {name: office, tenant: acme, ip_filter: {allow: ["10.0.0.0/8"], deny: []}}]
apps: [{name: mobile, tenant: acme}]
subscriptions: [{app: mobile, service: orders, tenant: acme}]
jwt_issuers: [{name: idp, tenant: acme, issuer: "https://idp", jwks_url: "https://idp/jwks", audiences: [orders]}]
ai_providers: [{name: openai, tenant: acme, kind: openai, base_url: "https://api.openai.com", api_key_secret: openai-key,
                models: [{name: gpt-4o-mini, input_per_mtok: 0.15, output_per_mtok: 0.60}]}]
"#,
        )
        .unwrap();
        assert_eq!(doc.services[0].auth, vec![AuthKind::ApiKey, AuthKind::Jwt]);
        assert_eq!(doc.upstreams[0].health.as_ref().unwrap().interval.0.as_secs(), 5);
        assert_eq!(doc.clone().into_specs().len(), 9);
        // Round trip through JSON keeps everything.
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(Document::parse(&json).unwrap(), doc);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = Document::parse("apps: [{name: a, tenant: t, colour: red}]").unwrap_err();
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err = Document::parse("aps: []").unwrap_err();
        assert!(err.contains("unknown field `aps`"), "{err}");
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let err =
            Document::parse("tenants: [{name: acme}]\napps:\n  - name: a\n    tenant: t\n    colour: red\n")
                .unwrap_err();
        assert_eq!(
            err,
            "malformed document: line 5 column 5: unknown field `colour`, expected one of name, tenant, description, resource_version"
        );
        let err =
            Document::parse("upstreams:\n  - name: u\n    tenant: t\n    retries: many\n    targets: []\n")
                .unwrap_err();
        assert!(err.contains("line 4"), "{err}");
        let err = Document::parse("apps: [{name: extra, tenant: acme}\nservices: [").unwrap_err();
        assert!(
            err.starts_with("malformed document") && err.contains("line"),
            "{err}"
        );
    }

    #[test]
    fn spec_json_round_trips_per_kind() {
        let spec = Spec::App(App {
            name: "m".into(),
            tenant: "t".into(),
            ..App::default()
        });
        let back = Spec::from_json(Kind::App, &spec.to_json()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(Kind::parse("jwt-issuers"), Some(Kind::JwtIssuer));
        assert_eq!(Kind::parse("svc"), None);
    }

    #[test]
    fn oauth2_introspection_is_a_declarative_kind_whose_secrets_never_print() {
        let doc = Document::parse(
            "oauth2_introspections: [{name: idp, tenant: acme, url: 'https://idp/introspect', client_id: gw, client_secret_secret: gw-secret}]",
        )
        .unwrap();
        let spec = doc.clone().into_specs().remove(0);
        assert_eq!(
            spec.key(),
            ResourceKey::new(Kind::Oauth2Introspection, "acme", "idp")
        );
        assert_eq!(Document::from_specs([&spec]), doc);
        assert_eq!(
            Kind::parse("oauth2-introspections"),
            Some(Kind::Oauth2Introspection)
        );
        assert!(Kind::Oauth2Introspection.is_declarative() && Kind::Oauth2Introspection.is_streamed());
        let Spec::Oauth2Introspection(mut o) = spec else {
            unreachable!()
        };
        assert_eq!((o.app_claim.as_str(), o.cache_ttl.0.as_secs()), ("client_id", 60));
        o.client_secret = Some("s3cr3t".into());
        let streamed = Spec::Oauth2Introspection(o);
        assert_eq!(
            Spec::from_json(Kind::Oauth2Introspection, &streamed.to_json()).unwrap(),
            streamed
        );
        let debug = format!("{streamed:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains("s3cr3t"),
            "{debug}"
        );

        let issuer = JwtIssuer {
            hs_key_hex: Some("deadbeef".into()),
            ..JwtIssuer::default()
        };
        let debug = format!("{issuer:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains("deadbeef"),
            "{debug}"
        );
    }

    #[test]
    fn certificates_are_a_declarative_kind_whose_key_never_prints() {
        let doc = Document::parse(
            "certificates: [{name: web, tenant: acme, hosts: [a.example.com], cert_pem: x, key_secret: web-key}]",
        )
        .unwrap();
        let spec = doc.clone().into_specs().remove(0);
        assert_eq!(spec.key(), ResourceKey::new(Kind::Certificate, "acme", "web"));
        assert_eq!(Document::from_specs([&spec]), doc);
        assert_eq!(Kind::parse("certificates"), Some(Kind::Certificate));
        assert!(Kind::Certificate.is_declarative() && Kind::Certificate.is_streamed());
        // Without a key, none is written; with one (on the stream), it round-trips but
        // never shows in Debug output.
        assert!(!spec.to_json().contains("key_pem"));
        let Spec::Certificate(mut cert) = spec else {
            unreachable!()
        };
        cert.key_pem = Some("-----BEGIN PRIVATE KEY-----".into());
        let streamed = Spec::Certificate(cert);
        assert_eq!(
            Spec::from_json(Kind::Certificate, &streamed.to_json()).unwrap(),
            streamed
        );
        let debug = format!("{streamed:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains("PRIVATE"),
            "{debug}"
        );
    }
}
