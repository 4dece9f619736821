//! Validation of resources: each error names the resource and the field, and says what is
//! wrong in one line, e.g.
//! `service acme/orders: routes[0].paths[1]: invalid regex "~^(": unclosed group`.
//!
//! Two passes: [`validate_spec`] checks one resource on its own (names, URLs, CIDRs,
//! regexes, durations); [`check_references`] checks a whole resulting config (every
//! reference resolves within its tenant). The control plane runs both on the config an apply
//! would produce and commits nothing when either reports an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::model::*;

/// One problem with one field of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// `service acme/orders`
    pub resource: String,
    /// `routes[0].paths[1]`; empty when the problem is the resource as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.resource, self.message)
        } else {
            write!(f, "{}: {}: {}", self.resource, self.field, self.message)
        }
    }
}

/// All problems found; displayed one per line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Collects errors for one resource.
struct Checker<'a> {
    resource: String,
    out: &'a mut Vec<ValidationError>,
}

impl Checker<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(ValidationError {
            resource: self.resource.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn name(&mut self, field: &str, value: &str) {
        if let Err(m) = check_name(value) {
            self.err(field, m);
        }
    }

    fn url(&mut self, field: &str, value: &str, allow_internal: bool) {
        if let Err(m) = check_url(value, allow_internal) {
            self.err(field, m);
        }
    }

    fn header_name(&mut self, field: &str, value: &str) {
        if !is_token(value) {
            self.err(field, format!("invalid header name {value:?}"));
        }
    }

    fn positive(&mut self, field: &str, d: Duration) {
        if d.is_zero() {
            self.err(field, "must be greater than zero");
        }
    }
}

/// Names: 1 to 63 characters of letters, digits, `-`, `_` and `.`, starting with a letter or
/// digit.
pub fn check_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {value:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// RFC 9110 token (header names, methods).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Addresses a gateway must not be pointed at unless the operator says so: link-local
/// (which includes the cloud metadata endpoint 169.254.169.254), and the IPv6 metadata
/// addresses.
pub fn is_internal_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6 == "fd00:ec2::254".parse::<std::net::Ipv6Addr>().expect("literal")
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

const METADATA_HOSTS: [&str; 3] = [
    "metadata.google.internal",
    "metadata",
    "instance-data.ec2.internal",
];

fn check_url(value: &str, allow_internal: bool) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("invalid URL {value:?}: {e}"))?;
    // The WHATWG parser above forgives what edges do not (`http:&/host`, `http:/host`,
    // backslashes): edges read URLs as RFC 3986, so a URL must be one there too, with the
    // same host, or an accepted config would be refused by every edge.
    let strict = value
        .parse::<http::Uri>()
        .map_err(|e| format!("invalid URL {value:?}: {e}"))?;
    let same_host = strict.host().is_some_and(|h| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        url.host_str().is_some_and(|u| {
            u.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(h)
        })
    });
    if !value.contains("://") || !same_host {
        return Err(format!("invalid URL {value:?}: write scheme://host[:port]/path"));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("invalid URL {value:?}: scheme must be http or https"));
    }
    let host = match url.host() {
        Some(h) => h,
        None => return Err(format!("invalid URL {value:?}: no host")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Named without its credentials: errors are shown, logged and audited.
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(format!(
            "invalid URL {:?}: credentials in URLs are refused; use a secret",
            shown.as_str()
        ));
    }
    if !allow_internal {
        let internal = match host {
            url::Host::Ipv4(ip) => is_internal_address(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => is_internal_address(IpAddr::V6(ip)),
            url::Host::Domain(d) => METADATA_HOSTS.contains(&d.trim_end_matches('.')),
        };
        if internal {
            return Err(format!(
                "URL {value:?} points at a link-local or metadata address; set allow_internal_addresses: true if this is intended"
            ));
        }
    }
    Ok(())
}

/// Whether a URL reaches this machine only: host `localhost`, a loopback address, or the
/// unspecified address (which connects to loopback). A URL that does not parse is not.
pub fn is_local_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback() || ip.is_unspecified())
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
pub fn parse_cidr(value: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = value.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    value
        .parse::<IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("invalid CIDR {value:?}"))
}

/// Kinds of route path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch<'a> {
    Prefix(&'a str),
    Exact(&'a str),
    Regex(&'a str),
}

/// Splits a route path into its kind. Regexes are checked by [`compile_route_regex`].
pub fn parse_path(value: &str) -> Result<PathMatch<'_>, String> {
    if let Some(re) = value.strip_prefix('~') {
        return Ok(PathMatch::Regex(re));
    }
    let (path, exact) = match value.strip_prefix('=') {
        Some(p) => (p, true),
        None => (value, false),
    };
    if !path.starts_with('/') {
        return Err(format!(
            "invalid path {value:?}: write /prefix, =/exact or ~regex"
        ));
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
        || path.split('/').any(|seg| seg == "." || seg == "..")
    {
        return Err(format!(
            "invalid path {value:?}: no spaces, control characters, '?', '#' or dot segments"
        ));
    }
    Ok(if exact {
        PathMatch::Exact(path)
    } else {
        PathMatch::Prefix(path)
    })
}

/// Compiles a route regex with a size limit, so a config cannot make the edge's router huge.
pub fn compile_route_regex(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let first = e.to_string();
            let last = first.lines().last().unwrap_or("").trim().to_string();
            format!("invalid regex {:?}: {}", format!("~{re}"), last)
        })
}

