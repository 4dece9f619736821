"""Mock of the OpenAI, Anthropic and Gemini HTTP APIs for the Tollgate integration tests.

Usage: python3 mock_llm.py [--port N]

Binds 127.0.0.1 on port N (default 0 = ephemeral), prints one line
``listening 127.0.0.1:PORT`` to stdout, then serves until SIGTERM or SIGINT.
One process speaks all three wire formats, HTTP/1.1 with keep-alive ("..." is any
path prefix, e.g. ``/openai/v1/chat/completions``):

  POST .../v1/chat/completions      OpenAI, key in ``Authorization: Bearer KEY``
  GET  .../v1/models                OpenAI model list (one model, ``mock-model``)
  POST .../v1/messages              Anthropic, ``x-api-key: KEY`` and ``anthropic-version``
  POST .../v1beta/models/M:generateContent         Gemini, ``x-goog-api-key: KEY``
  POST .../v1beta/models/M:streamGenerateContent?alt=sse     (or ``?key=KEY``)
  GET  /_mock/requests   the requests so far (not /_mock/ ones), oldest first, as
                         {"method", "path" (with query), "headers" (lower-case names),
                         "body" (parsed JSON or null)}; no auth
  POST /_mock/reset      forget them and restart the id counter (ids are ...-mock-N)

Streams are SSE in chunked encoding, one chunk per event, each flushed at once.
Without ``alt=sse`` streamGenerateContent answers one JSON array, as Gemini does.

Answers are deterministic:
  I  input words: whitespace-separated words of all the request's text once every
     ``[[...]]`` is replaced by a space. OpenAI: messages[].content (string or
     ``{"type": "text"}`` parts). Anthropic: ``system`` and messages[].content
     (string or text blocks, also inside tool_result blocks). Gemini:
     systemInstruction.parts[].text and contents[].parts[].text. Tool definitions,
     tool calls, functionResponse parts and images do not count.
  TEXT = "Hello from KIND model MODEL, you sent I words." (KIND openai, anthropic or
     gemini; MODEL as requested, for Gemini the path's). A stop sequence (``stop``,
     ``stop_sequences``, ``stopSequences``) found in TEXT cuts it before the first
     hit. A max-tokens limit (``max_completion_tokens``/``max_tokens``, ``max_tokens``,
     ``maxOutputTokens``) below its word count keeps that many words and finishes
     with ``length`` / ``max_tokens`` / ``MAX_TOKENS``. Streams send one word per
     event, with its trailing separator, so the pieces join to TEXT.
  O  words of TEXT as sent; for a tool call 2 (the words of ``{"city": "Paris"}``).
  C  cached input tokens (capped at I), R reasoning tokens: 0 unless directed.
Usage, in each provider's own terms (C is part of I; R comes on top of O):
  OpenAI     prompt_tokens I, cached_tokens C, completion_tokens O+R,
             reasoning_tokens R, total_tokens I+O+R
  Anthropic  input_tokens I-C, cache_read_input_tokens C, cache_creation 0,
             output_tokens O+R (message_start says 1, message_delta the total)
  Gemini     promptTokenCount I, cachedContentTokenCount C, candidatesTokenCount O,
             thoughtsTokenCount R, totalTokenCount I+O+R; zero counts left out

Directives, in the text of the last user message as ``[[name]]``/``[[name:value]]``,
or as request headers ``x-mock-NAME: value`` (a header wins; any value sets a flag):
  status:NNN      answer NNN (>= 400) with the provider's error body
  retry-after:S   with status, also send ``Retry-After: S``
  delay:MS        sleep before answering (before the first byte)
  gap:MS          sleep between stream events
  drop:N          after N stream events shut the socket down, no final chunk
                  (N past the last event: all events, still no final chunk)
  error-event:N   after N stream events send the provider's error event and end
                  the stream properly (OpenAI: no [DONE] after it)
  tool            call the first tool with {"city": "Paris"} (if tools were given)
  cached:N  reasoning:N   report N cached input / reasoning tokens
  nousage         no usage (Anthropic must send usage: all counts 0)
Keys: missing -> 401; starting with ``bad`` -> 401 (Gemini: 400 INVALID_ARGUMENT,
"API key not valid"); starting with ``limited`` -> 429 with ``Retry-After: 1``.
Order: delay, then the key, request validation (JSON body, model, messages/contents
and their roles, max_tokens and anthropic-version for Anthropic), status directive.
"""

