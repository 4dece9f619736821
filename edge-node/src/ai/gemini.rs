//! The Gemini dialect: OpenAI chat completions to `generateContent` (and
//! `streamGenerateContent?alt=sse`) and back.
//!
//! ```text
//!  system/developer ─> systemInstruction     user ─> role user, assistant ─> role model
//!  assistant tool_calls ─> functionCall parts tool messages ─> functionResponse parts
//!                                            (named by the call they answer)
//!  tools ─> functionDeclarations             max_tokens, temperature, top_p, stop ─> generationConfig
//!  response_format json ─> responseMimeType application/json (+ responseJsonSchema)
//! ```
//! Gemini has no call ids: the edge makes one (`call_` and 24 random hex digits) for every
//! function call it passes on. Its stream has no end marker; the last event carries the
//! finish reason. `thoughtsTokenCount` is the reasoning, and counts as output, as OpenAI's
//! reasoning tokens do.

use serde_json::{json, Map, Value};

use crate::ai::anthropic::{data_url, plain_text};
use crate::ai::error::AiError;
use crate::ai::sse::Event;
use crate::ai::stream::{StreamState, Translate};
use crate::ai::usage::Tokens;
use crate::observe::trace::random_span_id;

/// The `generateContent` body for a caller's chat request.
pub fn request(caller: &Map<String, Value>) -> Result<Value, AiError> {
    let empty = Vec::new();
    let list = caller.get("messages").and_then(Value::as_array).unwrap_or(&empty);
    // Which function each call id named, for the results that answer it.
    let mut call_names: Vec<(String, Value)> = Vec::new();
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let (role, parts) = match m["role"].as_str().unwrap_or_default() {
            "system" | "developer" => {
                system.push(json!({"text": plain_text(&m["content"])}));
                continue;
            }
            "user" => ("user", user_parts(&m["content"], i)?),
            "assistant" => {
                let mut parts = Vec::new();
                let text = plain_text(&m["content"]);
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
                for call in m["tool_calls"].as_array().unwrap_or(&empty) {
                    let f = &call["function"];
                    let args: Value = serde_json::from_str(f["arguments"].as_str().unwrap_or("{}"))
                        .unwrap_or_else(|_| json!({}));
                    call_names.push((
                        call["id"].as_str().unwrap_or_default().to_string(),
                        f["name"].clone(),
                    ));
                    parts.push(json!({"functionCall": {"name": f["name"], "args": args}}));
                }
                ("model", parts)
            }
            "tool" => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                let name = call_names
                    .iter()
                    .find(|(c, _)| c == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| {
                        AiError::bad_request(format!(
                            "messages[{i}].tool_call_id: {id:?} answers no earlier tool call"
                        ))
                    })?;
                let text = plain_text(&m["content"]);
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({"content": text}));
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            other => {
                return Err(AiError::bad_request(format!(
                    "messages[{i}].role: {other:?} is not a chat role"
                )))
            }
        };
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(p) = last["parts"].as_array_mut() {
                    p.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    if let Some(max) = caller
        .get("max_completion_tokens")
        .or_else(|| caller.get("max_tokens"))
        .and_then(Value::as_u64)
    {
        config.insert("maxOutputTokens".into(), json!(max));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = caller.get(from).filter(|v| v.is_number()) {
            config.insert(to.into(), v.clone());
        }
    }
    match caller.get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(format) = caller.get("response_format") {
        match format["type"].as_str() {
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if format["json_schema"]["schema"].is_object() {
                    config.insert(
                        "responseJsonSchema".into(),
                        format["json_schema"]["schema"].clone(),
                    );
                }
            }
            _ => {}
        }
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = caller.get("tools").and_then(Value::as_array) {
        let declarations: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut d = json!({"name": f["name"]});
                if let Some(desc) = f["description"].as_str() {
                    d["description"] = json!(desc);
                }
                if f["parameters"].is_object() {
                    d["parameters"] = f["parameters"].clone();
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    let mode = match caller.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
        Some(Value::Object(o)) => Some(
            json!({"mode": "ANY", "allowedFunctionNames": [o.get("function").map(|f| f["name"].clone())]}),
        ),
        _ => None,
    };
    if let Some(mode) = mode {
        body.insert("toolConfig".into(), json!({"functionCallingConfig": mode}));
    }
    Ok(Value::Object(body))
}

fn user_parts(content: &Value, i: usize) -> Result<Vec<Value>, AiError> {
    let parts = match content {
        Value::String(s) => return Ok(vec![json!({"text": s})]),
        Value::Array(parts) => parts,
        _ => {
            return Err(AiError::bad_request(format!(
                "messages[{i}].content: must be a string or a list of parts"
            )))
        }
    };
    parts
        .iter()
        .map(|p| match p["type"].as_str() {
            Some("text") => Ok(json!({"text": p["text"]})),
            Some("image_url") => {
                let url = p["image_url"]["url"].as_str().unwrap_or_default();
                match data_url(url) {
                    Some((mime, data)) => Ok(json!({"inlineData": {"mimeType": mime, "data": data}})),
                    None => Ok(json!({"fileData": {"fileUri": url}})),
                }
            }
            other => Err(AiError::bad_request(format!(
                "messages[{i}].content: part type {other:?} is not supported by this provider"
            ))),
        })
        .collect()
}

fn call_id() -> String {
    let mut id = String::from("call_");
    for _ in 0..2 {
        id.push_str(&hex::encode(random_span_id()));
    }
    id.truncate(5 + 24);
    id
}

fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called => "tool_calls",
        _ => "stop",
    }
}

