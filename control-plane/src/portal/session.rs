//! Portal sessions: a login with an admin-API token makes a session, named by a random id in
//! an `HttpOnly; SameSite=Strict` cookie. The session keeps the token (in memory only, on
//! the node that took the login) so that every page calls the admin API as that token, and
//! a random CSRF token that every form must send back. Sessions end on logout, after
//! [`IDLE`] without a request, or after [`LIFETIME`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::secrets::random_token;

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(60 * 60);
/// No session lives longer than this.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Most sessions kept at once (per node); past it the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;
pub const COOKIE: &str = "tg_session";
/// The cookie of a login form, paired with its hidden field (the login's CSRF check).
pub const LOGIN_COOKIE: &str = "tg_login";

#[derive(Clone)]
pub struct Session {
    /// The admin-API token the user logged in with.
    pub token: String,
    pub csrf: String,
    pub role: String,
    pub tenant: Option<String>,
    pub label: String,
    created: Instant,
    used: Instant,
}

/// Never prints the token or the CSRF value.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session; its id (for the cookie).
    pub fn start(
        &self,
        token: String,
        role: String,
        tenant: Option<String>,
        label: String,
    ) -> Option<(String, Session)> {
        let id = random_token("").ok()?;
        let now = Instant::now();
        let s = Session {
            token,
            csrf: random_token("").ok()?,
            role,
            tenant,
            label,
            created: now,
            used: now,
        };
        let mut map = self.by_id.lock().expect("sessions lock");
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), s.clone());
        Some((id, s))
    }

    /// The live session `id` names, marked used.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.by_id.lock().expect("sessions lock");
        let s = map.get_mut(id)?;
        if !live(s, now) {
            map.remove(id);
            return None;
        }
        s.used = now;
        Some(s.clone())
    }

    pub fn end(&self, id: &str) {
        self.by_id.lock().expect("sessions lock").remove(id);
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < IDLE && now.duration_since(s.created) < LIFETIME
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Strict`, limited to the portal's paths.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/portal; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

/// Compares two secrets without an early exit.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_start_are_found_and_end() {
        let s = Sessions::default();
        let (id, session) = s
            .start("tok".into(), "tenant-admin".into(), Some("t".into()), "l".into())
            .unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(session.csrf, id);
        assert_eq!(s.get(&id).unwrap().token, "tok");
        assert!(s.get("nope").is_none());
        assert!(!format!("{session:?}").contains("tok"));
        s.end(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn cookies_are_read_and_written_strict() {
        let h = Some("a=1; tg_session=abc; b=2");
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie(h, "c"), None);
        let c = set_cookie(COOKIE, "v", IDLE);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"), "{c}");
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
