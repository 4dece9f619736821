//! A provider's event stream turned into the caller's, event by event as they arrive: the
//! answer body of a streamed chat call.
//!
//! ```text
//!  provider bytes ─> sse::Parser ─> events ─> Translate (dialect) ─> OpenAI chunks ─> client
//!        │ silence ≥ keep-alive interval ─> ": keep-alive" comment
//!        └ broken / cut short ─> one well-formed error event, then the end
//! ```
//! Usage is written to the call's [`AiCell`] as soon as it is known (so a client that
//! leaves early still leaves a record of what was used), and the token-limit reservation is
//! settled once, when the stream ends or the body is dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use crate::ai::chunks::Chunks;
use crate::ai::sse::{self, Event};
use crate::ai::usage::{estimate, Price, Tokens};
use crate::ai::Settle;
use crate::body::BoxError;
use crate::observe::record::AiCell;

/// What a dialect's stream translator reads and writes.
#[derive(Debug)]
pub struct StreamState {
    /// Bytes to send the client.
    pub out: Vec<u8>,
    pub chunks: Chunks,
    /// The usage as the provider reported it so far.
    pub usage: Option<Tokens>,
    /// Characters of answer text sent (for an estimate when no usage comes).
    pub text_chars: usize,
    /// Set when the first piece of answer (text or tool call) was written.
    pub answered: bool,
    /// The translator is done: nothing more is read from the provider.
    pub finished: bool,
    /// Characters of the request's messages, for an estimate when no usage comes.
    pub prompt_chars: usize,
}

impl StreamState {
    /// What was used: the provider's count, or an estimate (`true`) when it sent none.
    pub fn tokens(&self) -> (Tokens, bool) {
        match self.usage {
            Some(t) => (t, false),
            None => (
                Tokens {
                    input: estimate(self.prompt_chars),
                    output: estimate(self.text_chars),
                    ..Tokens::default()
                },
                true,
            ),
        }
    }

    /// Ends the stream the way OpenAI does: the usage chunk when asked for (estimated when
    /// the provider counted nothing), then `[DONE]`.
    pub fn done(&mut self) {
        let (usage, _) = self.tokens();
        self.chunks.usage(&mut self.out, usage);
        sse::data(&mut self.out, "[DONE]");
        self.finished = true;
    }

    /// Ends the stream with an error event (OpenAI's shape), after what was already sent.
    pub fn fail(&mut self, code: &str, message: &str) {
        Chunks::error(&mut self.out, code, message);
        self.finished = true;
    }
}

/// A dialect's event translator.
pub trait Translate: Send + Sync + 'static {
    /// One event from the provider.
    fn event(&mut self, ev: Event, s: &mut StreamState);
    /// The provider's stream ended; `s.finished` tells whether the translator saw the end.
    fn end(&mut self, s: &mut StreamState) {
        if !s.finished {
            s.fail(
                "provider_stream_ended",
                "the provider's stream ended before the answer was complete",
            );
        }
    }
}

/// The streamed answer.
pub struct Translated {
    upstream: Incoming,
    parser: sse::Parser,
    translate: Box<dyn Translate>,
    state: StreamState,
    pending: VecDeque<Bytes>,
    done: bool,
    cell: AiCell,
    price: Price,
    started: Instant,
    settle: Option<Settle>,
    keepalive: Pin<Box<Sleep>>,
    interval: Duration,
}

impl Translated {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        upstream: Incoming,
        translate: Box<dyn Translate>,
        chunks: Chunks,
        cell: AiCell,
        price: Price,
        started: Instant,
        prompt_chars: usize,
        settle: Option<Settle>,
        interval: Duration,
    ) -> Translated {
        Translated {
            upstream,
            parser: sse::Parser::default(),
            translate,
            state: StreamState {
                out: Vec::new(),
                chunks,
                usage: None,
                text_chars: 0,
                answered: false,
                finished: false,
                prompt_chars,
            },
            pending: VecDeque::new(),
            done: false,
            cell,
            price,
            started,
            settle,
            keepalive: Box::pin(tokio::time::sleep(interval)),
            interval,
        }
    }

    fn tokens(&self) -> (Tokens, bool) {
        self.state.tokens()
    }

    /// Notes what the translator wrote: bytes to send, usage, the first token.
    fn collect(&mut self) {
        if !self.state.out.is_empty() {
            self.pending
                .push_back(Bytes::from(std::mem::take(&mut self.state.out)));
        }
        let (tokens, estimated) = self.tokens();
        let mut u = self.cell.lock().unwrap_or_else(|e| e.into_inner());
        if self.state.answered && u.ttft.is_none() {
            u.ttft = Some(self.started.elapsed());
        }
        if self.state.usage.is_some() || self.state.finished {
            u.input_tokens = tokens.input;
            u.cached_input_tokens = tokens.cached_input;
            u.output_tokens = tokens.output;
            u.reasoning_tokens = tokens.reasoning;
            u.cost = self.price.cost(&tokens);
            u.estimated = estimated;
        }
    }

    fn finish(&mut self) {
        if !self.state.finished {
            self.translate.end(&mut self.state);
        }
        self.done = true;
        self.collect();
        if let Some(settle) = self.settle.take() {
            let (tokens, _) = self.tokens();
            settle.settle(&tokens, self.price.cost(&tokens));
        }
    }
}

impl HttpBody for Translated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let mut events = Vec::new();
                    if this.parser.feed(&data, &mut events).is_err() {
                        this.state.fail(
                            "provider_error",
                            "the provider sent an event larger than the gateway accepts",
                        );
                    }
                    for ev in events {
                        if this.state.finished {
                            break;
                        }
                        this.translate.event(ev, &mut this.state);
                    }
                    if this.state.finished {
                        this.finish();
                    } else {
                        this.collect();
                    }
                    let deadline = tokio::time::Instant::now() + this.interval;
                    this.keepalive.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %crate::error::chain(&e), "the provider's stream broke");
                    this.state
                        .fail("provider_stream_broken", "the provider's stream broke off");
                    this.finish();
                }
                Poll::Ready(None) => {
                    let mut events = Vec::new();
                    this.parser.finish(&mut events);
                    for ev in events {
                        if this.state.finished {
                            break;
                        }
                        this.translate.event(ev, &mut this.state);
                    }
                    this.finish();
                }
                Poll::Pending => {
                    if this.keepalive.as_mut().poll(cx).is_ready() {
                        this.pending.push_back(Bytes::from_static(sse::KEEP_ALIVE));
                        let deadline = tokio::time::Instant::now() + this.interval;
                        this.keepalive.as_mut().reset(deadline);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A client that leaves early still settles what was used.
impl Drop for Translated {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            let (tokens, _) = self.tokens();
            settle.settle(&tokens, self.price.cost(&tokens));
        }
    }
}
