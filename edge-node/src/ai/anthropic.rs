//! The Anthropic dialect: OpenAI chat completions to the Messages API and back, streams
//! included.
//!
//! ```text
//!  system/developer messages ─> `system`          user/assistant ─> content blocks
//!  assistant tool_calls ─> `tool_use` blocks       tool messages ─> user `tool_result` blocks
//!  tools ─> {name, description, input_schema}      stop ─> stop_sequences
//!  max_tokens / max_completion_tokens ─> max_tokens (required there; default 4096)
//!  stream: message_start ─> role chunk; text_delta ─> content; tool_use start and
//!          input_json_delta ─> tool_calls; message_delta ─> finish reason, output usage;
//!          message_stop ─> usage chunk and [DONE]; ping ─> nothing; error ─> error event
//! ```
//! Anthropic counts input without the cache (`input_tokens`, `cache_read_input_tokens`,
//! `cache_creation_input_tokens`); OpenAI's `prompt_tokens` is their sum.

use serde_json::{json, Map, Value};

use crate::ai::error::AiError;
use crate::ai::sse::Event;
use crate::ai::stream::{StreamState, Translate};
use crate::ai::usage::Tokens;

/// `max_tokens` when the caller sets none (the Messages API requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Messages API body for a caller's chat request.
pub fn request(caller: &Map<String, Value>, model: &str, stream: bool) -> Result<Value, AiError> {
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let empty = Vec::new();
    let list = caller.get("messages").and_then(Value::as_array).unwrap_or(&empty);
    for (i, m) in list.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(plain_text(&m["content"]));
                continue;
            }
            "user" => ("user", user_blocks(&m["content"], i)?),
            "assistant" => {
                let mut blocks = Vec::new();
                let text = plain_text(&m["content"]);
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m["tool_calls"].as_array().unwrap_or(&empty) {
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": input,
                    }));
                }
                ("assistant", blocks)
            }
            "tool" => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m["tool_call_id"],
                    "content": plain_text(&m["content"]),
                })],
            ),
            other => {
                return Err(AiError::bad_request(format!(
                    "messages[{i}].role: {other:?} is not a chat role"
                )))
            }
        };
        // The Messages API wants turns to alternate: consecutive same-role messages merge.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(c) = last["content"].as_array_mut() {
                    c.extend(blocks);
                }
            }
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    let max = caller
        .get("max_completion_tokens")
        .or_else(|| caller.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), json!(max));
    if let Some(format) = caller.get("response_format") {
        match format["type"].as_str() {
            Some("json_object") => system.push("Answer with one JSON object and nothing else.".into()),
            Some("json_schema") => system.push(format!(
                "Answer with one JSON object and nothing else, valid against this JSON Schema: {}",
                format["json_schema"]["schema"]
            )),
            _ => {}
        }
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = caller.get(from).filter(|v| v.is_number()) {
            body.insert(to.into(), v.clone());
        }
    }
    match caller.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = caller.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut tool = json!({
                    "name": f["name"],
                    "input_schema": if f["parameters"].is_object() { f["parameters"].clone() } else { json!({"type": "object"}) },
                });
                if let Some(d) = f["description"].as_str() {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match caller.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::Object(o)) => {
            Some(json!({"type": "tool", "name": o.get("function").map(|f| f["name"].clone())}))
        }
        _ => None,
    };
    if caller.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        body.insert("tool_choice".into(), c);
    }
    if let Some(user) = caller.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

/// The text of an OpenAI message content: a string, or its text parts joined.
pub fn plain_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn user_blocks(content: &Value, i: usize) -> Result<Vec<Value>, AiError> {
    let parts = match content {
        Value::String(s) => return Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts,
        _ => {
            return Err(AiError::bad_request(format!(
                "messages[{i}].content: must be a string or a list of parts"
            )))
        }
    };
    let mut blocks = Vec::new();
    for p in parts {
        match p["type"].as_str() {
            Some("text") => blocks.push(json!({"type": "text", "text": p["text"]})),
            Some("image_url") => {
                let url = p["image_url"]["url"].as_str().unwrap_or_default();
                let source = match data_url(url) {
                    Some((media_type, data)) => {
                        json!({"type": "base64", "media_type": media_type, "data": data})
                    }
                    None => json!({"type": "url", "url": url}),
                };
                blocks.push(json!({"type": "image", "source": source}));
            }
            other => {
                return Err(AiError::bad_request(format!(
                    "messages[{i}].content: part type {other:?} is not supported by this provider"
                )))
            }
        }
    }
    Ok(blocks)
}

/// `data:image/png;base64,AAAA` as (media type, base64 data).
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

fn tokens(u: &Value) -> Tokens {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    Tokens {
        input: n("input_tokens") + cached + n("cache_creation_input_tokens"),
        cached_input: cached,
        output: n("output_tokens"),
        reasoning: 0,
    }
}

/// A non-streamed Messages answer as a chat completion.
pub fn response(answer: &Value, model: &str, id: &str, created: u64) -> (Value, Option<Tokens>, usize) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in answer["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let usage = answer.get("usage").filter(|u| u.is_object()).map(tokens);
    let chars = text.len();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let out = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(answer["stop_reason"].as_str().unwrap_or("end_turn")),
        }],
        "usage": usage.unwrap_or_default().to_openai(),
    });
    (out, usage, chars)
}