fn check_host(value: &str) -> Result<(), String> {
    let h = value.strip_prefix("*.").unwrap_or(value);
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("invalid host {value:?}: write a host name or *.domain"))
    }
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// What a limit's `key` counts by, parsed (the grammar of [`LimitKey`]); the edge compiles
/// the same parse, so what validates is what it enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKeyOf<'a> {
    App,
    Tenant,
    Service,
    Ip,
    /// A header name (an HTTP token).
    Header(&'a str),
    /// A JWT claim name: 1–64 printable characters.
    Claim(&'a str),
}

impl<'a> LimitKeyOf<'a> {
    pub fn parse(key: &'a str) -> Option<LimitKeyOf<'a>> {
        Some(match key {
            "app" => LimitKeyOf::App,
            "tenant" => LimitKeyOf::Tenant,
            "service" => LimitKeyOf::Service,
            "ip" => LimitKeyOf::Ip,
            k => match (k.strip_prefix("header:"), k.strip_prefix("claim:")) {
                (Some(h), _) if is_token(h) => LimitKeyOf::Header(h),
                (_, Some(c)) if !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()) => {
                    LimitKeyOf::Claim(c)
                }
                _ => return None,
            },
        })
    }
}

fn check_limit_key(c: &mut Checker<'_>, field: &str, key: &str) {
    if LimitKeyOf::parse(key).is_none() {
        c.err(
            field,
            format!("invalid key {key:?}: use app, tenant, service, ip, header:<name> or claim:<name>"),
        );
    }
}

/// Checks one resource on its own. Appends to `out`.
pub fn validate_spec(spec: &Spec, out: &mut Vec<ValidationError>) {
    let key = spec.key();
    let mut c = Checker {
        resource: key.to_string(),
        out,
    };
    if key.kind != Kind::Tenant {
        c.name("tenant", &key.tenant);
    }
    match spec {
        Spec::Tenant(t) => c.name("name", &t.name),
        Spec::App(a) => c.name("name", &a.name),
        Spec::Upstream(u) => validate_upstream(&mut c, u),
        Spec::Service(s) => validate_service(&mut c, s),
        Spec::Policy(p) => validate_policy(&mut c, p),
        Spec::Subscription(s) => {
            c.name("app", &s.app);
            c.name("service", &s.service);
        }
        Spec::JwtIssuer(j) => validate_jwt_issuer(&mut c, j),
        Spec::Oauth2Introspection(o) => validate_oauth2_introspection(&mut c, o),
        Spec::AiProvider(p) => validate_ai_provider(&mut c, p),
        Spec::Certificate(cert) => validate_certificate(&mut c, cert),
        Spec::ApiKey(k) => c.name("app", &k.app),
        Spec::Secret(s) => c.name("name", &s.name),
    }
}

fn validate_upstream(c: &mut Checker<'_>, u: &Upstream) {
    c.name("name", &u.name);
    if u.targets.is_empty() {
        c.err("targets", "at least one target is required");
    }
    for (i, t) in u.targets.iter().enumerate() {
        c.url(&format!("targets[{i}].url"), &t.url, u.allow_internal_addresses);
        if t.url.contains('?') {
            c.err(
                format!("targets[{i}].url"),
                "a query is not allowed in a target URL",
            );
        }
        if t.weight > 10_000 {
            c.err(format!("targets[{i}].weight"), "must be at most 10000");
        }
    }
    if !u.targets.is_empty() && u.targets.iter().all(|t| t.weight == 0) {
        c.err("targets", "at least one target needs a weight above zero");
    }
    if let Some(h) = &u.health {
        if !h.path.starts_with('/') {
            c.err(
                "health.path",
                format!("invalid path {:?}: must start with /", h.path),
            );
        }
        if h.interval.0 < Duration::from_millis(100) {
            c.err("health.interval", "must be at least 100ms");
        }
        c.positive("health.timeout", h.timeout.0);
        if h.unhealthy_after == 0 {
            c.err("health.unhealthy_after", "must be at least 1");
        }
        if h.healthy_after == 0 {
            c.err("health.healthy_after", "must be at least 1");
        }
    }
    if let Some(t) = &u.timeouts {
        c.positive("timeouts.connect", t.connect.0);
        c.positive("timeouts.request", t.request.0);
    }
    if u.retries > 10 {
        c.err("retries", "must be at most 10");
    }
    match (&u.hash_header, u.balance) {
        (Some(h), Balance::ConsistentHash) => c.header_name("hash_header", h),
        (Some(_), _) => c.err("hash_header", "only used with balance: consistent_hash"),
        (None, _) => {}
    }
    if let Some(tls) = &u.tls {
        validate_upstream_tls(c, u, tls);
    }
}

fn validate_upstream_tls(c: &mut Checker<'_>, u: &Upstream, tls: &UpstreamTls) {
    if !u.targets.iter().any(|t| t.url.starts_with("https://")) {
        c.err("tls", "only used with https targets, and no target is https");
    }
    if let Some(pem) = &tls.ca_pem {
        if let Err(m) = parse_pem_certificates(pem) {
            c.err("tls.ca_pem", m);
        }
        if tls.insecure_skip_verify {
            c.err(
                "tls.insecure_skip_verify",
                "cannot be combined with ca_pem (with it, no certificate is checked at all)",
            );
        }
    }
    if let Some(name) = &tls.server_name {
        if let Err(m) = check_server_name(name) {
            c.err("tls.server_name", m);
        }
    }
}

/// A TLS server name: a DNS name (no wildcard) or an IP address.
pub fn check_server_name(value: &str) -> Result<(), String> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    match check_host(value) {
        Ok(()) if !value.starts_with("*.") => Ok(()),
        _ => Err(format!(
            "invalid server name {value:?}: write a host name or an IP address"
        )),
    }
}

