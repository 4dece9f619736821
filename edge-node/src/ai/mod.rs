//! Stage "ai": the AI gateway. An AI service's routes serve one OpenAI-compatible surface
//! over every provider kind, or a prompt API (`prompt.rs`).
//!
//! Owns: the compiled providers (`provider.rs`: dialect, URL, key pool, prices), the
//! translation to and from each dialect (`openai.rs`, `anthropic.rs`, `gemini.rs`), event
//! streams (`sse.rs`, `stream.rs`), usage and cost (`usage.rs`), token budgets (`limit.rs`)
//! and the OpenAI-shaped errors (`error.rs`). May not touch the request context or the
//! snapshot: the proxy hands it the body, the budgets' keys and the usage cell.
//!
//! ```text
//!  POST …/v1/chat/completions ─> model allowed? (provider/model) ─> reserve budgets
//!    ─> for each of [model, fallback…]: for each key of its provider (in turn):
//!         translate ─> send (timeout to the answer head)
//!           2xx ─────────────> answer (JSON, or the translated event stream)
//!           401/403, 429 ────> rest the key, next key (then next model)
//!           5xx, timeout ────> next model
//!           other 4xx ───────> the caller's error, in OpenAI's shape
//!       all failed: once more after Retry-After when it is short; else the last error
//!  GET  …/v1/models ─> the models the service allows
//! ```

pub mod anthropic;
pub mod chunks;
pub mod error;
pub mod gemini;
pub mod limit;
pub mod openai;
pub mod prompt;
pub mod provider;
pub mod sse;
pub mod stream;
pub mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Map, Value};
use tollgate_proto::model::AiRoute;

use crate::body::{self, Body};
use crate::counters::peers::Peers;
use crate::observe::record::AiCell;
use crate::observe::trace::random_span_id;
use error::{redact, AiError};
pub use limit::{Settle, TokenBudget};
use provider::{Dialect, Provider, SendError};
use stream::{Translate, Translated};
use usage::{estimate, Price, Tokens};

/// Most bytes of a non-streamed provider answer.
const MAX_ANSWER_BYTES: usize = 32 << 20;
/// Most bytes of a provider's error answer that are read.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// A `Retry-After` at most this long is waited out once before giving up.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);
/// Output tokens reserved against a budget when the caller sets no `max_tokens`.
pub const DEFAULT_RESERVED_OUTPUT: u64 = 1024;
/// The keep-alive comment's interval when the service sets none.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// A model a call goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The provider's name for it.
    pub model: String,
}

impl Target {
    /// `provider/model`, as callers write it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.provider.name, self.model)
    }

    fn price(&self) -> Price {
        self.provider.models.get(&self.model).copied().unwrap_or_default()
    }
}

/// An allowed model: `provider/model`, or every model of a provider (`provider/*`).
#[derive(Debug, Clone)]
struct Allowed {
    provider: String,
    model: Option<String>,
}

/// An AI service as the request path needs it.
#[derive(Debug)]
pub struct AiService {
    allowed: Vec<Allowed>,
    /// The model used when the caller names none (`ai.model`).
    default_model: Option<String>,
    fallback: Vec<Target>,
    providers: HashMap<String, Arc<Provider>>,
    pub prompt: Option<prompt::Prompt>,
    keepalive: Duration,
}

/// One call, as the proxy hands it over.
pub struct AiCall<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub body: Bytes,
    pub started: Instant,
    pub budgets: Vec<TokenBudget>,
    pub peers: &'a Arc<Peers>,
    pub cell: AiCell,
}

impl AiService {
    /// Compiles a service's `ai` against its tenant's providers.
    pub fn compile(
        tenant: &str,
        ai: &AiRoute,
        providers: &HashMap<(&str, &str), Arc<Provider>>,
    ) -> Result<AiService, String> {
        let mut used = HashMap::new();
        let mut find = |field: &str, m: &str| -> Result<(Arc<Provider>, String), String> {
            let (p, model) = m
                .split_once('/')
                .ok_or_else(|| format!("{field}: invalid model {m:?}: write provider/model"))?;
            let provider = providers.get(&(tenant, p)).ok_or_else(|| {
                format!("{field}: references ai_provider {tenant}/{p}, which does not exist or is invalid")
            })?;
            used.insert(p.to_string(), provider.clone());
            Ok((provider.clone(), model.to_string()))
        };
        let mut allowed = Vec::new();
        for (i, m) in ai.models.iter().enumerate() {
            let (p, model) = find(&format!("ai.models[{i}]"), m)?;
            allowed.push(Allowed {
                provider: p.name.clone(),
                model: (model != "*").then_some(model),
            });
        }
        if let Some(m) = &ai.model {
            let (p, model) = find("ai.model", m)?;
            allowed.push(Allowed {
                provider: p.name.clone(),
                model: Some(model),
            });
        }
        let mut fallback = Vec::new();
        for (i, m) in ai.fallback.iter().enumerate() {
            let (provider, model) = find(&format!("ai.fallback[{i}]"), m)?;
            if model == "*" {
                return Err(format!(
                    "ai.fallback[{i}]: a fallback names one model, not provider/*"
                ));
            }
            fallback.push(Target { provider, model });
        }
        let prompt = match &ai.prompt {
            Some(p) => Some(prompt::Prompt::compile(p)?),
            None => None,
        };
        Ok(AiService {
            allowed,
            default_model: ai.model.clone(),
            fallback,
            providers: used,
            prompt,
            keepalive: ai.keepalive.map_or(DEFAULT_KEEPALIVE, |k| k.0),
        })
    }

