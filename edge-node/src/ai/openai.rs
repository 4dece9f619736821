//! The unified surface's format (OpenAI chat completions), and the OpenAI dialect: OpenAI
//! itself and every OpenAI-compatible server (Mistral, Ollama, vLLM, DeepSeek).
//!
//! The caller's request goes on as it is but for `model` (the provider's own name) and, on
//! a stream, `stream_options.include_usage` (always asked for, so usage is always known;
//! the usage chunk reaches the caller only when it asked for it). Answers name the model
//! as the caller does, `provider/model`.

use serde_json::{json, Map, Value};
use tollgate_proto::model::AiProviderKind;

use crate::ai::sse::{self, Event};
use crate::ai::stream::{StreamState, Translate};
use crate::ai::usage::Tokens;

/// The body sent to an OpenAI-dialect provider.
pub fn request(caller: &Map<String, Value>, model: &str, stream: bool, kind: AiProviderKind) -> Value {
    let mut body = caller.clone();
    body.insert("model".into(), Value::String(model.into()));
    if stream && kind != AiProviderKind::Mistral {
        // Mistral sends usage in its last chunk unasked (and has no stream_options).
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options {
            o.insert("include_usage".into(), Value::Bool(true));
        } else {
            *options = json!({"include_usage": true});
        }
    }
    Value::Object(body)
}

/// A non-streamed answer: named as the caller names models, its usage read.
pub fn response(mut answer: Value, provider: &str) -> (Value, Option<Tokens>, usize) {
    rename_model(&mut answer, provider);
    let usage = answer.get("usage").and_then(Tokens::from_openai);
    let chars = answer["choices"]
        .as_array()
        .map_or(0, |c| c.iter().map(|c| text_len(&c["message"]["content"])).sum());
    (answer, usage, chars)
}

fn rename_model(v: &mut Value, provider: &str) {
    if let Some(Value::String(m)) = v.get_mut("model") {
        *m = format!("{provider}/{m}");
    }
}

fn text_len(v: &Value) -> usize {
    v.as_str().map_or(0, str::len)
}

/// An OpenAI-dialect stream: chunks go on (renamed, their usage field as the caller asked),
/// the provider's usage chunk is held and sent last only when asked for.
#[derive(Debug)]
pub struct Stream {
    pub provider: String,
}

impl Translate for Stream {
    fn event(&mut self, ev: Event, s: &mut StreamState) {
        if ev.data == "[DONE]" {
            s.done();
            return;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(&ev.data) else {
            s.fail("provider_error", "the provider sent an event that is not JSON");
            return;
        };
        if chunk.get("error").is_some() {
            tracing::warn!(provider = %self.provider, "the provider reported an error mid-stream");
            s.fail(
                "provider_error",
                "the provider reported an error during the answer",
            );
            return;
        }
        if let Some(u) = chunk.get("usage").and_then(Tokens::from_openai) {
            s.usage = Some(u);
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        if choices.is_empty() {
            return;
        }
        for c in choices {
            let d = &c["delta"];
            let text = text_len(&d["content"]);
            s.text_chars += text;
            if text > 0 || d.get("tool_calls").is_some_and(|t| !t.is_null()) {
                s.answered = true;
            }
        }
        rename_model(&mut chunk, &self.provider);
        if let Value::Object(o) = &mut chunk {
            o.remove("usage");
            if s.chunks.include_usage {
                o.insert("usage".into(), Value::Null);
            }
        }
        sse::data(&mut s.out, &chunk.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::chunks::Chunks;

    fn state(include_usage: bool) -> StreamState {
        StreamState {
            out: Vec::new(),
            chunks: Chunks {
                id: "chatcmpl-1".into(),
                created: 1,
                model: "oa/gpt".into(),
                include_usage,
            },
            usage: None,
            text_chars: 0,
            answered: false,
            finished: false,
            prompt_chars: 0,
        }
    }

    fn ev(data: &str) -> Event {
        Event {
            event: None,
            data: data.into(),
        }
    }

    #[test]
    fn streams_always_ask_for_usage_but_mistral_is_not_told() {
        let caller = json!({"model": "oa/gpt", "stream": true, "messages": []});
        let body = request(caller.as_object().unwrap(), "gpt", true, AiProviderKind::Openai);
        assert_eq!(body["model"], "gpt");
        assert_eq!(body["stream_options"]["include_usage"], true);
        let body = request(caller.as_object().unwrap(), "m", true, AiProviderKind::Mistral);
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn the_usage_chunk_reaches_only_callers_that_asked() {
        for asked in [false, true] {
            let mut s = state(asked);
            let mut t = Stream {
                provider: "oa".into(),
            };
            t.event(ev(r#"{"id":"x","model":"gpt","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#), &mut s);
            t.event(ev(r#"{"id":"x","model":"gpt","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#), &mut s);
            t.event(ev("[DONE]"), &mut s);
            let out = String::from_utf8(s.out.clone()).unwrap();
            assert!(out.contains(r#""model":"oa/gpt""#), "{out}");
            assert_eq!(out.contains(r#""prompt_tokens":3"#), asked, "{out}");
            assert_eq!(out.contains(r#""usage":null"#), asked, "{out}");
            assert!(out.ends_with("data: [DONE]\n\n"));
            assert_eq!(s.usage.unwrap().input, 3);
            assert!(s.finished && s.answered);
        }
    }
}