/// Parses a PEM text holding one or more certificates (and nothing else); returns them as DER.
pub fn parse_pem_certificates(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    let mut certs = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        match item {
            Ok((SectionKind::Certificate, der)) => certs.push(der.into()),
            Ok((SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey, _)) => {
                return Err(
                    "holds a private key: store the key as a secret (tollgate secret set) and name it in key_secret"
                        .into(),
                )
            }
            Ok((kind, _)) => {
                return Err(format!("holds a {kind:?} section; only CERTIFICATE sections belong here"))
            }
            Err(e) => return Err(format!("invalid PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

fn validate_certificate(c: &mut Checker<'_>, cert: &Certificate) {
    c.name("name", &cert.name);
    if cert.hosts.is_empty() {
        c.err("hosts", "at least one host is required");
    }
    let mut seen = BTreeSet::new();
    for (i, h) in cert.hosts.iter().enumerate() {
        if let Err(m) = check_host(h) {
            c.err(format!("hosts[{i}]"), m);
        } else if !seen.insert(normalize_host(h)) {
            c.err(format!("hosts[{i}]"), format!("{h:?} is listed twice"));
        }
    }
    if let Err(m) = parse_pem_certificates(&cert.cert_pem) {
        c.err("cert_pem", m);
    }
    c.name("key_secret", &cert.key_secret);
    if cert.key_pem.is_some() {
        c.err(
            "key_pem",
            "private keys are not written in documents: store the key with `tollgate secret set NAME --tenant T` (PEM on stdin) and name it in key_secret",
        );
    }
}

/// A host as certificates are matched: lowercase, without a trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Reports hosts claimed by more than one certificate (in any tenants): an edge could not
/// tell which one to serve. Each error names both certificates.
pub fn check_certificate_hosts<'a>(
    certs: impl IntoIterator<Item = (&'a ResourceKey, &'a Certificate)>,
    out: &mut Vec<ValidationError>,
) {
    let mut owners: BTreeMap<String, &ResourceKey> = BTreeMap::new();
    for (key, cert) in certs {
        for (i, h) in cert.hosts.iter().enumerate() {
            let host = normalize_host(h);
            match owners.get(&host) {
                Some(owner) if *owner != key => out.push(ValidationError {
                    resource: key.to_string(),
                    field: format!("hosts[{i}]"),
                    message: format!("{h:?} is also claimed by {owner}"),
                }),
                Some(_) => {}
                None => {
                    owners.insert(host, key);
                }
            }
        }
    }
}

/// Most tags on one service.
const MAX_TAGS: usize = 20;
/// Largest OpenAPI document attached to a service (as compact JSON).
pub const MAX_OPENAPI_BYTES: usize = 1 << 20;

/// An attached OpenAPI document: an object of OpenAPI 3.x with `info` and, if any,
/// `paths` as an object, at most [`MAX_OPENAPI_BYTES`].
pub fn check_openapi(doc: &serde_json::Value) -> Result<(), String> {
    let Some(obj) = doc.as_object() else {
        return Err("an OpenAPI 3 document (an object with openapi, info and paths)".into());
    };
    match obj.get("openapi").and_then(|v| v.as_str()) {
        Some(v) if v.starts_with("3.") => {}
        Some(v) => return Err(format!("OpenAPI {v:?} is not supported: give a 3.x document")),
        None => return Err("no \"openapi\" version field: give an OpenAPI 3.x document".into()),
    }
    if !obj.get("info").is_some_and(|i| i.is_object()) {
        return Err("no \"info\" object".into());
    }
    if obj.get("paths").is_some_and(|p| !p.is_object()) {
        return Err("\"paths\" must be an object".into());
    }
    let size = serde_json::to_vec(doc).map_or(usize::MAX, |v| v.len());
    if size > MAX_OPENAPI_BYTES {
        return Err(format!(
            "the document is {} KiB; at most {} KiB",
            size / 1024,
            MAX_OPENAPI_BYTES / 1024
        ));
    }
    Ok(())
}

/// What `svc` lacks under its tenant's publishing `rules`, when it is published or
/// deprecated (a draft or a retired service needs nothing).
pub fn publish_problems(svc: &Service, rules: &[PublishRequirement]) -> Vec<ValidationError> {
    if !matches!(svc.state, ServiceState::Published | ServiceState::Deprecated) {
        return Vec::new();
    }
    let resource = ResourceKey::new(Kind::Service, &svc.tenant, &svc.name).to_string();
    let mut out = Vec::new();
    for rule in rules {
        let (field, missing) = match rule {
            PublishRequirement::Docs => (
                "openapi",
                svc.openapi.is_none() && svc.description.as_deref().is_none_or(|d| d.trim().is_empty()),
            ),
            PublishRequirement::Owner => ("owner", svc.owner.is_none()),
        };
        if missing {
            out.push(ValidationError {
                resource: resource.clone(),
                field: field.into(),
                message: format!(
                    "tenant {} publishes only services with {}: add it, or keep the service a draft",
                    svc.tenant,
                    match rule {
                        PublishRequirement::Docs => "docs (an openapi document or a description)",
                        PublishRequirement::Owner => "an owner",
                    }
                ),
            });
        }
    }
    out
}

fn validate_service(c: &mut Checker<'_>, s: &Service) {
    c.name("name", &s.name);
    if let Some(v) = &s.version {
        c.name("version", v);
    }
    match (&s.upstream, &s.ai) {
        (Some(u), None) => c.name("upstream", u),
        (None, Some(ai)) => validate_ai_route(c, ai),
        (Some(_), Some(_)) => c.err("upstream", "a service has either upstream or ai, not both"),
        (None, None) => c.err("upstream", "a service needs an upstream (or ai)"),
    }
    if let Some(sunset) = &s.sunset {
        if humantime::parse_rfc3339_weak(sunset).is_err() {
            c.err(
                "sunset",
                format!("invalid time {sunset:?}: write RFC 3339, e.g. 2027-06-30T00:00:00Z"),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for a in &s.auth {
        if !seen.insert(a) {
            c.err("auth", format!("{a:?} is listed twice"));
        }
    }
    for (i, p) in s.policies.iter().enumerate() {
        c.name(&format!("policies[{i}]"), p);
    }
    if let Some(owner) = &s.owner {
        if owner.trim().is_empty() || owner.len() > 200 || owner.chars().any(char::is_control) {
            c.err(
                "owner",
                "a team or a person: 1 to 200 characters, no control characters",
            );
        }
    }
    if s.tags.len() > MAX_TAGS {
        c.err("tags", format!("at most {MAX_TAGS} tags"));
    }
    for (i, t) in s.tags.iter().enumerate() {
        c.name(&format!("tags[{i}]"), t);
    }
    if let Some(doc) = &s.openapi {
        if let Err(m) = check_openapi(doc) {
            c.err("openapi", m);
        }
    }
    if s.routes.is_empty() {
        c.err("routes", "at least one route is required");
    }
    for (i, r) in s.routes.iter().enumerate() {
        if r.paths.is_empty() {
            c.err(format!("routes[{i}].paths"), "at least one path is required");
        }
        for (j, p) in r.paths.iter().enumerate() {
            let field = format!("routes[{i}].paths[{j}]");
            match parse_path(p) {
                Ok(PathMatch::Regex(re)) => {
                    if let Err(m) = compile_route_regex(re) {
                        c.err(field, m);
                    } else if r.strip_prefix {
                        c.err(field, "strip_prefix cannot be used with a regex path");
                    }
                }
                Ok(_) => {}
                Err(m) => c.err(field, m),
            }
        }
        for (j, m) in r.methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                c.err(
                    format!("routes[{i}].methods[{j}]"),
                    format!("invalid method {m:?}: use one of {}", METHODS.join(", ")),
                );
            }
        }
        for (j, h) in r.hosts.iter().enumerate() {
            if let Err(m) = check_host(h) {
                c.err(format!("routes[{i}].hosts[{j}]"), m);
            }
        }
        for (name, value) in &r.headers {
            c.header_name(&format!("routes[{i}].headers"), name);
            if !is_header_value(value) {
                c.err(format!("routes[{i}].headers.{name}"), "invalid header value");
            }
        }
    }
}

fn check_model_ref(c: &mut Checker<'_>, field: &str, m: &str) {
    match m.split_once('/') {
        Some((p, model)) if check_name(p).is_ok() && !model.is_empty() => {}
        _ => c.err(
            field,
            format!("invalid model {m:?}: write provider/model or provider/*"),
        ),
    }
}

fn validate_ai_route(c: &mut Checker<'_>, ai: &AiRoute) {
    if ai.models.is_empty() && ai.model.is_none() {
        c.err("ai", "name the models (models: [provider/model]) or a model");
    }
    for (i, m) in ai.models.iter().enumerate() {
        check_model_ref(c, &format!("ai.models[{i}]"), m);
    }
    if let Some(m) = &ai.model {
        check_model_ref(c, "ai.model", m);
    }
    for (i, m) in ai.fallback.iter().enumerate() {
        check_model_ref(c, &format!("ai.fallback[{i}]"), m);
    }
    if let Some(k) = &ai.keepalive {
        if k.0.is_zero() {
            c.err("ai.keepalive", "must be more than 0s");
        }
    }
    if let Some(p) = &ai.prompt {
        if ai.model.is_none() {
            c.err("ai.model", "a prompt API needs a model");
        }
        let declared: BTreeSet<&str> = p.variables.iter().map(|v| v.name.as_str()).collect();
        for (i, v) in p.variables.iter().enumerate() {
            c.name(&format!("ai.prompt.variables[{i}].name"), &v.name);
        }
        let mut rest = p.template.as_str();
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                c.err("ai.prompt.template", "unclosed {{");
                break;
            };
            let var = after[..end].trim();
            if !declared.contains(var) {
                c.err(
                    "ai.prompt.template",
                    format!("uses {{{{{var}}}}}, which is not a declared variable"),
                );
            }
            rest = &after[end + 2..];
        }
    }
}

fn validate_policy(c: &mut Checker<'_>, p: &Policy) {
    c.name("name", &p.name);
    let kinds = p.kinds_set();
    match kinds.len() {
        1 => {}
        0 => c.err(
            "",
            "a policy needs one of rate_limit, quota, ip_filter, cors, request_size, headers, token_limit",
        ),
        _ => c.err(
            "",
            format!("a policy has exactly one kind, found {}", kinds.join(" and ")),
        ),
    }
    if let Some(r) = &p.rate_limit {
        if r.limit == 0 {
            c.err("rate_limit.limit", "must be at least 1");
        }
        c.positive("rate_limit.window", r.window.0);
        if r.window.0 > std::time::Duration::from_secs(86_400) {
            c.err(
                "rate_limit.window",
                "must be at most 24h (use a quota for days and months)",
            );
        }
        check_limit_key(c, "rate_limit.key", &r.key);
        match (r.algorithm, r.burst) {
            (LimitAlgorithm::SlidingWindow, Some(_)) => {
                c.err("rate_limit.burst", "only a token_bucket has a burst")
            }
            (LimitAlgorithm::TokenBucket, Some(0)) => c.err("rate_limit.burst", "must be at least 1"),
            _ => {}
        }
        if r.algorithm == LimitAlgorithm::TokenBucket && r.scope == LimitScope::Cluster {
            c.err(
                "rate_limit.algorithm",
                "token_bucket counts on each edge: give it scope: local (sliding_window is shared across the cluster)",
            );
        }
    }
    if let Some(q) = &p.quota {
        if q.limit == 0 {
            c.err("quota.limit", "must be at least 1");
        }
        check_limit_key(c, "quota.key", &q.key);
    }
    if let Some(f) = &p.ip_filter {
        if f.allow.is_empty() && f.deny.is_empty() {
            c.err("ip_filter", "needs allow or deny");
        }
        for (list, name) in [
            (&f.allow, "allow"),
            (&f.deny, "deny"),
            (&f.trusted_proxies, "trusted_proxies"),
        ] {
            for (i, cidr) in list.iter().enumerate() {
                if let Err(m) = parse_cidr(cidr) {
                    c.err(format!("ip_filter.{name}[{i}]"), m);
                }
            }
        }
    }
    if let Some(cors) = &p.cors {
        for (i, o) in cors.allow_origins.iter().enumerate() {
            if o != "*" {
                if let Err(m) = check_url(o, true) {
                    c.err(format!("cors.allow_origins[{i}]"), m);
                }
            }
        }
        if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
            c.err(
                "cors.allow_credentials",
                "cannot be combined with allow_origins: [\"*\"]",
            );
        }
        for (i, h) in cors.allow_headers.iter().enumerate() {
            c.header_name(&format!("cors.allow_headers[{i}]"), h);
        }
    }
    if let Some(r) = &p.request_size {
        if r.max_bytes == 0 {
            c.err("request_size.max_bytes", "must be at least 1");
        }
    }
    if let Some(h) = &p.headers {
        for (ops, side) in [(&h.request, "request"), (&h.response, "response")] {
            for (name, value) in &ops.add {
                c.header_name(&format!("headers.{side}.add"), name);
                if !is_header_value(value) {
                    c.err(format!("headers.{side}.add.{name}"), "invalid header value");
                }
            }
            for name in &ops.remove {
                c.header_name(&format!("headers.{side}.remove"), name);
            }
            for (from, to) in &ops.rename {
                c.header_name(&format!("headers.{side}.rename"), from);
                c.header_name(&format!("headers.{side}.rename"), to);
            }
        }
    }
    if let Some(t) = &p.token_limit {
        if t.tokens_per_minute.is_none()
            && t.tokens_per_day.is_none()
            && t.cost_per_day.is_none()
            && t.cost_per_month.is_none()
        {
            c.err(
                "token_limit",
                "set tokens_per_minute, tokens_per_day, cost_per_day or cost_per_month",
            );
        }
        for (v, f) in [
            (t.cost_per_day, "cost_per_day"),
            (t.cost_per_month, "cost_per_month"),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v <= 0.0) {
                c.err(format!("token_limit.{f}"), "must be a positive number");
            }
        }
        check_limit_key(c, "token_limit.key", &t.key);
    }
}