fn tokens(u: &Value) -> Option<Tokens> {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let input = u.get("promptTokenCount")?.as_u64()?;
    let reasoning = n("thoughtsTokenCount");
    Some(Tokens {
        input,
        cached_input: n("cachedContentTokenCount"),
        output: n("candidatesTokenCount") + reasoning,
        reasoning,
    })
}

/// The parts of the first candidate: its text (thoughts left out) and function calls.
fn parts(answer: &Value) -> (String, Vec<(Value, Value)>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in answer["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if p["thought"] == true {
            continue;
        }
        if let Some(t) = p["text"].as_str() {
            text.push_str(t);
        }
        if p["functionCall"].is_object() {
            calls.push((
                p["functionCall"]["name"].clone(),
                p["functionCall"]["args"].clone(),
            ));
        }
    }
    (text, calls)
}

/// A non-streamed answer as a chat completion.
pub fn response(answer: &Value, model: &str, id: &str, created: u64) -> (Value, Option<Tokens>, usize) {
    let (text, calls) = parts(answer);
    let calls: Vec<Value> = calls
        .into_iter()
        .map(|(name, args)| {
            let args = if args.is_null() { json!({}) } else { args };
            json!({"id": call_id(), "type": "function", "function": {"name": name, "arguments": args.to_string()}})
        })
        .collect();
    let reason = answer["candidates"][0]["finishReason"].as_str().unwrap_or(
        if answer["promptFeedback"]["blockReason"].is_string() {
            "SAFETY"
        } else {
            "STOP"
        },
    );
    let usage = tokens(&answer["usageMetadata"]);
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    let called = !calls.is_empty();
    if called {
        message["tool_calls"] = Value::Array(calls);
    }
    let out = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(reason, called)}],
        "usage": usage.unwrap_or_default().to_openai(),
    });
    (out, usage, text.len())
}

/// Gemini's SSE answer as chat-completion chunks.
#[derive(Debug, Default)]
pub struct Stream {
    started: bool,
    calls: usize,
    finish: Option<&'static str>,
}

impl Translate for Stream {
    fn event(&mut self, ev: Event, s: &mut StreamState) {
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            s.fail("provider_error", "the provider sent an event that is not JSON");
            return;
        };
        if data.get("error").is_some() {
            tracing::warn!(status = %data["error"]["status"], "the provider reported an error mid-stream");
            s.fail(
                "provider_error",
                "the provider reported an error during the answer",
            );
            return;
        }
        if !self.started {
            self.started = true;
            s.chunks
                .delta(&mut s.out, json!({"role": "assistant", "content": ""}), None);
        }
        if let Some(u) = tokens(&data["usageMetadata"]) {
            s.usage = Some(u);
        }
        let (text, calls) = parts(&data);
        if !text.is_empty() {
            s.text_chars += text.len();
            s.answered = true;
            s.chunks.delta(&mut s.out, json!({"content": text}), None);
        }
        for (name, args) in calls {
            let args = if args.is_null() { json!({}) } else { args };
            s.answered = true;
            s.chunks.delta(
                &mut s.out,
                json!({"tool_calls": [{"index": self.calls, "id": call_id(), "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}}]}),
                None,
            );
            self.calls += 1;
        }
        if let Some(reason) = data["candidates"][0]["finishReason"].as_str() {
            self.finish = Some(finish_reason(reason, self.calls > 0));
        }
    }

    fn end(&mut self, s: &mut StreamState) {
        if s.finished {
            return;
        }
        match self.finish {
            Some(reason) => {
                s.chunks.delta(&mut s.out, json!({}), Some(reason));
                s.done();
            }
            None => s.fail(
                "provider_stream_ended",
                "the provider's stream ended before the answer was complete",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_become_generate_content() {
        let caller = json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "max_tokens": 50,
            "response_format": {"type": "json_object"},
        });
        let body = request(caller.as_object().unwrap()).unwrap();
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
        let c = body["contents"].as_array().unwrap();
        assert_eq!(c[1]["role"], "model");
        assert_eq!(c[1]["parts"][0]["functionCall"]["args"]["city"], "Paris");
        assert_eq!(c[2]["parts"][0]["functionResponse"]["name"], "weather");
        assert_eq!(
            c[2]["parts"][0]["functionResponse"]["response"]["content"],
            "sunny"
        );
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 50);
        assert_eq!(body["generationConfig"]["responseMimeType"], "application/json");
        assert_eq!(body["tools"][0]["functionDeclarations"][0]["name"], "weather");

        let orphan = json!({"messages": [{"role": "tool", "tool_call_id": "x", "content": "?"}]});
        assert!(request(orphan.as_object().unwrap()).is_err());
    }

    #[test]
    fn function_calls_get_ids_and_thoughts_count_as_output() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true}, {"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]},
                "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 5, "thoughtsTokenCount": 2, "cachedContentTokenCount": 1}});
        let (out, usage, _) = response(&answer, "g/gemini", "chatcmpl-1", 0);
        let call = &out["choices"][0]["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["id"].as_str().unwrap().len(), 29);
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert!(out["choices"][0]["message"]["content"].is_null());
        let u = usage.unwrap();
        assert_eq!((u.input, u.cached_input, u.output, u.reasoning), (4, 1, 7, 2));
    }
}