    /// The target a caller's `provider/model` names, if the service allows it.
    fn resolve(&self, requested: &str) -> Result<Target, AiError> {
        let not_found = || {
            AiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("the model {requested:?} is not offered by this API; GET …/v1/models lists those that are"),
            )
        };
        let (p, model) = requested.split_once('/').ok_or_else(not_found)?;
        if model.is_empty() || model.len() > 256 || model.chars().any(char::is_control) {
            return Err(not_found());
        }
        let allowed = self
            .allowed
            .iter()
            .any(|a| a.provider == p && a.model.as_deref().is_none_or(|m| m == model));
        match self.providers.get(p) {
            Some(provider) if allowed => Ok(Target {
                provider: provider.clone(),
                model: model.to_string(),
            }),
            _ => Err(not_found()),
        }
    }

    fn models(&self) -> Response<Body> {
        let mut ids: Vec<(String, &str)> = Vec::new();
        for a in &self.allowed {
            let names: Vec<&String> = match &a.model {
                Some(m) => vec![m],
                None => self.providers[&a.provider].model_names.iter().collect(),
            };
            for m in names {
                let id = format!("{}/{m}", a.provider);
                if !ids.iter().any(|(i, _)| *i == id) {
                    ids.push((id, &a.provider));
                }
            }
        }
        let data: Vec<Value> = ids
            .into_iter()
            .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
            .collect();
        json_answer(StatusCode::OK, &json!({"object": "list", "data": data}))
    }
}

/// Answers one call to an AI service.
pub async fn serve(svc: &AiService, call: AiCall<'_>) -> Result<Response<Body>, AiError> {
    if let Some(p) = &svc.prompt {
        if call.method != Method::POST {
            return Err(method_not_allowed("POST"));
        }
        return prompt::serve(svc, p, call).await;
    }
    let path = call.path.trim_end_matches('/');
    if path.ends_with("/v1/chat/completions") {
        if call.method != Method::POST {
            return Err(method_not_allowed("POST"));
        }
        let req = parse_object(&call.body)?;
        let (resp, _) = chat(svc, req, &call).await?;
        Ok(resp)
    } else if path.ends_with("/v1/models") {
        if call.method != Method::GET {
            return Err(method_not_allowed("GET"));
        }
        Ok(svc.models())
    } else {
        Err(AiError::new(
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
            "this AI API serves POST …/v1/chat/completions and GET …/v1/models",
        ))
    }
}

fn method_not_allowed(allowed: &str) -> AiError {
    AiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allowed}"),
    )
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, AiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(AiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(AiError::bad_request(format!("the body is not valid JSON: {e}"))),
    }
}