/// Checks that `pem` holds one or more PEM public keys and nothing else (a private key
/// pasted by mistake is refused, not published to every edge).
pub fn check_pem_public_key(pem: &str) -> Result<(), String> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    let mut found = 0;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        match item {
            Ok((SectionKind::PublicKey, _)) => found += 1,
            Ok((SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey, _)) => {
                return Err("holds a private key: only public keys belong here".into())
            }
            Ok((kind, _)) => return Err(format!("holds a {kind:?} section; expected PUBLIC KEY")),
            Err(e) => return Err(format!("invalid PEM: {e}")),
        }
    }
    // `RSA PUBLIC KEY` (PKCS#1) is not a section rustls knows; accept it as written.
    let pkcs1 =
        pem.contains("-----BEGIN RSA PUBLIC KEY-----") && pem.contains("-----END RSA PUBLIC KEY-----");
    if found == 0 && !pkcs1 {
        return Err("no PEM public key found (expected -----BEGIN PUBLIC KEY-----)".into());
    }
    Ok(())
}

fn is_hs(alg: &str) -> bool {
    matches!(alg, "HS256" | "HS384" | "HS512")
}

fn validate_jwt_issuer(c: &mut Checker<'_>, j: &JwtIssuer) {
    c.name("name", &j.name);
    if j.issuer.trim().is_empty() {
        c.err("issuer", "must not be empty");
    }
    let any_hs = j.algorithms.iter().any(|a| is_hs(a));
    let any_public = j.algorithms.iter().any(|a| !is_hs(a));
    match (&j.jwks_url, j.public_keys.is_empty()) {
        (Some(u), true) => c.url("jwks_url", u, j.allow_internal_addresses),
        (None, false) => {}
        (Some(_), false) => c.err("jwks_url", "use jwks_url or public_keys, not both"),
        (None, true) if any_public => c.err(
            "jwks_url",
            "a JWT issuer with public-key algorithms needs jwks_url or public_keys",
        ),
        (None, true) => {}
    }
    for (i, pem) in j.public_keys.iter().enumerate() {
        if let Err(m) = check_pem_public_key(pem) {
            c.err(format!("public_keys[{i}]"), m);
        }
    }
    match &j.hs_secret {
        Some(name) => {
            c.name("hs_secret", name);
            if !any_hs {
                c.err(
                    "hs_secret",
                    "only used with HS256, HS384 or HS512, and algorithms names none of them",
                );
            }
        }
        None if any_hs => c.err(
            "hs_secret",
            "HS algorithms need a shared secret: store it with `tollgate secret set NAME --tenant T` and name it in hs_secret",
        ),
        None => {}
    }
    if j.hs_key_hex.is_some() {
        c.err(
            "hs_key_hex",
            "keys are not written in documents: store the key with `tollgate secret set NAME --tenant T` and name it in hs_secret",
        );
    }
    if j.algorithms.is_empty() {
        c.err("algorithms", "at least one algorithm is required");
    }
    let mut seen = BTreeSet::new();
    for (i, a) in j.algorithms.iter().enumerate() {
        if a.eq_ignore_ascii_case("none") {
            c.err(format!("algorithms[{i}]"), "\"none\" is never accepted");
        } else if !JWT_ALGORITHMS.contains(&a.as_str()) {
            c.err(
                format!("algorithms[{i}]"),
                format!(
                    "unknown algorithm {a:?}: use one of {}",
                    JWT_ALGORITHMS.join(", ")
                ),
            );
        } else if !seen.insert(a) {
            c.err(format!("algorithms[{i}]"), format!("{a:?} is listed twice"));
        }
    }
    check_token_claims(c, &j.audiences, &j.app_claim);
    if j.leeway.0 > Duration::from_secs(300) {
        c.err("leeway", "must be at most 5m");
    }
}

/// What JWT issuers and introspection endpoints share: audiences and the app's claim.
fn check_token_claims(c: &mut Checker<'_>, audiences: &[String], app_claim: &str) {
    for (i, a) in audiences.iter().enumerate() {
        if a.is_empty() {
            c.err(format!("audiences[{i}]"), "must not be empty");
        }
    }
    if app_claim.trim().is_empty() {
        c.err("app_claim", "must not be empty");
    }
}

