//! The unified surface's stream format: OpenAI's `chat.completion.chunk` events, written
//! for every provider's translated stream (and by the stream itself, for its estimated usage
//! and its closing error). Imports no translator, so every translator and `stream.rs` can
//! use it.

use serde_json::{json, Value};

use crate::ai::sse;
use crate::ai::usage::Tokens;

/// The chunks of one streamed answer, as OpenAI writes them.
#[derive(Debug, Clone)]
pub struct Chunks {
    pub id: String,
    pub created: u64,
    /// As the caller sees it: `provider/model`.
    pub model: String,
    /// `stream_options.include_usage`: every chunk carries `"usage": null` and a last chunk
    /// the usage.
    pub include_usage: bool,
}

impl Chunks {
    fn chunk(&self, choices: Value) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// A chunk with one choice's `delta` (and its finish reason, if it ends).
    pub fn delta(&self, out: &mut Vec<u8>, delta: Value, finish_reason: Option<&str>) {
        let c = self.chunk(json!([{
            "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason,
        }]));
        sse::data(out, &c.to_string());
    }

    /// The usage chunk (no choices), when the caller asked for it.
    pub fn usage(&self, out: &mut Vec<u8>, t: Tokens) {
        if self.include_usage {
            let mut c = self.chunk(json!([]));
            c["usage"] = t.to_openai();
            sse::data(out, &c.to_string());
        }
    }

    /// An error event, as OpenAI sends one mid-stream.
    pub fn error(out: &mut Vec<u8>, code: &str, message: &str) {
        let e = json!({"error": {"message": message, "type": "api_error", "param": null, "code": code}});
        sse::data(out, &e.to_string());
    }
}
