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
//!    All regexes are also compiled into one `RegexSet`, which finds every regex matching a
//!    path in one pass, so a table of thousands of regexes costs one scan of the path
//!    instead of one per regex.
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
use regex::{Regex, RegexSet, RegexSetBuilder};

/// Cache of the regex set's lazy DFA (the regex crate's default is 2 MiB): big tables keep
/// their states cached.
const REGEX_SET_CACHE: usize = 16 << 20;
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

/// Groups at least this big get an index by exact host.
const HOST_INDEX_MIN: usize = 8;

/// The routes sharing one path, in config order; big groups (many hosts on one path) are
/// indexed by exact host, so that a request looks only at the routes that can match it.
#[derive(Debug)]
struct Group<S> {
    candidates: Vec<Candidate<S>>,
    by_host: Option<HostIndex>,
}

/// Candidates (their places in the group) by exact host, lowercase; `others`: those with no
/// host, or with a wildcard host too.
#[derive(Debug)]
struct HostIndex {
    exact: HashMap<String, Vec<usize>>,
    others: Vec<usize>,
}

impl<S> Default for Group<S> {
    fn default() -> Self {
        Self {
            candidates: Vec::new(),
            by_host: None,
        }
    }
}

impl<S> Group<S> {
    fn push(&mut self, c: Candidate<S>) {
        self.candidates.push(c);
    }

    fn index(&mut self) {
        if self.candidates.len() < HOST_INDEX_MIN {
            return;
        }
        let (mut by_host, mut others) = (HashMap::<String, Vec<usize>>::new(), Vec::new());
        for (i, c) in self.candidates.iter().enumerate() {
            let mut exact_only = !c.hosts.is_empty();
            for h in &c.hosts {
                match h {
                    HostPattern::Exact(h) => by_host.entry(h.clone()).or_default().push(i),
                    HostPattern::Suffix(_) => exact_only = false,
                }
            }
            if !exact_only {
                others.push(i);
            }
        }
        self.by_host = Some(HostIndex {
            exact: by_host,
            others,
        });
    }

    /// The best candidate that accepts the request.
    fn best(&self, req: &RequestInfo<'_>, host: Option<&str>) -> Option<&Candidate<S>> {
        let Some(HostIndex {
            exact: by_host,
            others,
        }) = &self.by_host
        else {
            return best(self.candidates.iter().enumerate(), req, host);
        };
        let exact: &[usize] = match host {
            Some(h) if h.bytes().any(|b| b.is_ascii_uppercase()) => {
                by_host.get(&h.to_ascii_lowercase()).map_or(&[], |v| v)
            }
            Some(h) => by_host.get(h).map_or(&[], |v| v),
            None => &[],
        };
        let indices = exact.iter().chain(others);
        best(indices.map(|&i| (i, &self.candidates[i])), req, host)
    }
}

/// The best of `candidates` (with their config order) that accepts the request: the highest
/// score, then the first in config order.
fn best<'a, S>(
    candidates: impl Iterator<Item = (usize, &'a Candidate<S>)>,
    req: &RequestInfo<'_>,
    host: Option<&str>,
) -> Option<&'a Candidate<S>> {
    let mut best: Option<(&Candidate<S>, (u32, usize), usize)> = None;
    for (order, c) in candidates {
        if let Some(score) = c.score(req, host) {
            let better = match best {
                None => true,
                Some((_, s, o)) => score > s || (score == s && order < o),
            };
            if better {
                best = Some((c, score, order));
            }
        }
    }
    best.map(|(c, _, _)| c)
}

#[derive(Debug)]
struct RegexGroup<S> {
    regex: Regex,
    candidates: Group<S>,
}

/// An immutable routing table; `S` is what a route leads to (a service).
#[derive(Debug)]
pub struct Router<S> {
    exact: HashMap<String, Group<S>>,
    /// Keyed by the prefix without its trailing `/` (`""` for `/`).
    prefix: HashMap<String, Group<S>>,
    regex: Vec<RegexGroup<S>>,
    /// Every regex of `regex`, index for index (`None` without regexes).
    regex_set: Option<RegexSet>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            prefix: HashMap::new(),
            regex: Vec::new(),
            regex_set: None,
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
                                candidates: Group::default(),
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

    pub fn build(mut self) -> Router<S> {
        let r = &mut self.router;
        let groups = r.exact.values_mut().chain(r.prefix.values_mut());
        groups
            .chain(r.regex.iter_mut().map(|g| &mut g.candidates))
            .for_each(Group::index);
        let regexes = &self.router.regex;
        if !regexes.is_empty() {
            let set = RegexSetBuilder::new(regexes.iter().map(|g| g.regex.as_str()))
                // Each regex is held to 1 MiB (`compile_route_regex`), the set to that many.
                .size_limit(regexes.len().saturating_mul(1 << 20))
                .dfa_size_limit(REGEX_SET_CACHE)
                .build();
            match set {
                Ok(set) => self.router.regex_set = Some(set),
                // Not expected (each regex compiled alone); the regexes are then tried one
                // by one, which is slower but routes the same.
                Err(e) => {
                    tracing::warn!(regexes = regexes.len(), error = %e, "path regexes cannot be combined; trying them one by one")
                }
            }
        }
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
    /// The best route of regex group `i` (whose regex matched) for the request.
    fn regex_match(&self, i: usize, req: &RequestInfo<'_>, host: Option<&str>) -> Option<Match<'_, S>> {
        self.regex[i].candidates.best(req, host).map(|c| Match {
            target: &c.target,
            strip_len: None,
        })
    }

    /// The route for a request, by the precedence in the module docs.
    pub fn route(&self, req: &RequestInfo<'_>) -> Option<Match<'_, S>> {
        let host = req.host.map(host_without_port);
        if let Some(c) = self.exact.get(req.path).and_then(|g| g.best(req, host)) {
            return Some(Match {
                target: &c.target,
                strip_len: c.strip_prefix.then_some(req.path.len()),
            });
        }
        for key in prefix_keys(req.path) {
            if let Some(c) = self.prefix.get(key).and_then(|g| g.best(req, host)) {
                return Some(Match {
                    target: &c.target,
                    strip_len: c.strip_prefix.then_some(key.len()),
                });
            }
        }
        match &self.regex_set {
            // Indices come in increasing order: config order.
            Some(set) => set
                .matches(req.path)
                .iter()
                .find_map(|i| self.regex_match(i, req, host)),
            None => (0..self.regex.len())
                .filter(|&i| self.regex[i].regex.is_match(req.path))
                .find_map(|i| self.regex_match(i, req, host)),
        }
    }
}

#[cfg(test)]
mod tests;