fn validate_oauth2_introspection(c: &mut Checker<'_>, o: &Oauth2Introspection) {
    c.name("name", &o.name);
    c.url("url", &o.url, o.allow_internal_addresses);
    if o.client_id.is_empty() || o.client_id.contains(':') || !is_header_value(&o.client_id) {
        c.err(
            "client_id",
            "must be non-empty printable ASCII without ':' (it is sent in HTTP Basic authentication)",
        );
    }
    c.name("client_secret_secret", &o.client_secret_secret);
    if o.client_secret.is_some() {
        c.err(
            "client_secret",
            "secrets are not written in documents: store it with `tollgate secret set NAME --tenant T` and name it in client_secret_secret",
        );
    }
    check_token_claims(c, &o.audiences, &o.app_claim);
    if o.cache_ttl.0 > Duration::from_secs(300) {
        c.err("cache_ttl", "must be at most 5m");
    }
}

fn validate_ai_provider(c: &mut Checker<'_>, p: &AiProvider) {
    c.name("name", &p.name);
    c.url("base_url", &p.base_url, p.allow_internal_addresses);
    if let Some(s) = &p.api_key_secret {
        c.name("api_key_secret", s);
    }
    for (i, s) in p.api_key_secrets.iter().enumerate() {
        c.name(&format!("api_key_secrets[{i}]"), s);
    }
    if p.api_keys.is_some() {
        c.err(
            "api_keys",
            "keys are not written in documents: store each with `tollgate secret set NAME --tenant T` and name it in api_key_secret or api_key_secrets",
        );
    }
    if let Some(t) = &p.timeout {
        if t.0.is_zero() {
            c.err("timeout", "must be more than 0s");
        }
    }
    let mut seen = BTreeSet::new();
    for (i, m) in p.models.iter().enumerate() {
        if m.name.trim().is_empty() {
            c.err(format!("models[{i}].name"), "must not be empty");
        }
        if !seen.insert(&m.name) {
            c.err(
                format!("models[{i}].name"),
                format!("{:?} is listed twice", m.name),
            );
        }
        for (v, f) in [
            (m.input_per_mtok, "input_per_mtok"),
            (m.cached_input_per_mtok.unwrap_or(0.0), "cached_input_per_mtok"),
            (m.output_per_mtok, "output_per_mtok"),
            (m.reasoning_per_mtok.unwrap_or(0.0), "reasoning_per_mtok"),
        ] {
            if !v.is_finite() || v < 0.0 {
                c.err(format!("models[{i}].{f}"), "must be zero or more");
            }
        }
    }
}

/// Reports items named twice in one document.
pub fn check_duplicates(specs: &[Spec], out: &mut Vec<ValidationError>) {
    let mut seen = BTreeSet::new();
    for s in specs {
        let key = s.key();
        if !seen.insert(key.clone()) {
            out.push(ValidationError {
                resource: key.to_string(),
                field: String::new(),
                message: format!("named twice in {}", key.kind.list_name()),
            });
        }
    }
}

/// What `spec` refers to: `(field, key)` pairs, each of which must exist in the same config.
/// Every resource but a tenant refers to its tenant.
pub fn references(key: &ResourceKey, spec: &Spec) -> Vec<(String, ResourceKey)> {
    let mut refs = Vec::new();
    let tenant = key.tenant.as_str();
    let mut need = |field: String, kind: Kind, name: &str| {
        let t = if kind == Kind::Tenant { "" } else { tenant };
        refs.push((field, ResourceKey::new(kind, t, name)));
    };
    if key.kind != Kind::Tenant {
        need("tenant".into(), Kind::Tenant, tenant);
    }
    match spec {
        Spec::Service(s) => {
            if let Some(u) = &s.upstream {
                need("upstream".into(), Kind::Upstream, u);
            }
            for (i, p) in s.policies.iter().enumerate() {
                need(format!("policies[{i}]"), Kind::Policy, p);
            }
            if let Some(ai) = &s.ai {
                let models = ai
                    .models
                    .iter()
                    .map(|m| ("ai.models", m))
                    .chain(ai.model.iter().map(|m| ("ai.model", m)))
                    .chain(ai.fallback.iter().map(|m| ("ai.fallback", m)));
                for (field, m) in models {
                    if let Some((provider, _)) = m.split_once('/') {
                        need(field.into(), Kind::AiProvider, provider);
                    }
                }
            }
        }
        Spec::Subscription(s) => {
            need("app".into(), Kind::App, &s.app);
            need("service".into(), Kind::Service, &s.service);
        }
        Spec::ApiKey(k) => need("app".into(), Kind::App, &k.app),
        Spec::Certificate(c) => need("key_secret".into(), Kind::Secret, &c.key_secret),
        Spec::AiProvider(p) => {
            if let Some(s) = &p.api_key_secret {
                need("api_key_secret".into(), Kind::Secret, s);
            }
            for (i, s) in p.api_key_secrets.iter().enumerate() {
                need(format!("api_key_secrets[{i}]"), Kind::Secret, s);
            }
        }
        Spec::JwtIssuer(j) => {
            if let Some(s) = &j.hs_secret {
                need("hs_secret".into(), Kind::Secret, s);
            }
        }
        Spec::Oauth2Introspection(o) => need(
            "client_secret_secret".into(),
            Kind::Secret,
            &o.client_secret_secret,
        ),
        _ => {}
    }
    refs
}

/// Checks `spec`'s references: `exists` says whether a key is in the resulting config,
/// `deleting` whether the change at hand removes it (for a clearer message).
pub fn check_spec_references(
    key: &ResourceKey,
    spec: &Spec,
    exists: &dyn Fn(&ResourceKey) -> bool,
    deleting: &dyn Fn(&ResourceKey) -> bool,
    out: &mut Vec<ValidationError>,
) {
    for (field, target) in references(key, spec) {
        if exists(&target) {
            continue;
        }
        let what = if target.tenant.is_empty() {
            target.name.clone()
        } else {
            format!("{}/{}", target.tenant, target.name)
        };
        let why = if deleting(&target) {
            "which this change deletes"
        } else {
            "which does not exist"
        };
        out.push(ValidationError {
            resource: key.to_string(),
            field,
            message: format!("references {} {what}, {why}", target.kind),
        });
    }
}

/// Reports two JWT issuers of one tenant with the same `issuer` (`iss`): an edge picks the
/// issuer of a token by its `iss`, so it could not tell which one to use.
pub fn check_jwt_issuers<'a>(
    issuers: impl IntoIterator<Item = (&'a ResourceKey, &'a JwtIssuer)>,
    out: &mut Vec<ValidationError>,
) {
    let mut owners: BTreeMap<(&str, &str), &ResourceKey> = BTreeMap::new();
    for (key, j) in issuers {
        match owners.get(&(key.tenant.as_str(), j.issuer.as_str())) {
            Some(owner) if *owner != key => out.push(ValidationError {
                resource: key.to_string(),
                field: "issuer".into(),
                message: format!("{:?} is also the issuer of {owner}", j.issuer),
            }),
            Some(_) => {}
            None => {
                owners.insert((key.tenant.as_str(), j.issuer.as_str()), key);
            }
        }
    }
}

