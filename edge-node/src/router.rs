//! The router: compiled once per config (off the request path) into an immutable struct,
//! then read without locks.
//!
//! # Precedence
//!
//! 1. **Exact** paths (`=/p`) first: the request path must equal `/p`.
//! 2. Then **prefix** paths (`/p`), longest first. Prefixes are segment-aware: `/orders`
//!    matches `/orders`, `/orders/` and `/orders/1`, never `/ordersx`. A trailing `/` on a
//!    prefix is ignored (`/orders/` behaves as `/orders`); `/` matches every path.
//! 3. Then **regex** paths (`~re`), in config order (services sorted by tenant and name,
//!    then routes and paths in the order written); the first regex that matches decides.
//!
//! Among routes with the same path, the one whose host is more specific wins (an exact host
//! over a `*.domain` wildcard, a longer wildcard over a shorter one, any host last); then the
//! one with more constraints (a method list counts one, each header match one); then the
//! first in config order. A route whose methods, hosts or headers do not match the request
//! is skipped, so a shorter prefix or a regex may still match.
//!
//! Hosts compare case-insensitively, without the port. Methods and header values compare
//! exactly; header names case-insensitively.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use tollgate_proto::model::Route;
use tollgate_proto::validate::{compile_route_regex, parse_path, PathMatch};

/// What the router needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// The request's host, with or without port, any case; `None` when absent.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The route that matched.
#[derive(Debug, PartialEq)]
pub struct Match<'a, S> {
    pub target: &'a S,
    /// When the route strips its prefix: how many leading bytes of the path to drop.
    pub strip_len: Option<usize>,
}

#[derive(Clone, Debug)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// How specific the match is (higher is more), or `None` when the host does not match.
    fn score(&self, host: &str) -> Option<u32> {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h).then_some(u32::MAX),
            HostPattern::Suffix(s) => {
                let (hb, sb) = (host.as_bytes(), s.as_bytes());
                (hb.len() > sb.len() && hb[hb.len() - sb.len()..].eq_ignore_ascii_case(sb))
                    .then_some(1 + sb.len() as u32)
            }
        }
    }
}

#[derive(Debug)]
struct Candidate<S> {
    target: S,
    methods: Vec<Method>,
    hosts: Vec<HostPattern>,
    headers: Vec<(HeaderName, HeaderValue)>,
    strip_prefix: bool,
}

impl<S> Candidate<S> {
    /// `(host score, constraint count)` when the candidate accepts the request.
    fn score(&self, req: &RequestInfo<'_>, host: Option<&str>) -> Option<(u32, usize)> {
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return None;
        }
        let host_score = if self.hosts.is_empty() {
            0
        } else {
            let host = host?;
            self.hosts.iter().filter_map(|p| p.score(host)).max()?
        };
        for (name, value) in &self.headers {
            if !req.headers.get_all(name).iter().any(|v| v == value) {
                return None;
            }
        }
        let constraints = usize::from(!self.methods.is_empty()) + self.headers.len();
        Some((host_score, constraints))
    }
}

/// The best candidate of a group that accepts the request.
fn best<'a, S>(
    group: &'a [Candidate<S>],
    req: &RequestInfo<'_>,
    host: Option<&str>,
) -> Option<&'a Candidate<S>> {
    let mut best: Option<(&Candidate<S>, (u32, usize))> = None;
    for c in group {
        if let Some(score) = c.score(req, host) {
            // Candidates are in config order, so only a strictly better score replaces.
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((c, score));
            }
        }
    }
    best.map(|(c, _)| c)
}

#[derive(Debug)]
struct RegexGroup<S> {
    regex: Regex,
    candidates: Vec<Candidate<S>>,
}

/// An immutable routing table; `S` is what a route leads to (a service).
#[derive(Debug)]
pub struct Router<S> {
    exact: HashMap<String, Vec<Candidate<S>>>,
    /// Keyed by the prefix without its trailing `/` (`""` for `/`).
    prefix: HashMap<String, Vec<Candidate<S>>>,
    regex: Vec<RegexGroup<S>>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            prefix: HashMap::new(),
            regex: Vec::new(),
        }
    }
}

/// Collects routes in config order and builds a [`Router`].
#[derive(Debug)]
pub struct RouterBuilder<S> {
    router: Router<S>,
    regex_index: HashMap<String, usize>,
}

