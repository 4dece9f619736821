//! Stage "phases": what the proxy does to a request between accepting it and sending it
//! upstream, one module per phase, run in order by `proxy.rs`: normalize, route, ip filter,
//! cors, lifecycle and subscription (authorize), authenticate, rate limits, request policies.
//!
//! Owns: each phase's compiled data (router, credentials, policies) and its decision. May
//! not touch sockets or the config stream; reads only what the snapshot hands it, and
//! awaits the network only for an identity provider (JWKS refetch, introspection).

pub mod auth;
pub mod authorize;
pub mod cors;
pub mod ctx;
pub mod ipfilter;
pub mod normalize;
pub mod policy;
pub mod ratelimit;
pub mod route;
pub mod router;
pub mod service;