import argparse
import json
import re
import signal
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

DIRECTIVE_RE = re.compile(r"\[\[([a-z-]+)(?::([^\[\]]*))?\]\]")
STRIP_RE = re.compile(r"\[\[[^\[\]]*\]\]")
WORD_RE = re.compile(r"\S+\s*")  # a word with its trailing separator
GEMINI_RE = re.compile(r"/v1(?:beta)?/models/([^/:]+):(generateContent|streamGenerateContent)$")
NUMBERS = ("status", "retry-after", "delay", "gap", "drop", "error-event", "cached", "reasoning")
FLAGS = ("tool", "nousage")
TOOL_ARGS = {"city": "Paris"}
TOOL_ARGS_JSON = json.dumps(TOOL_ARGS)  # '{"city": "Paris"}', as OpenAI sends it
PHRASES = {529: "Overloaded"}

state_lock = threading.Lock()
requests_log = []
counter = [0]


def lst(x):
    return x if isinstance(x, list) else []


def dct(x):
    return x if isinstance(x, dict) else {}


def pick(d, camel, snake):
    """Gemini's JSON takes both lowerCamel and snake_case field names."""
    d = dct(d)
    return d.get(camel, d.get(snake))


def count_words(texts):
    return sum(len(STRIP_RE.sub(" ", t).split()) for t in texts)


