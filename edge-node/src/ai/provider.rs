//! A compiled AI provider: which dialect it speaks, where, with which keys, and its models'
//! prices; and the sending of one request to it.
//!
//! **Key pools.** A provider may hold several keys (`api_key_secret` and
//! `api_key_secrets`). Calls take them in turn; a key answered 401 or 403 rests for
//! [`REFUSED_REST`], one answered 429 for the provider's `Retry-After` (or
//! [`LIMITED_REST`]). When every key rests, the one whose rest ends first is used anyway:
//! a pool never refuses a call by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tollgate_proto::model::{AiProvider, AiProviderKind};

use crate::ai::usage::Price;
use crate::counters::unix_ms;
use crate::upstream::guarded::{self, GuardedClient};

/// How long a key the provider refused (401/403) rests.
pub const REFUSED_REST: Duration = Duration::from_secs(300);
/// How long a key the provider limited (429 without `Retry-After`) rests.
pub const LIMITED_REST: Duration = Duration::from_secs(10);
/// Time to the answer's head when the provider sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The Messages API version the edge speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's chat completions (OpenAI, Mistral, Ollama, vLLM, DeepSeek...).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's generateContent.
    Gemini,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: AiProviderKind,
    pub dialect: Dialect,
    /// The API root without a version segment, no trailing `/`.
    base: String,
    keys: KeyPool,
    /// Prices by model name; a model not listed costs nothing (and is still allowed where
    /// the service allows `provider/*`).
    pub models: HashMap<String, Price>,
    /// Model names in the order the provider lists them (for `GET /v1/models`).
    pub model_names: Vec<String>,
    pub timeout: Duration,
    client: GuardedClient,
}

impl Provider {
    pub fn compile(p: &AiProvider, clients: &mut [Option<GuardedClient>; 2]) -> Result<Provider, String> {
        let uri = guarded::parse_url(&p.base_url, p.allow_internal_addresses)
            .map_err(|e| format!("base_url: {e}"))?;
        if uri.query().is_some() {
            return Err("base_url: must not have a query".into());
        }
        let dialect = match p.kind {
            AiProviderKind::Anthropic => Dialect::Anthropic,
            AiProviderKind::Gemini => Dialect::Gemini,
            _ => Dialect::OpenAi,
        };
        let mut base = p.base_url.trim_end_matches('/').to_string();
        for version in ["/v1beta", "/v1"] {
            if let Some(stripped) = base.strip_suffix(version) {
                base = stripped.to_string();
                break;
            }
        }
        let keys = match &p.api_keys {
            Some(k) => k.clone(),
            None if p.key_secrets().next().is_some() => return Err(
                "api_key_secret: the key did not arrive from the control plane (it cannot open the secret)"
                    .into(),
            ),
            None => Vec::new(),
        };
        for k in &keys {
            if HeaderValue::from_str(k).is_err() || k.is_empty() {
                return Err("api_key_secret: a key is not a valid header value (printable ASCII)".into());
            }
        }
        let client = clients[usize::from(p.allow_internal_addresses)]
            .get_or_insert_with(|| guarded::client(p.allow_internal_addresses))
            .clone();
        Ok(Provider {
            name: p.name.clone(),
            kind: p.kind,
            dialect,
            base,
            keys: KeyPool::new(keys),
            models: p.models.iter().map(|m| (m.name.clone(), Price::of(m))).collect(),
            model_names: p.models.iter().map(|m| m.name.clone()).collect(),
            timeout: p.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
            client,
        })
    }

    /// The provider's keys, so that error texts can be scrubbed of them.
    pub fn secrets(&self) -> &[String] {
        &self.keys.keys
    }

    pub fn key_count(&self) -> usize {
        self.keys.keys.len().max(1)
    }

    /// The URL of a chat call to `model`.
    pub fn chat_url(&self, model: &str, stream: bool) -> String {
        match self.dialect {
            Dialect::OpenAi => format!("{}/v1/chat/completions", self.base),
            Dialect::Anthropic => format!("{}/v1/messages", self.base),
            Dialect::Gemini => {
                let model = url::form_urlencoded::byte_serialize(model.as_bytes()).collect::<String>();
                if stream {
                    format!(
                        "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                        self.base
                    )
                } else {
                    format!("{}/v1beta/models/{model}:generateContent", self.base)
                }
            }
        }
    }