/// A Messages event stream as chat-completion chunks.
#[derive(Debug, Default)]
pub struct Stream {
    /// Content block index -> tool call index.
    tools: Vec<(u64, usize)>,
    finish: Option<&'static str>,
}

impl Translate for Stream {
    fn event(&mut self, ev: Event, s: &mut StreamState) {
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            s.fail("provider_error", "the provider sent an event that is not JSON");
            return;
        };
        let kind = ev
            .event
            .as_deref()
            .or_else(|| data["type"].as_str())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                s.usage = Some(tokens(&data["message"]["usage"]));
                s.chunks
                    .delta(&mut s.out, json!({"role": "assistant", "content": ""}), None);
            }
            "content_block_start" => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tools.len();
                        self.tools.push((data["index"].as_u64().unwrap_or(0), index));
                        s.answered = true;
                        s.chunks.delta(
                            &mut s.out,
                            json!({"tool_calls": [{"index": index, "id": block["id"], "type": "function",
                                "function": {"name": block["name"], "arguments": ""}}]}),
                            None,
                        );
                    }
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or_default();
                        if !text.is_empty() {
                            s.text_chars += text.len();
                            s.answered = true;
                            s.chunks.delta(&mut s.out, json!({"content": text}), None);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        let text = delta["text"].as_str().unwrap_or_default();
                        s.text_chars += text.len();
                        s.answered = true;
                        s.chunks.delta(&mut s.out, json!({"content": text}), None);
                    }
                    Some("input_json_delta") => {
                        let block = data["index"].as_u64().unwrap_or(0);
                        let Some(&(_, index)) = self.tools.iter().find(|(b, _)| *b == block) else {
                            return;
                        };
                        s.chunks.delta(
                            &mut s.out,
                            json!({"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]}),
                            None,
                        );
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(stop) = data["delta"]["stop_reason"].as_str() {
                    self.finish = Some(finish_reason(stop));
                }
                let u = &data["usage"];
                let usage = s.usage.get_or_insert_with(Tokens::default);
                // Output tokens are cumulative; newer streams also restate the input.
                if let Some(o) = u["output_tokens"].as_u64() {
                    usage.output = o;
                }
                if u.get("input_tokens").is_some_and(Value::is_u64) {
                    let t = tokens(u);
                    usage.input = t.input;
                    usage.cached_input = t.cached_input;
                }
            }
            "message_stop" => {
                s.chunks
                    .delta(&mut s.out, json!({}), Some(self.finish.unwrap_or("stop")));
                s.done();
            }
            "error" => {
                let t = data["error"]["type"].as_str().unwrap_or("error");
                tracing::warn!(error_type = t, "the provider reported an error mid-stream");
                s.fail(
                    "provider_error",
                    "the provider reported an error during the answer",
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::chunks::Chunks;

    #[test]
    fn chat_requests_become_messages_requests() {
        let caller = json!({
            "model": "an/claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "stop": "END",
            "temperature": 0.2,
        });
        let body = request(caller.as_object().unwrap(), "claude", true).unwrap();
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "tool result and the next user turn merge: {m:?}");
        assert_eq!(m[1]["content"][0]["type"], "tool_use");
        assert_eq!(m[1]["content"][0]["input"], json!({"city": "Paris"}));
        assert_eq!(m[2]["content"][0]["type"], "tool_result");
        assert_eq!(m[2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(m[2]["content"][1]["text"], "Thanks");
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn answers_and_their_cache_tokens_convert() {
        let answer = json!({"content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}});
        let (out, usage, _) = response(&answer, "an/claude", "chatcmpl-1", 7);
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        let u = usage.unwrap();
        assert_eq!((u.input, u.cached_input, u.output), (8, 2, 3));
        assert_eq!(out["usage"]["prompt_tokens"], 8);
    }

    #[test]
    fn event_streams_become_chunks_with_cumulative_usage() {
        let mut s = StreamState {
            out: Vec::new(),
            chunks: Chunks {
                id: "c".into(),
                created: 0,
                model: "an/claude".into(),
                include_usage: true,
            },
            usage: None,
            text_chars: 0,
            answered: false,
            finished: false,
            prompt_chars: 0,
        };
        let mut t = Stream::default();
        for (name, data) in [
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":6}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ] {
            t.event(
                Event {
                    event: Some(name.into()),
                    data: data.into(),
                },
                &mut s,
            );
        }
        let out = String::from_utf8(s.out).unwrap();
        assert!(out.contains(r#""content":"Hello""#), "{out}");
        assert!(
            out.contains(r#""id":"t1""#) && out.contains(r#""arguments":"{\"a\"""#),
            "{out}"
        );
        assert!(out.contains(r#""finish_reason":"tool_calls""#), "{out}");
        assert!(
            out.contains(r#""prompt_tokens":9"#) && out.contains(r#""completion_tokens":6"#),
            "{out}"
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(s.finished);
    }
}
