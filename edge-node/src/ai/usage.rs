//! Tokens and what they cost: each token type priced separately, from the model's prices
//! (USD per million tokens).

use tollgate_proto::model::AiModel;

/// Prices of one model, USD per token.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
    pub reasoning: f64,
}

impl Price {
    pub fn of(m: &AiModel) -> Price {
        Price {
            input: m.input_per_mtok / 1e6,
            cached_input: m.cached_input_per_mtok.unwrap_or(m.input_per_mtok) / 1e6,
            output: m.output_per_mtok / 1e6,
            reasoning: m.reasoning_per_mtok.unwrap_or(m.output_per_mtok) / 1e6,
        }
    }

    /// USD for `t`: uncached input, cached input, plain output and reasoning each at their
    /// own price.
    pub fn cost(&self, t: &Tokens) -> f64 {
        let cached = t.cached_input.min(t.input);
        let reasoning = t.reasoning.min(t.output);
        (t.input - cached) as f64 * self.input
            + cached as f64 * self.cached_input
            + (t.output - reasoning) as f64 * self.output
            + reasoning as f64 * self.reasoning
    }
}

/// What a call used. `input` includes `cached_input`, `output` includes `reasoning` (as
/// OpenAI counts them; the other providers' counts are converted to this).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input + self.output
    }

    /// OpenAI's `usage` object.
    pub fn to_openai(self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.total(),
            "prompt_tokens_details": {"cached_tokens": self.cached_input},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }

    /// Reads OpenAI's `usage` object (also what Mistral, Ollama and vLLM send).
    pub fn from_openai(u: &serde_json::Value) -> Option<Tokens> {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let input = u.get("prompt_tokens")?.as_u64()?;
        Some(Tokens {
            input,
            cached_input: n(&u["prompt_tokens_details"]["cached_tokens"]),
            output: n(&u["completion_tokens"]),
            reasoning: n(&u["completion_tokens_details"]["reasoning_tokens"]),
        })
    }
}

/// A rough count for text whose tokens nobody reported: four characters a token, the usual
/// rule of thumb for English (marked `estimated` in the record).
pub fn estimate(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_type_has_its_price() {
        let m = AiModel {
            name: "m".into(),
            input_per_mtok: 2.0,
            cached_input_per_mtok: Some(0.5),
            output_per_mtok: 8.0,
            reasoning_per_mtok: Some(10.0),
        };
        let t = Tokens {
            input: 1_000_000,
            cached_input: 400_000,
            output: 100_000,
            reasoning: 50_000,
        };
        // 600k x 2 + 400k x 0.5 + 50k x 8 + 50k x 10, per million.
        let want = 1.2 + 0.2 + 0.4 + 0.5;
        assert!((Price::of(&m).cost(&t) - want).abs() < 1e-9);

        // Without their own prices, cached input costs as input and reasoning as output.
        let plain = AiModel {
            cached_input_per_mtok: None,
            reasoning_per_mtok: None,
            ..m
        };
        assert!((Price::of(&plain).cost(&t) - (2.0 + 0.8)).abs() < 1e-9);
    }

    #[test]
    fn openai_usage_round_trips() {
        let t = Tokens {
            input: 12,
            cached_input: 3,
            output: 7,
            reasoning: 2,
        };
        assert_eq!(Tokens::from_openai(&t.to_openai()), Some(t));
        assert_eq!(Tokens::from_openai(&serde_json::Value::Null), None);
    }
}