    /// Sends `body` (JSON in the provider's dialect) to `url` with the next key; the answer
    /// head within the provider's timeout. Returns the key's index, for [`Provider::rest`].
    pub async fn send(
        &self,
        url: &str,
        body: Bytes,
    ) -> Result<(Response<Incoming>, Option<usize>), SendError> {
        let key = self.keys.pick(unix_ms());
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(USER_AGENT, guarded::USER_AGENT)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            // Events must be forwarded as they arrive: no compression to undo.
            .header(ACCEPT_ENCODING, "identity")
            .body(Full::new(body))
            .map_err(|_| SendError::Failed("invalid provider URL".into()))?;
        if let Some((_, k)) = key {
            let headers = req.headers_mut();
            let value = |v: String| {
                let mut v = HeaderValue::from_str(&v).expect("keys are checked when compiled");
                v.set_sensitive(true);
                v
            };
            match self.dialect {
                Dialect::OpenAi => headers.insert(AUTHORIZATION, value(format!("Bearer {k}"))),
                Dialect::Anthropic => headers.insert(X_API_KEY, value(k.to_string())),
                Dialect::Gemini => headers.insert(X_GOOG_API_KEY, value(k.to_string())),
            };
        }
        if self.dialect == Dialect::Anthropic {
            req.headers_mut().insert(
                ANTHROPIC_VERSION_HEADER,
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
        }
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok((resp, key.map(|(i, _)| i))),
            Ok(Err(e)) => Err(SendError::Failed(crate::error::chain(&e))),
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// Rests key `i` for `d`.
    pub fn rest(&self, i: usize, d: Duration) {
        if let Some(until) = self.keys.rest_until.get(i) {
            until.store(unix_ms() + d.as_millis() as u64, Relaxed);
        }
    }
}

#[derive(Debug)]
pub enum SendError {
    /// No answer head within the timeout.
    Timeout,
    /// The connection failed (the detail is for the log; it never holds a key).
    Failed(String),
}

#[derive(Debug, Default)]
struct KeyPool {
    keys: Vec<String>,
    next: AtomicUsize,
    /// Unix ms until which each key rests.
    rest_until: Vec<AtomicU64>,
}

impl KeyPool {
    fn new(keys: Vec<String>) -> KeyPool {
        KeyPool {
            rest_until: keys.iter().map(|_| AtomicU64::new(0)).collect(),
            keys,
            next: AtomicUsize::new(0),
        }
    }

    /// The next key in turn that is not resting; if all rest, the one that is done first.
    fn pick(&self, now_ms: u64) -> Option<(usize, &str)> {
        let n = self.keys.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let chosen = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.rest_until[i].load(Relaxed) <= now_ms)
            .unwrap_or_else(|| {
                (0..n)
                    .min_by_key(|&i| self.rest_until[i].load(Relaxed))
                    .unwrap_or(0)
            });
        Some((chosen, &self.keys[chosen]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_used_in_turn_and_resting_ones_skipped() {
        let pool = KeyPool::new(vec!["a".into(), "b".into(), "c".into()]);
        let picked: Vec<usize> = (0..4).map(|_| pool.pick(1000).unwrap().0).collect();
        assert_eq!(picked, vec![0, 1, 2, 0]);
        pool.rest_until[1].store(5000, Relaxed);
        let picked: Vec<usize> = (0..4).map(|_| pool.pick(1000).unwrap().0).collect();
        assert!(!picked.contains(&1), "{picked:?}");
        // All resting: the one done first.
        pool.rest_until[0].store(9000, Relaxed);
        pool.rest_until[2].store(7000, Relaxed);
        assert_eq!(pool.pick(1000).unwrap().0, 1);
        // Rests end.
        let mut after: Vec<usize> = (0..3).map(|_| pool.pick(10_000).unwrap().0).collect();
        after.sort();
        assert_eq!(after, vec![0, 1, 2]);
        assert!(KeyPool::new(Vec::new()).pick(0).is_none());
    }
}