def thirds(s):
    """Split s into 3 roughly equal pieces (fewer if s is shorter than 3)."""
    k = max(1, -(-len(s) // 3))
    return [s[i:i + k] for i in range(0, len(s), k)]


def phrase(status):
    try:
        return PHRASES.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


class Directives:
    def __init__(self, text, headers):
        raw = {name: value for name, value in DIRECTIVE_RE.findall(text)}
        for name in NUMBERS + FLAGS:
            if headers.get("x-mock-" + name) is not None:
                raw[name] = headers["x-mock-" + name]
        for name in NUMBERS:
            try:
                value = int(raw[name])
            except (KeyError, ValueError):
                value = None
            setattr(self, name.replace("-", "_"), value)
        self.tool = "tool" in raw
        self.nousage = "nousage" in raw


class Answer:
    """What the mock 'generates', independent of the wire format."""

    def __init__(self, kind, model, body, d):
        with state_lock:
            counter[0] += 1
            self.n = counter[0]
        self.model, self.created = model, int(time.time())
        self.I = count_words(kind.texts(body))
        self.C, self.R = min(d.cached or 0, self.I), max(d.reasoning or 0, 0)
        self.usage = not d.nousage
        self.text = f"Hello from {kind.name} model {model}, you sent {self.I} words."
        self.reason, self.stop_seq = "stop", None  # reason: stop|stop_sequence|length|tool
        self.tool = kind.tool_name(body) if d.tool else None
        if self.tool:
            self.text, self.reason = None, "tool"
            self.O = len(TOOL_ARGS_JSON.split())
            return
        hits = [(self.text.find(s), s) for s in kind.stops(body)
                if isinstance(s, str) and s and s in self.text]
        if hits:
            pos, self.stop_seq = min(hits)
            self.text, self.reason = self.text[:pos], "stop_sequence"
        limit = kind.max_out(body)
        words = WORD_RE.findall(self.text)
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(words):
            self.text = "".join(words[:limit])
            self.reason, self.stop_seq = "length", None
        self.O = len(self.text.split())

    def words(self):
        return WORD_RE.findall(self.text)


class Kind:
    """What the three formats share: where the text is and which turn is the user's."""
    items = "messages"  # the list of turns
    roles = ()  # the roles the provider accepts
    stop_fields = max_fields = ()  # names of the stop-sequence and max-tokens settings
    max_temperature = 2

    def item_texts(self, item):
        return self.content_texts(item.get("content"))

    def content_texts(self, content):  # a string or text blocks
        if isinstance(content, str):
            yield content
        for part in map(dct, lst(content)):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                yield part["text"]

    def system_texts(self, body):
        return ()

    def config(self, body):  # where the generation settings are
        return body

    def field(self, body, names):
        config = self.config(body)
        return next((config[n] for n in names if n in config), None)

    def stops(self, body):
        stop = self.field(body, self.stop_fields)
        return [stop] if isinstance(stop, str) else lst(stop)

    def max_out(self, body):
        return self.field(body, self.max_fields)

    def check_temperature(self, body):
        t = self.config(body).get("temperature")
        if t is not None and (type(t) not in (int, float) or not 0 <= t <= self.max_temperature):
            return f"temperature: must be a number between 0 and {self.max_temperature}"
        return None

    def role(self, item):
        return item.get("role")

    def texts(self, body):
        yield from self.system_texts(body)
        for item in map(dct, lst(body.get(self.items))):
            yield from self.item_texts(item)

    def last_user_text(self, body):
        for item in map(dct, reversed(lst(body.get(self.items)))):
            if self.role(item) == "user":
                return " ".join(self.item_texts(item))
        return ""

    def check_roles(self, body):
        for i, item in enumerate(map(dct, body[self.items])):
            if self.role(item) not in self.roles:
                return f"{self.items}.{i}.role: unexpected role {self.role(item)!r}"
        return None


class OpenAI(Kind):
    name = "openai"
    roles = ("system", "developer", "user", "assistant", "tool", "function")
    stop_fields, max_fields = ("stop",), ("max_completion_tokens", "max_tokens")
    FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool": "tool_calls"}
    ERRORS = {401: ("invalid_request_error", "invalid_api_key"),
              404: ("invalid_request_error", "model_not_found"),
              429: ("requests", "rate_limit_exceeded")}

    def tool_name(self, body):
        tools = lst(body.get("tools"))
        return dct(dct(tools[0]).get("function")).get("name") if tools else None

    def key(self, headers, query):
        auth = headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""

    def validate(self, headers, body):
        if not isinstance(body.get("model"), str):
            return "you must provide a model parameter"
        if not lst(body.get("messages")):
            return "messages: must be a non-empty array"
        return self.check_roles(body) or self.check_temperature(body)

    def error(self, status, message):
        kind, code = self.ERRORS.get(status, ("server_error" if status >= 500
                                              else "invalid_request_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def error_event(self):
        return None, self.error(500, "The server had an error while processing your request.")

    def usage(self, a):
        return {"prompt_tokens": a.I, "completion_tokens": a.O + a.R,
                "total_tokens": a.I + a.O + a.R, "prompt_tokens_details": {"cached_tokens": a.C},
                "completion_tokens_details": {"reasoning_tokens": a.R}}

    def response(self, a, body):
        msg = {"role": "assistant", "content": a.text, "refusal": None}
        if a.tool:
            msg["tool_calls"] = [{"id": "call_mock_1", "type": "function",
                                  "function": {"name": a.tool, "arguments": TOOL_ARGS_JSON}}]
        out = {"id": f"chatcmpl-mock-{a.n}", "object": "chat.completion", "created": a.created,
               "model": a.model, "choices": [{"index": 0, "message": msg, "logprobs": None,
                                              "finish_reason": self.FINISH[a.reason]}]}
        if a.usage:
            out["usage"] = self.usage(a)
        return out

    def events(self, a, body):
        with_usage = a.usage and dct(body.get("stream_options")).get("include_usage") is True

        def chunk(delta, finish=None):
            c = {"id": f"chatcmpl-mock-{a.n}", "object": "chat.completion.chunk",
                 "created": a.created, "model": a.model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if with_usage:  # with include_usage every chunk has "usage": null but the last
                c["usage"] = None
            return None, c

        if a.tool:
            # As OpenAI does, the role rides on the chunk that opens the tool call; the
            # arguments string then follows in pieces, matched to the call by its index.
            call = {"index": 0, "id": "call_mock_1", "type": "function",
                    "function": {"name": a.tool, "arguments": ""}}
            yield chunk({"role": "assistant", "content": None, "tool_calls": [call]})
            for piece in thirds(TOOL_ARGS_JSON):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        else:
            yield chunk({"role": "assistant", "content": ""})
            for word in a.words():
                yield chunk({"content": word})
        yield chunk({}, self.FINISH[a.reason])
        if with_usage:  # the usage chunk has no choices at all
            _, last = chunk(None)
            yield None, dict(last, choices=[], usage=self.usage(a))
        yield None, "[DONE]"

    def encode(self, name, data):
        return f"data: {data if isinstance(data, str) else dumps(data)}\n\n"


class Anthropic(Kind):
    name = "anthropic"
    roles, max_temperature = ("user", "assistant"), 1
    stop_fields, max_fields = ("stop_sequences",), ("max_tokens",)
    STOP = {"stop": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens",
            "tool": "tool_use"}
    ERRORS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
              413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}

    def content_texts(self, content):
        yield from super().content_texts(content)
        for block in map(dct, lst(content)):
            if block.get("type") == "tool_result":
                yield from super().content_texts(block.get("content"))

    def system_texts(self, body):
        return self.content_texts(body.get("system"))

    def tool_name(self, body):
        tools = lst(body.get("tools"))
        return dct(tools[0]).get("name") if tools else None

    def key(self, headers, query):
        return headers.get("x-api-key", "").strip()

    def validate(self, headers, body):
        if not headers.get("anthropic-version"):
            return "anthropic-version: header is required"
        if not isinstance(body.get("model"), str):
            return "model: Field required"
        if type(body.get("max_tokens")) is not int:
            return "max_tokens: Field required"
        if not lst(body.get("messages")):
            return "messages: Field required"
        return self.check_roles(body) or self.check_temperature(body)

    def error(self, status, message):
        kind = self.ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def error_event(self):
        return "error", self.error(529, "Overloaded")

    def usage(self, a, output):
        if not a.usage:  # the format requires usage, so "no usage" is all zeros
            return {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0}
        return {"input_tokens": a.I - a.C, "output_tokens": output,
                "cache_read_input_tokens": a.C, "cache_creation_input_tokens": 0}

    def message(self, a, content, stop_reason, stop_seq, output):
        return {"id": f"msg_mock_{a.n}", "type": "message", "role": "assistant", "model": a.model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": stop_seq,
                "usage": self.usage(a, output)}

    def response(self, a, body):
        if a.tool:
            content = [{"type": "tool_use", "id": "toolu_mock_1", "name": a.tool, "input": TOOL_ARGS}]
        else:
            content = [{"type": "text", "text": a.text}]
        return self.message(a, content, self.STOP[a.reason], a.stop_seq, a.O + a.R)

    def events(self, a, body):
        # message_start reports output_tokens 1; message_delta the cumulative total.
        yield "message_start", {"type": "message_start",
                                "message": self.message(a, [], None, None, 1)}
        if a.tool:  # the input arrives as partial JSON strings, the start block has {}
            block = {"type": "tool_use", "id": "toolu_mock_1", "name": a.tool, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in thirds(TOOL_ARGS_JSON)]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": w} for w in a.words()]
        yield "content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": block}
        yield "ping", {"type": "ping"}
        for delta in deltas:
            yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        yield "message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": self.STOP[a.reason],
                                          "stop_sequence": a.stop_seq},
                                "usage": {"output_tokens": a.O + a.R if a.usage else 0}}
        yield "message_stop", {"type": "message_stop"}

    def encode(self, name, data):
        return f"event: {name}\ndata: {dumps(data)}\n\n"


class Gemini(Kind):
    name = "gemini"
    items, roles = "contents", ("user", "model", "function")
    stop_fields, max_fields = ("stopSequences", "stop_sequences"), ("maxOutputTokens", "max_output_tokens")
    FINISH = {"stop": "STOP", "stop_sequence": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}
    STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
              404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
              500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

    def item_texts(self, content):
        return (p["text"] for p in map(dct, lst(content.get("parts")))
                if isinstance(p.get("text"), str))

    def system_texts(self, body):
        return self.item_texts(dct(pick(body, "systemInstruction", "system_instruction")))

    def role(self, item):
        return item.get("role", "user")  # a single-turn request may leave the role out

    def tool_name(self, body):
        for tool in lst(body.get("tools")):
            decls = lst(pick(tool, "functionDeclarations", "function_declarations"))
            if decls:
                return dct(decls[0]).get("name")
        return None

    def config(self, body):
        return dct(pick(body, "generationConfig", "generation_config"))

    def key(self, headers, query):
        return (headers.get("x-goog-api-key") or query.get("key") or "").strip()

    def validate(self, headers, body):
        if not lst(body.get("contents")):
            return "* GenerateContentRequest.contents: contents is not specified"
        if self.check_roles(body):
            return "Please use a valid role: user, model."
        return self.check_temperature(body)

    def error(self, status, message):
        code = self.STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        out = {"error": {"code": status, "message": message, "status": code}}
        if message.startswith("API key not valid"):
            out["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                        "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]
        return out

    def error_event(self):
        return None, self.error(503, "The model is overloaded. Please try again later.")

    def chunk(self, a, parts, finish, usage):
        cand = {"content": {"role": "model", "parts": parts}}
        if finish:
            cand["finishReason"] = finish
        out = {"candidates": [dict(cand, index=0)]}
        if a.usage:  # Gemini (proto3 JSON) leaves out zero counts
            out["usageMetadata"] = {k: v for k, v in usage.items() if v}
        return dict(out, modelVersion=a.model, responseId=f"mock-{a.n}")

    def full_usage(self, a):
        return {"promptTokenCount": a.I, "candidatesTokenCount": a.O,
                "totalTokenCount": a.I + a.O + a.R, "cachedContentTokenCount": a.C,
                "thoughtsTokenCount": a.R}

    def response(self, a, body):
        # A function call carries no id in Gemini.
        parts = [{"functionCall": {"name": a.tool, "args": TOOL_ARGS}}] if a.tool else [{"text": a.text}]
        return self.chunk(a, parts, self.FINISH[a.reason], self.full_usage(a))

    def events(self, a, body):
        if a.tool:
            yield None, self.response(a, body)
            return
        words = a.words() or [""]
        for i, word in enumerate(words[:-1]):  # running counts; the last has the full usage
            yield None, self.chunk(a, [{"text": word}], None, {
                "promptTokenCount": a.I, "candidatesTokenCount": i + 1,
                "totalTokenCount": a.I + i + 1})
        yield None, self.chunk(a, [{"text": words[-1]}], self.FINISH[a.reason], self.full_usage(a))

    def encode(self, name, data):
        return f"data: {dumps(data)}\r\n\r\n"  # Gemini ends SSE lines with CRLF


OPENAI, ANTHROPIC, GEMINI = OpenAI(), Anthropic(), Gemini()
DROP = object()  # marker in an event sequence: cut the connection here


def with_faults(events, d, kind):
    """The event sequence with the drop / error-event directives applied."""
    for i, event in enumerate(events):
        if i == d.error_event:
            yield kind.error_event()
            return
        if i == d.drop:
            yield DROP
            return
        yield event
    if d.error_event is not None:
        yield kind.error_event()
    elif d.drop is not None:
        yield DROP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep stderr quiet
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_json(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status, phrase(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_chunk(self, text):
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def send_stream(self, kind, events, d):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, event in enumerate(with_faults(events, d, kind)):
                if i and d.gap:
                    time.sleep(d.gap / 1000)
                if event is DROP:
                    # Abrupt end: no terminating chunk, the socket is shut down.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_chunk(kind.encode(*event))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True

    def dispatch(self):
        path, _, qs = self.path.partition("?")
        query = {k: v[-1] for k, v in parse_qs(qs).items()}
        raw = self.read_body()
        if path.startswith("/_mock/"):
            return self.introspect(path)
        try:
            body, bad_json = (json.loads(raw), False) if raw.strip() else (None, False)
        except ValueError:
            body, bad_json = None, True
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        with state_lock:
            requests_log.append({"method": self.command, "path": self.path,
                                 "headers": headers, "body": body})

        post, gemini = self.command == "POST", GEMINI_RE.search(path)
        if post and path.endswith("/v1/chat/completions"):
            kind, model, stream = OPENAI, None, dct(body).get("stream") is True
        elif post and path.endswith("/v1/messages"):
            kind, model, stream = ANTHROPIC, None, dct(body).get("stream") is True
        elif post and gemini:
            kind, model, stream = GEMINI, gemini.group(1), gemini.group(2) == "streamGenerateContent"
        elif self.command == "GET" and path.endswith("/v1/models"):
            return self.models(query)
        else:
            return self.send_json(404, {"error": {"message": f"no route for {self.command} {path}",
                                                  "type": "invalid_request_error", "param": None,
                                                  "code": "unknown_url"}})
        self.serve_llm(kind, body, bad_json, query, model, stream)

    do_GET = do_POST = dispatch

    def introspect(self, path):
        if self.command == "GET" and path == "/_mock/requests":
            with state_lock:
                log = list(requests_log)
            return self.send_json(200, log)
        if self.command == "POST" and path == "/_mock/reset":
            with state_lock:
                requests_log.clear()
                counter[0] = 0
            return self.send_json(200, {"reset": True})
        self.send_json(404, {"error": "unknown /_mock/ path"})

    def key_error(self, kind, key):
        """(status, message, headers) for a missing, bad or rate-limited key, else None."""
        if not key:
            return 401, "No API key provided.", {}
        if key.startswith("bad"):
            if kind is GEMINI:  # Gemini answers a wrong key with 400, not 401
                return 400, "API key not valid. Please pass a valid API key.", {}
            return 401, f"Incorrect API key provided: {key}.", {}
        if key.startswith("limited"):
            return 429, "Rate limit reached for this key (mock).", {"Retry-After": "1"}
        return None

    def models(self, query):
        err = self.key_error(OPENAI, OPENAI.key(self.headers, query))
        if err:
            return self.send_json(err[0], OPENAI.error(err[0], err[1]), err[2])
        self.send_json(200, {"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]})

    def serve_llm(self, kind, body, bad_json, query, model, stream):
        body_ok = isinstance(body, dict)
        d = Directives(kind.last_user_text(body) if body_ok else "", self.headers)
        if d.delay:
            time.sleep(d.delay / 1000)
        err = self.key_error(kind, kind.key(self.headers, query))
        if err is None and not body_ok:
            err = 400, "We could not parse the JSON body of your request." if bad_json \
                else "The request body must be a JSON object.", {}
        if err is None:
            problem = kind.validate(self.headers, body)
            err = (400, problem, {}) if problem else None
        if err is None and d.status and d.status >= 400:
            extra = {"Retry-After": str(d.retry_after)} if d.retry_after is not None else {}
            err = d.status, f"{phrase(d.status)} (mock status {d.status})", extra
        if err:
            return self.send_json(err[0], kind.error(err[0], err[1]), err[2])
        a = Answer(kind, model or body["model"], body, d)
        if not stream:
            self.send_json(200, kind.response(a, body))
        elif kind is GEMINI and query.get("alt") != "sse":
            # Without alt=sse Gemini streams one JSON array of responses.
            self.send_json(200, [data for _, data in kind.events(a, body)])
        else:
            self.send_stream(kind, kind.events(a, body), d)


def main():
    parser = argparse.ArgumentParser(description="Mock OpenAI/Anthropic/Gemini server.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: ephemeral)")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    # shutdown() blocks until serve_forever returns, so call it from another thread.
    stop = lambda *_: threading.Thread(target=server.shutdown).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"listening {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