fn json_answer(status: StatusCode, v: &Value) -> Response<Body> {
    let mut resp = Response::new(body::full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    format!(
        "chatcmpl-{}{}",
        hex::encode(random_span_id()),
        hex::encode(random_span_id())
    )
}

/// Characters of the messages' text: what an estimate of input tokens is made of.
fn prompt_chars(req: &Map<String, Value>) -> usize {
    req.get("messages").and_then(Value::as_array).map_or(0, |m| {
        m.iter().map(|m| anthropic::plain_text(&m["content"]).len()).sum()
    })
}

/// What a non-streamed chat answer was (for prompt APIs): its text and usage.
pub struct Answered {
    pub message: Value,
    pub tokens: Tokens,
}

/// A chat completion: the answer, and for a non-streamed one its message and usage.
async fn chat(
    svc: &AiService,
    mut req: Map<String, Value>,
    call: &AiCall<'_>,
) -> Result<(Response<Body>, Option<Answered>), AiError> {
    let requested = match req.get("model") {
        Some(Value::String(m)) => m.clone(),
        None => svc
            .default_model
            .clone()
            .ok_or_else(|| AiError::bad_request("model: required, as provider/model"))?,
        Some(_) => return Err(AiError::bad_request("model: must be a string (provider/model)")),
    };
    let first = svc.resolve(&requested)?;
    match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(AiError::bad_request("messages: a non-empty list is required")),
    }
    let stream = req.get("stream") == Some(&Value::Bool(true));
    let include_usage = stream
        && req
            .get("stream_options")
            .is_some_and(|o| o["include_usage"] == Value::Bool(true));
    if !stream {
        req.remove("stream_options");
    }
    let chars = prompt_chars(&req);
    let max_out = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64);
    let reserve_tokens = estimate(chars) + max_out.unwrap_or(DEFAULT_RESERVED_OUTPUT);
    let reserve_cost = first.price().cost(&Tokens {
        input: estimate(chars),
        output: max_out.unwrap_or(DEFAULT_RESERVED_OUTPUT),
        ..Tokens::default()
    });
    let mut settle = limit::reserve(&call.budgets, call.peers, reserve_tokens, reserve_cost)?;

    let mut chain = vec![first.clone()];
    for f in &svc.fallback {
        if !chain
            .iter()
            .any(|t| t.provider.name == f.provider.name && t.model == f.model)
        {
            chain.push(f.clone());
        }
    }
    let mut tried = 0u32;
    let mut last = None;
    for round in 0..2 {
        if round == 1 {
            match &last {
                Some(AiError {
                    status,
                    retry_after: Some(secs),
                    ..
                }) if *status == StatusCode::TOO_MANY_REQUESTS
                    && Duration::from_secs(*secs) <= MAX_RETRY_WAIT =>
                {
                    tokio::time::sleep(Duration::from_secs(*secs)).await;
                }
                _ => break,
            }
        }
        for target in &chain {
            let p = &target.provider;
            let native = match p.dialect {
                Dialect::OpenAi => openai::request(&req, &target.model, stream, p.kind),
                Dialect::Anthropic => anthropic::request(&req, &target.model, stream)?,
                Dialect::Gemini => gemini::request(&req)?,
            };
            let url = p.chat_url(&target.model, stream);
            let native = Bytes::from(native.to_string());
            for _ in 0..p.key_count() {
                let sent = p.send(&url, native.clone()).await;
                tried += 1;
                let (resp, key) = match sent {
                    Ok(answer) => answer,
                    Err(SendError::Timeout) => {
                        tracing::warn!(provider = %p.name, "the provider did not answer in time");
                        last = Some(AiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "provider_timeout",
                            "the model's provider did not answer in time",
                        ));
                        break;
                    }
                    Err(SendError::Failed(detail)) => {
                        tracing::warn!(provider = %p.name, error = %redact(&detail, p.secrets()), "the provider cannot be reached");
                        last = Some(AiError::new(
                            StatusCode::BAD_GATEWAY,
                            "provider_unreachable",
                            "the model's provider cannot be reached",
                        ));
                        break;
                    }
                };
                let status = resp.status();
                if status.is_success() {
                    {
                        let mut u = call.cell.lock().unwrap_or_else(|e| e.into_inner());
                        u.model = target.name();
                        u.fallbacks = tried - 1;
                    }
                    return answer(
                        svc,
                        target,
                        resp,
                        stream,
                        include_usage,
                        chars,
                        call,
                        settle.take(),
                    )
                    .await;
                }
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let text = read_error(resp, p).await;
                tracing::warn!(provider = %p.name, status = status.as_u16(), "the provider refused the call");
                // Gemini answers a bad key 400 INVALID_ARGUMENT ("API key not valid").
                let refused = matches!(status.as_u16(), 401 | 403)
                    || (p.dialect == Dialect::Gemini
                        && status == StatusCode::BAD_REQUEST
                        && text.contains("API key"));
                match status.as_u16() {
                    _ if refused => {
                        if let Some(k) = key {
                            p.rest(k, provider::REFUSED_REST);
                        }
                        last = Some(AiError::new(
                            StatusCode::BAD_GATEWAY,
                            "provider_auth_failed",
                            "the model's provider refused the gateway's credential",
                        ));
                    }
                    429 => {
                        if let Some(k) = key {
                            p.rest(k, retry_after.map_or(provider::LIMITED_REST, Duration::from_secs));
                        }
                        last = Some(
                            AiError::new(
                                StatusCode::TOO_MANY_REQUESTS,
                                "provider_rate_limited",
                                "the model's provider is rate limiting; try again later",
                            )
                            .with_retry_after(retry_after.or(Some(1))),
                        );
                    }
                    500..=599 => {
                        last = Some(AiError::new(
                            StatusCode::BAD_GATEWAY,
                            "provider_error",
                            "the model's provider failed to answer",
                        ));
                        break;
                    }
                    _ => {
                        if let Some(s) = settle.take() {
                            s.settle(&Tokens::default(), 0.0);
                        }
                        return Err(AiError::new(
                            status,
                            "provider_rejected",
                            format!("the model's provider refused the request: {text}"),
                        ));
                    }
                }
            }
        }
    }
    if let Some(s) = settle.take() {
        s.settle(&Tokens::default(), 0.0);
    }
    Err(last
        .unwrap_or_else(|| AiError::new(StatusCode::BAD_GATEWAY, "provider_error", "no provider answered")))
}

