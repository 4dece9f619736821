//! Server-sent events (the WHATWG `text/event-stream` format) as the providers stream them:
//! an incremental parser that takes the answer's bytes as they arrive, whatever the chunk
//! boundaries, and the writer of the events the edge sends.
//!
//! Lines end in `\n` or `\r\n` (Gemini sends `\r\n`); a blank line ends an event; `:` starts
//! a comment (Anthropic's and others' keep-alives); `data:` lines of one event are joined by
//! `\n`. The parser holds at most [`MAX_EVENT_BYTES`] of one event: a provider that sends
//! more without a line end is cut off rather than buffered without bound.

/// Most bytes of one line or one event's data.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field (Anthropic names every event; OpenAI and Gemini send none).
    pub event: Option<String>,
    pub data: String,
}

/// The stream broke the size bound.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl Parser {
    /// Takes the next bytes; complete events go to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            if self.line.len() + i > MAX_EVENT_BYTES {
                return Err(TooLarge);
            }
            self.line.extend_from_slice(&bytes[..i]);
            bytes = &bytes[i + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_done(&line, out)?;
            line.clear();
            self.line = line;
        }
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(TooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// The stream ended: an event not closed by a blank line still counts (some servers
    /// end without one).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let _ = self.line_done(&line, out);
        }
        self.dispatch(out);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() > MAX_EVENT_BYTES {
                    return Err(TooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        if self.has_data || self.event.is_some() {
            out.push(Event {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        self.has_data = false;
    }
}

/// `data: <json>\n\n`
pub fn data(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The comment sent on long silences, so proxies and clients keep the stream open.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &str, piece: usize) -> Vec<Event> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(piece) {
            p.feed(chunk, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn events_are_the_same_whatever_the_chunk_boundaries() {
        let input = "event: message_start\ndata: {\"a\":1}\n\n: ping\r\n\r\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        let want = vec![
            Event {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            Event {
                event: None,
                data: "x\ny".into(),
            },
            Event {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(parse_in_pieces(input, piece), want, "pieces of {piece}");
        }
    }

    #[test]
    fn an_unterminated_last_event_still_counts() {
        assert_eq!(
            parse_in_pieces("data: last", 4),
            vec![Event {
                event: None,
                data: "last".into()
            }]
        );
    }

    #[test]
    fn a_line_without_end_is_bounded() {
        let mut p = Parser::default();
        let mut out = Vec::new();
        let big = vec![b'a'; 1 << 20];
        let mut result = Ok(());
        for _ in 0..5 {
            result = p.feed(&big, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(TooLarge));
    }
}
