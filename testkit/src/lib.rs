//! The one test toolkit, shared by the edge's tests and the multi-process integration tests.
//! Everything listens on loopback and every wait is bounded.
//!
//! - [`raw`]: an HTTP/1.1 head and body reader (`content-length`, chunked, to EOF), and
//!   [`raw::send`], a raw client with custom headers and body returning a [`raw::Reply`].
//! - [`mock`]: [`mock::MockServer`], a std-thread HTTP/1.1 server answering each request
//!   with a closure the test controls and recording what it received; [`mock::Upstream`],
//!   one that echoes every request back as JSON.
//! - [`serve`]: [`serve::http1`], a hyper HTTP/1.1 server (upgrades on, optional TLS) for
//!   tests that need streaming bodies, delays or protocol switches.
//! - [`fault`]: [`fault::LinkProxy`], a TCP proxy a test cuts and heals.
//!
//! Invariant: nothing here knows Tollgate; a test double speaks only HTTP.

pub mod fault;
pub mod mock;
pub mod raw;
pub mod serve;