/// A provider's error message (for a caller's own mistake), scrubbed of its keys.
async fn read_error(resp: Response<hyper::body::Incoming>, p: &Provider) -> String {
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(resp.into_body(), MAX_ERROR_BYTES).collect(),
    )
    .await;
    let bytes = match body {
        Ok(Ok(b)) => b.to_bytes(),
        _ => return "no detail".into(),
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .or_else(|| v["message"].as_str())
        .unwrap_or("no detail");
    let mut message = redact(message, p.secrets());
    if message.len() > 1000 {
        let mut end = 1000;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    svc: &AiService,
    target: &Target,
    resp: Response<hyper::body::Incoming>,
    stream: bool,
    include_usage: bool,
    prompt_chars: usize,
    call: &AiCall<'_>,
    settle: Option<Settle>,
) -> Result<(Response<Body>, Option<Answered>), AiError> {
    let p = &target.provider;
    let price = target.price();
    let id = completion_id();
    let created = unix_secs();
    if stream {
        let is_events = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_events {
            if let Some(s) = settle {
                s.settle(&Tokens::default(), 0.0);
            }
            return Err(AiError::new(
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "the model's provider answered a stream request without an event stream",
            ));
        }
        let translate: Box<dyn Translate> = match p.dialect {
            Dialect::OpenAi => Box::new(openai::Stream {
                provider: p.name.clone(),
            }),
            Dialect::Anthropic => Box::<anthropic::Stream>::default(),
            Dialect::Gemini => Box::<gemini::Stream>::default(),
        };
        let chunks = chunks::Chunks {
            id,
            created,
            model: target.name(),
            include_usage,
        };
        let body = Translated::new(
            resp.into_body(),
            translate,
            chunks,
            call.cell.clone(),
            price,
            call.started,
            prompt_chars,
            settle,
            svc.keepalive,
        );
        let mut out = Response::new(body::stream(body));
        out.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        out.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok((out, None));
    }
    let read = tokio::time::timeout(
        p.timeout,
        Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) | Err(_) => {
            if let Some(s) = settle {
                s.settle(&Tokens::default(), 0.0);
            }
            return Err(AiError::new(
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "the model's provider did not send its whole answer",
            ));
        }
    };
    let native: Value = serde_json::from_slice(&bytes).map_err(|_| {
        AiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_error",
            "the model's provider answered something that is not JSON",
        )
    })?;
    let (out, usage, text_chars) = match p.dialect {
        Dialect::OpenAi => openai::response(native, &p.name),
        Dialect::Anthropic => anthropic::response(&native, &target.name(), &id, created),
        Dialect::Gemini => gemini::response(&native, &target.name(), &id, created),
    };
    let (tokens, estimated) = match usage {
        Some(t) => (t, false),
        None => (
            Tokens {
                input: estimate(prompt_chars),
                output: estimate(text_chars),
                ..Tokens::default()
            },
            true,
        ),
    };
    let cost = price.cost(&tokens);
    {
        let mut u = call.cell.lock().unwrap_or_else(|e| e.into_inner());
        u.input_tokens = tokens.input;
        u.cached_input_tokens = tokens.cached_input;
        u.output_tokens = tokens.output;
        u.reasoning_tokens = tokens.reasoning;
        u.cost = cost;
        u.estimated = estimated;
        u.ttft = Some(call.started.elapsed());
    }
    if let Some(s) = settle {
        s.settle(&tokens, cost);
    }
    let answered = Answered {
        message: out["choices"][0]["message"].clone(),
        tokens,
    };
    Ok((json_answer(StatusCode::OK, &out), Some(answered)))
}