/// Checks that every reference in `config` (a whole config) resolves in the same tenant,
/// that no host is claimed by two certificates and no `iss` by two issuers of a tenant.
pub fn check_references(config: &BTreeMap<ResourceKey, Spec>, out: &mut Vec<ValidationError>) {
    for (key, spec) in config {
        check_spec_references(key, spec, &|k| config.contains_key(k), &|_| false, out);
        if let Spec::Service(svc) = spec {
            if let Some(Spec::Tenant(t)) = config.get(&ResourceKey::new(Kind::Tenant, "", &svc.tenant)) {
                out.extend(publish_problems(svc, &t.publish_requires));
            }
        }
    }
    check_certificate_hosts(
        config.iter().filter_map(|(k, s)| match s {
            Spec::Certificate(c) => Some((k, c)),
            _ => None,
        }),
        out,
    );
    check_jwt_issuers(
        config.iter().filter_map(|(k, s)| match s {
            Spec::JwtIssuer(j) => Some((k, j)),
            _ => None,
        }),
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_local() {
        for url in [
            "http://127.0.0.1:7700",
            "http://127.9.9.9:7700",
            "http://localhost:7700",
            "http://[::1]:7700",
            "http://0.0.0.0:7700",
        ] {
            assert!(is_local_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.5:7700",
            "http://cp1.internal:7700",
            "http://[2001:db8::1]:7700",
            "http://127.0.0.1.example.com:7700",
            "not a url",
        ] {
            assert!(!is_local_url(url), "{url}");
        }
    }

    fn errors_of(yaml: &str) -> Vec<String> {
        let specs = Document::parse(yaml).unwrap().into_specs();
        let mut out = Vec::new();
        check_duplicates(&specs, &mut out);
        for s in &specs {
            validate_spec(s, &mut out);
        }
        let config: BTreeMap<_, _> = specs.into_iter().map(|s| (s.key(), s)).collect();
        check_references(&config, &mut out);
        out.iter().map(|e| e.to_string()).collect()
    }

    const BASE: &str = "tenants: [{name: acme}]\nupstreams: [{name: be, tenant: acme, targets: [{url: 'http://127.0.0.1:9001'}]}]\n";

    #[test]
    fn a_valid_document_has_no_errors() {
        let doc = format!(
            "{BASE}services: [{{name: orders, tenant: acme, upstream: be, routes: [{{paths: ['/orders', '=/exact', '~^/v[0-9]+/x$']}}]}}]\napps: [{{name: m, tenant: acme}}]\nsubscriptions: [{{app: m, service: orders, tenant: acme}}]\n"
        );
        assert_eq!(errors_of(&doc), Vec::<String>::new());
        let limits = format!(
            "{BASE}policies:
  - {{name: a, tenant: acme, rate_limit: {{limit: 5, window: 1s, key: 'claim:org_id'}}}}
  - {{name: b, tenant: acme, rate_limit: {{limit: 5, window: 1m, key: service, scope: local, algorithm: token_bucket, burst: 10}}}}
  - {{name: c, tenant: acme, rate_limit: {{limit: 5, window: 24h, key: 'header:x-user', on_store_failure: closed}}}}
"
        );
        assert_eq!(errors_of(&limits), Vec::<String>::new());
    }

    #[test]
    fn each_error_names_resource_and_field() {
        let cases = [
            (
                format!("{BASE}services: [{{name: s, tenant: acme, upstream: nope, routes: [{{paths: ['/x']}}]}}]"),
                "service acme/s: upstream: references upstream acme/nope, which does not exist",
            ),
            (
                format!("{BASE}services: [{{name: s, tenant: acme, upstream: be, routes: [{{paths: ['/x', '~^(']}}]}}]"),
                "service acme/s: routes[0].paths[1]: invalid regex \"~^(\"",
            ),
            (
                format!("{BASE}policies: [{{name: p, tenant: acme, ip_filter: {{allow: ['10.0.0.0/33']}}}}]"),
                "policy acme/p: ip_filter.allow[0]: invalid CIDR \"10.0.0.0/33\"",
            ),
            (
                format!("{BASE}apps: [{{name: a, tenant: acme}}, {{name: a, tenant: acme}}]"),
                "app acme/a: named twice in apps",
            ),
            (
                "upstreams: [{name: be, tenant: ghost, targets: [{url: 'http://10.0.0.1'}]}]".to_string(),
                "upstream ghost/be: tenant: references tenant ghost, which does not exist",
            ),
            (
                "tenants: [{name: 'bad name'}]".to_string(),
                "tenant bad name: name: invalid name \"bad name\"",
            ),
            (
                "tenants: [{name: acme}]\nupstreams: [{name: md, tenant: acme, targets: [{url: 'http://169.254.169.254/'}]}]".to_string(),
                "upstream acme/md: targets[0].url: URL \"http://169.254.169.254/\" points at a link-local or metadata address",
            ),
            // The refusal names the URL without the credentials (errors are audited).
            (
                "tenants: [{name: acme}]\nupstreams: [{name: be, tenant: acme, targets: [{url: 'http://u:hunter2@10.0.0.1/'}]}]".to_string(),
                "upstream acme/be: targets[0].url: invalid URL \"http://10.0.0.1/\": credentials in URLs are refused; use a secret",
            ),
            // Found by fuzzing (issue 14): URLs the WHATWG parser forgives and edges refuse.
            (
                "tenants: [{name: acme}]\nupstreams: [{name: be, tenant: acme, targets: [{url: 'http:&/127.0.0.1:9001'}]}]".to_string(),
                "upstream acme/be: targets[0].url: invalid URL \"http:&/127.0.0.1:9001\": invalid format",
            ),
            (
                "tenants: [{name: acme}]\nupstreams: [{name: be, tenant: acme, targets: [{url: 'http:/10.0.0.1'}]}]".to_string(),
                "upstream acme/be: targets[0].url: invalid URL \"http:/10.0.0.1\": invalid format",
            ),
            (
                "tenants: [{name: acme}]\nupstreams: [{name: be, tenant: acme, targets: [{url: 'http://10.0.0.1/a?b=1'}]}]".to_string(),
                "upstream acme/be: targets[0].url: a query is not allowed in a target URL",
            ),
            (
                format!("{BASE}jwt_issuers: [{{name: i, tenant: acme, issuer: x, jwks_url: 'https://idp/jwks', algorithms: [none]}}]"),
                "jwt_issuer acme/i: algorithms[0]: \"none\" is never accepted",
            ),
            (
                format!("{BASE}policies: [{{name: p, tenant: acme, rate_limit: {{limit: 0, window: 1s}}}}]"),
                "policy acme/p: rate_limit.limit: must be at least 1",
            ),
            (
                format!("{BASE}policies: [{{name: p, tenant: acme, rate_limit: {{limit: 5, window: 1s, key: 'cookie:x'}}}}]"),
                "policy acme/p: rate_limit.key: invalid key \"cookie:x\": use app, tenant, service, ip, header:<name> or claim:<name>",
            ),
            (
                format!("{BASE}policies: [{{name: p, tenant: acme, rate_limit: {{limit: 5, window: 2d}}}}]"),
                "policy acme/p: rate_limit.window: must be at most 24h (use a quota for days and months)",
            ),
            (
                format!("{BASE}policies: [{{name: p, tenant: acme, rate_limit: {{limit: 5, window: 1s, burst: 9}}}}]"),
                "policy acme/p: rate_limit.burst: only a token_bucket has a burst",
            ),
            (
                format!("{BASE}policies: [{{name: p, tenant: acme, rate_limit: {{limit: 5, window: 1s, algorithm: token_bucket}}}}]"),
                "policy acme/p: rate_limit.algorithm: token_bucket counts on each edge: give it scope: local (sliding_window is shared across the cluster)",
            ),
            (
                format!("{BASE}policies: [{{name: p, tenant: acme, rate_limit: {{limit: 5, window: 1s, algorithm: token_bucket, scope: local, burst: 0}}}}]"),
                "policy acme/p: rate_limit.burst: must be at least 1",
            ),
        ];
        for (doc, want) in cases {
            let errs = errors_of(&doc);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errs:#?}"
            );
        }
    }

    /// A real certificate (a.example.com, from edge-node's test data) and its key.
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBxjCCAWugAwIBAgIUSy7Y1QKPWpR5xKuhRq2vlaV15X0wCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQVG9sbGdhdGUgdGVzdCBDQTAgFw0yNjExMjYwOTM1MjBaGA8y\nMTI2MTEwMjA5MzUyMFowGDEWMBQGA1UEAwwNYS5leGFtcGxlLmNvbTBZMBMGByqG\nSM49AgEGCCqGSM49AwEHA0IABGFPyOpkewDDZLL+8PUN1xjqsdzehxR0WeHGIO1Y\n8poazLC3UVxIDcgjkdDepT6uhGgawkuohTMAEK1HQDf1K/mjgY0wgYowGAYDVR0R\nBBEwD4INYS5leGFtcGxlLmNvbTAJBgNVHRMEAjAAMA4GA1UdDwEB/wQEAwIHgDAT\nBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQUUzt1YPyUp+Dg0iuOmsJIb4Qy\nVcAwHwYDVR0jBBgwFoAUrV1ZkvYCo0s+ps2su63YSW/KUKIwCgYIKoZIzj0EAwID\nSQAwRgIhANzVbAZpGBOarMwUQoazBaanDdoeQ6PCmddrXMOyG3JaAiEA6eYYyV5O\nDZqG/NZQ2upaOLHg6kbGuqsIARUrrPYxxBY=\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgaN0CTF7tq2MeUVjw\njo0U2loi0OemGzOYrTraICQKHtWhRANCAARhT8jqZHsAw2Sy/vD1DdcY6rHc3ocU\ndFnhxiDtWPKaGsywt1FcSA3II5HQ3qU+roRoGsJLqIUzABCtR0A39Sv5\n-----END PRIVATE KEY-----\n";

    fn certificates(extra: &str) -> String {
        let cert = CERT.replace('\n', "\\n");
        format!(
            "tenants: [{{name: acme}}, {{name: other}}]\ncertificates:\n  - {{name: a, tenant: acme, hosts: [api.example.com, '*.example.com'], cert_pem: \"{cert}\", key_secret: a-key}}\n{extra}"
        )
    }

    /// `errors_of` plus the secrets certificates name (secrets are not in documents).
    fn certificate_errors(yaml: &str, secrets: &[(&str, &str)]) -> Vec<String> {
        let specs = Document::parse(yaml).unwrap().into_specs();
        let mut out = Vec::new();
        for s in &specs {
            validate_spec(s, &mut out);
        }
        let mut config: BTreeMap<_, _> = specs.into_iter().map(|s| (s.key(), s)).collect();
        for (tenant, name) in secrets {
            let secret = Spec::Secret(SecretRecord {
                name: name.to_string(),
                tenant: tenant.to_string(),
                sealed: String::new(),
                key_id: String::new(),
                updated_ms: 0,
            });
            config.insert(secret.key(), secret);
        }
        check_references(&config, &mut out);
        out.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_valid_certificate_has_no_errors() {
        let errs = certificate_errors(&certificates(""), &[("acme", "a-key")]);
        assert_eq!(errs, Vec::<String>::new());
        let certs = parse_pem_certificates(&format!("{CERT}{CERT}")).unwrap();
        assert_eq!(certs.len(), 2, "a chain is several certificates");
    }

    #[test]
    fn certificate_errors_name_the_field() {
        let cases = [
            (
                certificates("").replace("CERTIFICATE", "NONSENSE"),
                "certificate acme/a: cert_pem: no PEM certificate found",
            ),
            (
                certificates("").replace("MII", "!!!"),
                "certificate acme/a: cert_pem: invalid PEM",
            ),
            (
                certificates("").replace("hosts: [api.example.com, '*.example.com']", "hosts: []"),
                "certificate acme/a: hosts: at least one host is required",
            ),
            (
                certificates("").replace("'*.example.com'", "'a.*.com'"),
                "certificate acme/a: hosts[1]: invalid host \"a.*.com\"",
            ),
            (
                certificates("").replace("'*.example.com'", "API.example.com"),
                "certificate acme/a: hosts[1]: \"API.example.com\" is listed twice",
            ),
            (
                certificates("").replace("key_secret: a-key", "key_secret: a-key, key_pem: x"),
                "certificate acme/a: key_pem: private keys are not written in documents",
            ),
        ];
        for (doc, want) in cases {
            let errs = certificate_errors(&doc, &[("acme", "a-key")]);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errs:#?}"
            );
        }
        // A private key pasted into cert_pem is refused with a pointer to secrets.
        let with_key = format!("{CERT}{KEY}");
        let err = parse_pem_certificates(&with_key).unwrap_err();
        assert!(err.contains("holds a private key"), "{err}");
    }

    #[test]
    fn a_certificate_needs_its_key_secret_in_its_tenant() {
        let errs = certificate_errors(&certificates(""), &[]);
        assert_eq!(
            errs,
            ["certificate acme/a: key_secret: references secret acme/a-key, which does not exist"]
        );
        // A secret of that name in another tenant does not count.
        let errs = certificate_errors(&certificates(""), &[("other", "a-key")]);
        assert_eq!(errs.len(), 1, "{errs:?}");
    }

    #[test]
    fn two_certificates_cannot_claim_one_host_in_any_tenants() {
        let cert = CERT.replace('\n', "\\n");
        let second = format!(
            "  - {{name: b, tenant: other, hosts: [www.example.com, API.Example.com], cert_pem: \"{cert}\", key_secret: b-key}}\n"
        );
        let errs = certificate_errors(&certificates(&second), &[("acme", "a-key"), ("other", "b-key")]);
        assert_eq!(
            errs,
            ["certificate other/b: hosts[1]: \"API.Example.com\" is also claimed by certificate acme/a"]
        );
        // Within one tenant too; a wildcard and an exact host under it do not conflict.
        let third = format!(
            "  - {{name: c, tenant: acme, hosts: ['*.example.com', x.example.com], cert_pem: \"{cert}\", key_secret: a-key}}\n"
        );
        let errs = certificate_errors(&certificates(&third), &[("acme", "a-key")]);
        assert_eq!(
            errs,
            ["certificate acme/c: hosts[0]: \"*.example.com\" is also claimed by certificate acme/a"]
        );
    }

    #[test]
    fn upstream_tls_options_are_checked() {
        let up = |tls: &str, url: &str| {
            format!("tenants: [{{name: acme}}]\nupstreams: [{{name: be, tenant: acme, targets: [{{url: '{url}'}}], tls: {tls}}}]")
        };
        let ca = CERT.replace('\n', "\\n");
        let ok = [
            format!("{{ca_pem: \"{ca}\", server_name: internal.example}}"),
            "{server_name: 10.0.0.1}".to_string(),
            "{insecure_skip_verify: true}".to_string(),
        ];
        for tls in ok {
            assert_eq!(
                errors_of(&up(&tls, "https://10.0.0.1:8443")),
                Vec::<String>::new(),
                "{tls}"
            );
        }
        let cases = [
            (
                up("{ca_pem: nope}", "https://h"),
                "upstream acme/be: tls.ca_pem: no PEM certificate found",
            ),
            (
                up("{server_name: '*.x'}", "https://h"),
                "upstream acme/be: tls.server_name: invalid server name",
            ),
            (
                up(
                    &format!("{{ca_pem: \"{ca}\", insecure_skip_verify: true}}"),
                    "https://h",
                ),
                "upstream acme/be: tls.insecure_skip_verify: cannot be combined with ca_pem",
            ),
            (
                up("{server_name: h}", "http://h"),
                "upstream acme/be: tls: only used with https targets",
            ),
        ];
        for (doc, want) in cases {
            let errs = errors_of(&doc);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errs:#?}"
            );
        }
    }

    /// `errors_of` with secrets `acme/hs` and `acme/introspect` present.
    fn errors_with_secrets(yaml: &str) -> Vec<String> {
        let specs = Document::parse(yaml).unwrap().into_specs();
        let mut out = Vec::new();
        for s in &specs {
            validate_spec(s, &mut out);
        }
        let mut config: BTreeMap<_, _> = specs.into_iter().map(|s| (s.key(), s)).collect();
        for name in ["hs", "introspect"] {
            let secret = Spec::Secret(SecretRecord {
                name: name.into(),
                tenant: "acme".into(),
                sealed: String::new(),
                key_id: String::new(),
                updated_ms: 0,
            });
            config.insert(secret.key(), secret);
        }
        check_references(&config, &mut out);
        out.iter().map(|e| e.to_string()).collect()
    }

    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\\n-----END PUBLIC KEY-----\\n";

    #[test]
    fn jwt_issuers_and_introspection_are_checked() {
        let ok = [
            "jwt_issuers: [{name: i, tenant: acme, issuer: x, jwks_url: 'https://idp/jwks', audiences: [orders]}]".to_string(),
            "jwt_issuers: [{name: i, tenant: acme, issuer: x, algorithms: [HS256], hs_secret: hs}]".to_string(),
            format!("jwt_issuers: [{{name: i, tenant: acme, issuer: x, algorithms: [EdDSA, HS512], hs_secret: hs, public_keys: [\"{ED_PUBLIC}\"]}}]"),
            "oauth2_introspections: [{name: o, tenant: acme, url: 'https://idp/introspect', client_id: gw, client_secret_secret: introspect}]".to_string(),
        ];
        for doc in ok {
            let doc = format!("tenants: [{{name: acme}}]\n{doc}");
            assert_eq!(errors_with_secrets(&doc), Vec::<String>::new(), "{doc}");
        }
        let cases = [
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, algorithms: [HS256]}]",
                "jwt_issuer acme/i: hs_secret: HS algorithms need a shared secret",
            ),
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, jwks_url: 'https://idp/j', hs_secret: hs}]",
                "jwt_issuer acme/i: hs_secret: only used with HS256",
            ),
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, algorithms: [HS256], hs_secret: nope}]",
                "jwt_issuer acme/i: hs_secret: references secret acme/nope, which does not exist",
            ),
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, algorithms: [HS256], hs_secret: hs, hs_key_hex: '00'}]",
                "jwt_issuer acme/i: hs_key_hex: keys are not written in documents",
            ),
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, algorithms: [RS256]}]",
                "jwt_issuer acme/i: jwks_url: a JWT issuer with public-key algorithms needs jwks_url or public_keys",
            ),
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, public_keys: [\"-----BEGIN PRIVATE KEY-----\\nMC4CAQAwBQYDK2VwBCIEIA==\\n-----END PRIVATE KEY-----\\n\"]}]",
                "jwt_issuer acme/i: public_keys[0]: holds a private key",
            ),
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, jwks_url: 'http://169.254.169.254/jwks'}]",
                "jwt_issuer acme/i: jwks_url: URL \"http://169.254.169.254/jwks\" points at a link-local or metadata address",
            ),
            (
                "jwt_issuers: [{name: i, tenant: acme, issuer: x, jwks_url: 'https://a/j'}, {name: j, tenant: acme, issuer: x, jwks_url: 'https://b/j'}]",
                "jwt_issuer acme/j: issuer: \"x\" is also the issuer of jwt_issuer acme/i",
            ),
            (
                "oauth2_introspections: [{name: o, tenant: acme, url: 'http://metadata.google.internal/x', client_id: gw, client_secret_secret: introspect}]",
                "oauth2_introspection acme/o: url: URL \"http://metadata.google.internal/x\" points at a link-local or metadata address",
            ),
            (
                "oauth2_introspections: [{name: o, tenant: acme, url: 'https://idp/i', client_id: 'a:b', client_secret_secret: introspect}]",
                "oauth2_introspection acme/o: client_id: must be non-empty printable ASCII without ':'",
            ),
            (
                "oauth2_introspections: [{name: o, tenant: acme, url: 'https://idp/i', client_id: gw, client_secret_secret: missing}]",
                "oauth2_introspection acme/o: client_secret_secret: references secret acme/missing, which does not exist",
            ),
            (
                "oauth2_introspections: [{name: o, tenant: acme, url: 'https://idp/i', client_id: gw, client_secret_secret: introspect, client_secret: shh}]",
                "oauth2_introspection acme/o: client_secret: secrets are not written in documents",
            ),
            (
                "oauth2_introspections: [{name: o, tenant: acme, url: 'https://idp/i', client_id: gw, client_secret_secret: introspect, cache_ttl: 1h}]",
                "oauth2_introspection acme/o: cache_ttl: must be at most 5m",
            ),
        ];
        for (doc, want) in cases {
            let errs = errors_with_secrets(&format!("tenants: [{{name: acme}}]\n{doc}"));
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errs:#?}"
            );
        }
        // The same `iss` in two tenants is fine.
        let two = "tenants: [{name: acme}, {name: b}]\njwt_issuers: [{name: i, tenant: acme, issuer: x, jwks_url: 'https://a/j'}, {name: i, tenant: b, issuer: x, jwks_url: 'https://a/j'}]";
        assert_eq!(errors_with_secrets(two), Vec::<String>::new());
    }

    #[test]
    fn cidrs_v4_v6_and_single_addresses() {
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("2001:db8::/32").is_ok());
        assert!(parse_cidr("192.168.1.1").is_ok());
        assert!(parse_cidr("::1").is_ok());
        assert!(parse_cidr("300.0.0.0/8").is_err());
        assert!(parse_cidr("10.0.0.0/").is_err());
    }

    #[test]
    fn paths_reject_dot_segments_and_junk() {
        assert_eq!(parse_path("/a"), Ok(PathMatch::Prefix("/a")));
        assert_eq!(parse_path("=/a"), Ok(PathMatch::Exact("/a")));
        assert_eq!(parse_path("~^/a$"), Ok(PathMatch::Regex("^/a$")));
        assert!(parse_path("a").is_err());
        assert!(parse_path("/a/../b").is_err());
        assert!(parse_path("/a b").is_err());
    }
}