impl<S> Default for RouterBuilder<S> {
    fn default() -> Self {
        Self {
            router: Router::default(),
            regex_index: HashMap::new(),
        }
    }
}

impl<S: Clone> RouterBuilder<S> {
    /// Adds every path of `route`, leading to `target`. Errors name the field
    /// (`paths[1]: invalid regex ...`).
    pub fn add_route(&mut self, route: &Route, target: S) -> Result<(), String> {
        let methods = route
            .methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Method::from_bytes(m.as_bytes()).map_err(|_| format!("methods[{i}]: invalid method {m:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = route
            .hosts
            .iter()
            .map(|h| {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => HostPattern::Suffix(suffix.to_string()),
                    None => HostPattern::Exact(h),
                }
            })
            .collect::<Vec<_>>();
        let headers = route
            .headers
            .iter()
            .map(|(n, v)| {
                let name = HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("headers: invalid header name {n:?}"))?;
                let value =
                    HeaderValue::from_str(v).map_err(|_| format!("headers.{n}: invalid header value"))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if route.paths.is_empty() {
            return Err("paths: at least one path is required".into());
        }
        for (j, p) in route.paths.iter().enumerate() {
            let candidate = Candidate {
                target: target.clone(),
                methods: methods.clone(),
                hosts: hosts.clone(),
                headers: headers.clone(),
                strip_prefix: route.strip_prefix,
            };
            match parse_path(p).map_err(|e| format!("paths[{j}]: {e}"))? {
                PathMatch::Exact(path) => {
                    self.router
                        .exact
                        .entry(path.to_string())
                        .or_default()
                        .push(candidate);
                }
                PathMatch::Prefix(path) => {
                    let key = path.trim_end_matches('/').to_string();
                    self.router.prefix.entry(key).or_default().push(candidate);
                }
                PathMatch::Regex(re) => {
                    let idx = match self.regex_index.get(re) {
                        Some(i) => *i,
                        None => {
                            let regex = compile_route_regex(re).map_err(|e| format!("paths[{j}]: {e}"))?;
                            self.router.regex.push(RegexGroup {
                                regex,
                                candidates: Vec::new(),
                            });
                            self.regex_index
                                .insert(re.to_string(), self.router.regex.len() - 1);
                            self.router.regex.len() - 1
                        }
                    };
                    self.router.regex[idx].candidates.push(candidate);
                }
            }
        }
        Ok(())
    }

    pub fn build(self) -> Router<S> {
        self.router
    }
}

/// The host without port and trailing dot (`Example.com:8080` -> `Example.com`,
/// `[::1]:80` -> `[::1]`).
pub fn host_without_port(host: &str) -> &str {
    let host = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    host.trim_end_matches('.')
}

/// The prefix keys a path can match, longest first: `/a/b/` -> `/a/b`, `/a`, ``.
fn prefix_keys(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    std::iter::once(trimmed).chain(
        trimmed
            .char_indices()
            .rev()
            .filter(|(_, c)| *c == '/')
            .map(move |(i, _)| &trimmed[..i]),
    )
}

impl<S> Router<S> {
    /// The route for a request, by the precedence in the module docs.
    pub fn route(&self, req: &RequestInfo<'_>) -> Option<Match<'_, S>> {
        let host = req.host.map(host_without_port);
        if let Some(c) = self.exact.get(req.path).and_then(|g| best(g, req, host)) {
            return Some(Match {
                target: &c.target,
                strip_len: c.strip_prefix.then_some(req.path.len()),
            });
        }
        for key in prefix_keys(req.path) {
            if let Some(c) = self.prefix.get(key).and_then(|g| best(g, req, host)) {
                return Some(Match {
                    target: &c.target,
                    strip_len: c.strip_prefix.then_some(key.len()),
                });
            }
        }
        for group in &self.regex {
            if group.regex.is_match(req.path) {
                if let Some(c) = best(&group.candidates, req, host) {
                    return Some(Match {
                        target: &c.target,
                        strip_len: None,
                    });
                }
            }
        }
        None
    }
}

/// The path to send upstream once `strip_len` leading bytes are dropped (never empty).
pub fn stripped_path(path: &str, strip_len: Option<usize>) -> &str {
    match strip_len {
        Some(n) if n <= path.len() => match &path[n..] {
            "" => "/",
            rest => rest,
        },
        _ => path,
    }
}

#[cfg(test)]
mod tests;
