"""Self-test for mock_llm.py: run with ``python3 test_mock_llm.py``.

Starts the mock as a subprocess and checks, per provider, the plain and streamed
answers, tool calls, token counts, directives, keys and the /_mock/ introspection.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

MOCK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mock_llm.py")
SYSTEM = "You are a terse bot."  # 5 words
PROMPT = "Please say hello now"  # 4 words
I = 9
OPENAI_KEY = {"Authorization": "Bearer sk-test"}
ANTHROPIC_KEY = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
GEMINI_KEY = {"x-goog-api-key": "AIza-test"}
TOOLS_OPENAI = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}},
                {"type": "function", "function": {"name": "other", "parameters": {}}}]
TOOLS_ANTHROPIC = [{"name": "get_weather", "input_schema": {"type": "object"}}]
TOOLS_GEMINI = [{"functionDeclarations": [{"name": "get_weather"}, {"name": "other"}]}]


def text(kind, model, words=I):
    return f"Hello from {kind} model {model}, you sent {words} words."


def openai(prompt=PROMPT, **extra):
    body = {"model": "gpt-test", "messages": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": prompt}]}
    return "/v1/chat/completions", dict(body, **extra), dict(OPENAI_KEY)


def anthropic(prompt=PROMPT, **extra):
    body = {"model": "claude-test", "max_tokens": 100, "system": SYSTEM,
            "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}]}
    return "/v1/messages", dict(body, **extra), dict(ANTHROPIC_KEY)


def gemini(prompt=PROMPT, stream=False, **extra):
    body = {"systemInstruction": {"parts": [{"text": SYSTEM}]},
            "contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    path = ("/v1beta/models/gemini-test:streamGenerateContent?alt=sse" if stream
            else "/v1beta/models/gemini-test:generateContent")
    return path, dict(body, **extra), dict(GEMINI_KEY)


def raw_request(port, path, body, headers):
    """POST over a plain socket; returns (status, headers, chunks, terminated)."""
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Length: {len(data)}\r\n"
                     f"Content-Type: application/json\r\nConnection: close\r\n{head}\r\n".encode() + data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    chunks, terminated = [], False
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            terminated = rest == b"\r\n"
            break
        chunks.append(rest[:size].decode())
        assert rest[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
        rest = rest[size + 2:]
    return int(lines[0].split()[1]), hdrs, chunks, terminated


class MockLlmTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc = subprocess.Popen([sys.executable, MOCK], stdout=subprocess.PIPE, text=True)
        line = cls.proc.stdout.readline().strip()
        assert line.startswith("listening 127.0.0.1:"), line
        cls.port = int(line.rsplit(":", 1)[1])

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        assert cls.proc.wait(timeout=10) == 0
        cls.proc.stdout.close()

    def setUp(self):
        self.call("POST", "/_mock/reset")

    def call(self, method, path, body=None, headers=None, raw=None):
        """One request; returns (status, headers, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        out = resp.status, resp.headers, resp.read()
        conn.close()
        return out

    def post(self, request, **headers):
        path, body, hdrs = request
        status, resp_headers, data = self.call("POST", path, body, dict(hdrs, **headers))
        return status, resp_headers, json.loads(data)

    def stream(self, request, **headers):
        """A streamed answer as (content type, raw text)."""
        path, body, hdrs = request
        status, resp_headers, data = self.call("POST", path, body, dict(hdrs, **headers))
        self.assertEqual(status, 200, data)
        self.assertEqual(resp_headers["Transfer-Encoding"], "chunked")
        return resp_headers["Content-Type"], data.decode()

    def data_events(self, raw, sep="\n\n"):
        """The payloads of ``data:`` events, JSON-decoded except ``[DONE]``."""
        self.assertTrue(raw.endswith(sep), raw[-40:])
        out = []
        for event in raw[:-len(sep)].split(sep):
            self.assertTrue(event.startswith("data: "), event)
            payload = event[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
        return out

    def named_events(self, raw):
        out = []
        for event in raw.split("\n\n")[:-1]:
            name, data = event.split("\n")
            self.assertTrue(name.startswith("event: ") and data.startswith("data: "), event)
            out.append((name[len("event: "):], json.loads(data[len("data: "):])))
        return out

    # --- OpenAI -------------------------------------------------------------

    def test_openai_answer(self):
        status, headers, body = self.post(openai(PROMPT + " [[cached:2]]"))
        self.assertEqual((status, headers["Content-Type"]), (200, "application/json"))
        self.assertIsInstance(body.pop("created"), int)
        self.assertEqual(body, {
            "id": "chatcmpl-mock-1", "object": "chat.completion", "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": text("openai", "gpt-test"),
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": I, "completion_tokens": 9, "total_tokens": I + 9,
                      "prompt_tokens_details": {"cached_tokens": 2},
                      "completion_tokens_details": {"reasoning_tokens": 0}}})

    def test_openai_stream_without_usage(self):
        ctype, raw = self.stream(openai(stream=True))
        self.assertEqual(ctype, "text/event-stream")
        events = self.data_events(raw)
        self.assertEqual(events[-1], "[DONE]")
        chunks = events[:-1]
        self.assertTrue(all(c["object"] == "chat.completion.chunk" and "usage" not in c
                            for c in chunks))
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
        self.assertEqual(len(words), 9)
        self.assertEqual("".join(words), text("openai", "gpt-test"))
        self.assertEqual(chunks[-1]["choices"][0]["delta"], {})
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    def test_openai_stream_with_usage(self):
        _, raw = self.stream(openai(PROMPT + " [[reasoning:4]]", stream=True,
                                    stream_options={"include_usage": True}))
        events = self.data_events(raw)
        self.assertEqual(events[-1], "[DONE]")
        *chunks, last = events[:-1]
        self.assertTrue(all(c["usage"] is None for c in chunks))
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(last["choices"], [])
        self.assertEqual(last["usage"], {
            "prompt_tokens": I, "completion_tokens": 9 + 4, "total_tokens": I + 9 + 4,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 4}})

    def test_openai_tool_call(self):
        _, _, body = self.post(openai(PROMPT + " [[tool]]", tools=TOOLS_OPENAI))
        choice = body["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertIsNone(choice["message"]["content"])
        self.assertEqual(choice["message"]["tool_calls"], [{
            "id": "call_mock_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}])
        self.assertEqual(body["usage"]["completion_tokens"], 2)

        _, raw = self.stream(openai(PROMPT + " [[tool]]", tools=TOOLS_OPENAI, stream=True))
        chunks = self.data_events(raw)[:-1]
        deltas = [c["choices"][0]["delta"] for c in chunks]
        self.assertEqual(deltas[0]["tool_calls"], [{
            "index": 0, "id": "call_mock_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}])
        pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
        self.assertEqual(len(pieces), 3)
        self.assertEqual("".join(pieces), '{"city": "Paris"}')
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")

    def test_openai_prefix_models_and_keep_alive(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        path, body, headers = openai()
        for prefix in ("", "/openai"):  # two requests on one connection
            conn.request("POST", prefix + path, json.dumps(body), headers)
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            self.assertEqual(json.loads(resp.read())["model"], "gpt-test")
        conn.request("GET", "/api/v1/models", headers=OPENAI_KEY)
        resp = conn.getresponse()
        self.assertEqual(json.loads(resp.read()), {"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]})
        conn.close()

    def test_openai_stop_and_max_tokens(self):
        _, _, body = self.post(openai(stop=["model"]))
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello from openai ")
        self.assertEqual(body["usage"]["completion_tokens"], 3)
        _, _, body = self.post(openai(max_completion_tokens=2))
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello from ")
        self.assertEqual(body["choices"][0]["finish_reason"], "length")

    # --- Anthropic ----------------------------------------------------------

    def test_anthropic_answer(self):
        status, _, body = self.post(anthropic(PROMPT + " [[cached:3]]"))
        self.assertEqual(status, 200)
        self.assertEqual(body, {
            "id": "msg_mock_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": text("anthropic", "claude-test")}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": I - 3, "output_tokens": 9, "cache_read_input_tokens": 3,
                      "cache_creation_input_tokens": 0}})

    def test_anthropic_stream(self):
        ctype, raw = self.stream(anthropic(stream=True))
        self.assertEqual(ctype, "text/event-stream")
        events = self.named_events(raw)
        names = [name for name, _ in events]
        self.assertEqual(names, ["message_start", "content_block_start", "ping"]
                         + ["content_block_delta"] * 9
                         + ["content_block_stop", "message_delta", "message_stop"])
        self.assertTrue(all(data["type"] == name for name, data in events))
        start = events[0][1]["message"]
        self.assertEqual((start["content"], start["stop_reason"]), ([], None))
        self.assertEqual(start["usage"], {"input_tokens": I, "output_tokens": 1,
                                          "cache_read_input_tokens": 0,
                                          "cache_creation_input_tokens": 0})
        self.assertEqual(events[1][1]["content_block"], {"type": "text", "text": ""})
        self.assertEqual("".join(d["delta"]["text"] for _, d in events[3:12]),
                         text("anthropic", "claude-test"))
        self.assertEqual(events[-2][1], {"type": "message_delta",
                                         "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                         "usage": {"output_tokens": 9}})

    def test_anthropic_tool_call(self):
        _, _, body = self.post(anthropic(PROMPT + " [[tool]]", tools=TOOLS_ANTHROPIC))
        self.assertEqual(body["content"], [{"type": "tool_use", "id": "toolu_mock_1",
                                            "name": "get_weather", "input": {"city": "Paris"}}])
        self.assertEqual(body["stop_reason"], "tool_use")

        _, raw = self.stream(anthropic(PROMPT + " [[tool]]", tools=TOOLS_ANTHROPIC, stream=True))
        events = self.named_events(raw)
        self.assertEqual(events[1][1]["content_block"], {"type": "tool_use", "id": "toolu_mock_1",
                                                         "name": "get_weather", "input": {}})
        deltas = [d["delta"] for name, d in events if name == "content_block_delta"]
        self.assertEqual(len(deltas), 3)
        self.assertTrue(all(d["type"] == "input_json_delta" for d in deltas))
        self.assertEqual(json.loads("".join(d["partial_json"] for d in deltas)), {"city": "Paris"})
        self.assertEqual(events[-2][1]["delta"]["stop_reason"], "tool_use")

    def test_anthropic_stop_sequence(self):
        _, _, body = self.post(anthropic(stop_sequences=["nothing", "you sent"]))
        self.assertEqual(body["content"][0]["text"], "Hello from anthropic model claude-test, ")
        self.assertEqual((body["stop_reason"], body["stop_sequence"]), ("stop_sequence", "you sent"))
        self.assertEqual(body["usage"]["output_tokens"], 5)

    def test_anthropic_validation(self):
        path, body, headers = anthropic()
        del headers["anthropic-version"]
        status, _, err = self.post((path, body, headers))
        self.assertEqual(status, 400)
        self.assertEqual(err["type"], "error")
        self.assertEqual(err["error"]["type"], "invalid_request_error")
        path, body, headers = anthropic()
        del body["max_tokens"]
        self.assertEqual(self.post((path, body, headers))[0], 400)

    def test_anthropic_error_event(self):
        _, raw = self.stream(anthropic(PROMPT + " [[error-event:3]]", stream=True))
        events = self.named_events(raw)
        self.assertEqual([n for n, _ in events], ["message_start", "content_block_start", "ping",
                                                  "error"])
        self.assertEqual(events[-1][1], {"type": "error", "error": {"type": "overloaded_error",
                                                                    "message": "Overloaded"}})

    # --- Gemini -------------------------------------------------------------

    def test_gemini_answer(self):
        status, _, body = self.post(gemini())
        self.assertEqual(status, 200)
        self.assertEqual(body, {
            "candidates": [{"content": {"role": "model",
                                        "parts": [{"text": text("gemini", "gemini-test")}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": I, "candidatesTokenCount": 9,
                              "totalTokenCount": I + 9},
            "modelVersion": "gemini-test", "responseId": "mock-1"})
        _, _, body = self.post(gemini(PROMPT + " [[cached:2]] [[reasoning:5]]"))
        self.assertEqual(body["usageMetadata"], {
            "promptTokenCount": I, "candidatesTokenCount": 9, "totalTokenCount": I + 9 + 5,
            "cachedContentTokenCount": 2, "thoughtsTokenCount": 5})

    def test_gemini_stream_uses_crlf(self):
        ctype, raw = self.stream(gemini(stream=True))
        self.assertEqual(ctype, "text/event-stream")
        self.assertNotIn("[DONE]", raw)
        self.assertEqual(raw.count("\n"), raw.count("\r\n"))  # every line ends in CRLF
        events = self.data_events(raw, "\r\n\r\n")
        self.assertEqual(len(events), 9)
        words = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]
        self.assertEqual("".join(words), text("gemini", "gemini-test"))
        for i, e in enumerate(events[:-1]):
            self.assertNotIn("finishReason", e["candidates"][0])
            self.assertEqual(e["usageMetadata"]["promptTokenCount"], I)
            self.assertEqual(e["usageMetadata"]["candidatesTokenCount"], i + 1)
        self.assertEqual(events[-1]["candidates"][0]["finishReason"], "STOP")
        self.assertEqual(events[-1]["usageMetadata"], {
            "promptTokenCount": I, "candidatesTokenCount": 9, "totalTokenCount": I + 9})

    def test_gemini_tool_call(self):
        _, _, body = self.post(gemini(PROMPT + " [[tool]]", tools=TOOLS_GEMINI))
        self.assertEqual(body["candidates"][0]["content"]["parts"],
                         [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}])
        self.assertEqual(body["candidates"][0]["finishReason"], "STOP")
        _, raw = self.stream(gemini(PROMPT + " [[tool]]", stream=True, tools=TOOLS_GEMINI))
        [event] = self.data_events(raw, "\r\n\r\n")
        self.assertEqual(event["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
                         "get_weather")

    def test_gemini_query_key_and_config(self):
        path, body, _ = gemini(generationConfig={"stopSequences": ["you"], "temperature": 0.2})
        status, _, data = self.call("POST", path + "?key=AIza-test", body)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(data)["candidates"][0]["content"]["parts"][0]["text"],
                         "Hello from gemini model gemini-test, ")

    # --- all kinds ----------------------------------------------------------

    def test_status_directive_with_retry_after(self):
        for request, check in (
                (openai, lambda e: e["error"]["type"] == "requests"
                 and e["error"]["code"] == "rate_limit_exceeded" and e["error"]["param"] is None),
                (anthropic, lambda e: e["type"] == "error"
                 and e["error"]["type"] == "rate_limit_error"),
                (gemini, lambda e: e["error"]["code"] == 429
                 and e["error"]["status"] == "RESOURCE_EXHAUSTED")):
            with self.subTest(request.__name__):
                status, headers, err = self.post(request(PROMPT + " [[status:429]] [[retry-after:7]]"))
                self.assertEqual((status, headers["Retry-After"]), (429, "7"))
                self.assertTrue(check(err), err)
        status, _, err = self.post(gemini(), **{"x-mock-status": "503"})
        self.assertEqual((status, err["error"]["status"]), (503, "UNAVAILABLE"))
        status, _, err = self.post(openai(PROMPT + " [[status:500]]"))
        self.assertEqual((status, err["error"]["type"]), (500, "server_error"))

    def test_keys(self):
        cases = ((openai, "Authorization", "Bearer bad-key", 401),
                 (anthropic, "x-api-key", "bad-key", 401),
                 (gemini, "x-goog-api-key", "bad-key", 400))
        for request, header, bad, bad_status in cases:
            with self.subTest(request.__name__):
                path, body, headers = request()
                status, _, err = self.post((path, body, dict(headers, **{header: bad})))
                self.assertEqual(status, bad_status)
                if request is gemini:
                    self.assertEqual(err["error"]["status"], "INVALID_ARGUMENT")
                    self.assertIn("API key not valid", err["error"]["message"])
                del headers[header]
                self.assertEqual(self.post((path, body, headers))[0], 401)
                limited = bad.replace("bad", "limited")
                status, resp_headers, _ = self.post((path, body, dict(headers, **{header: limited})))
                self.assertEqual((status, resp_headers["Retry-After"]), (429, "1"))
        self.assertEqual(self.call("GET", "/v1/models")[0], 401)

    def test_one_chunk_per_event(self):
        path, body, headers = openai(stream=True)
        status, hdrs, chunks, terminated = raw_request(self.port, path, body, headers)
        self.assertEqual((status, hdrs["content-type"], terminated), (200, "text/event-stream", True))
        self.assertEqual(len(chunks), 12)  # role, 9 words, finish, [DONE]
        self.assertTrue(all(c.startswith("data: ") and c.count("\n\n") == 1 for c in chunks))

    def test_drop_cuts_the_stream(self):
        for request, sep in ((openai, "\n\n"), (anthropic, "\n\n"), (gemini, "\r\n\r\n")):
            with self.subTest(request.__name__):
                path, body, headers = request(PROMPT + " [[drop:2]]", stream=True)
                status, _, chunks, terminated = raw_request(self.port, path, body, headers)
                self.assertEqual((status, len(chunks), terminated), (200, 2, False))
                self.assertTrue(all(c.endswith(sep) for c in chunks))
        path, body, headers = anthropic(PROMPT + " [[drop:2]]", stream=True)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", path, json.dumps(body), headers)
        with self.assertRaises(http.client.IncompleteRead):
            conn.getresponse().read()
        conn.close()

    def test_openai_and_gemini_error_events(self):
        _, raw = self.stream(openai(PROMPT + " [[error-event:1]]", stream=True))
        events = self.data_events(raw)
        self.assertEqual(len(events), 2)
        self.assertEqual(events[1]["error"]["type"], "server_error")
        _, raw = self.stream(gemini(PROMPT + " [[error-event:2]]", stream=True))
        events = self.data_events(raw, "\r\n\r\n")
        self.assertEqual(events[2], {"error": {"code": 503, "status": "UNAVAILABLE",
                                               "message": events[2]["error"]["message"]}})

    def test_nousage(self):
        _, _, body = self.post(openai(PROMPT + " [[nousage]]"))
        self.assertNotIn("usage", body)
        _, raw = self.stream(openai(PROMPT + " [[nousage]]", stream=True,
                                    stream_options={"include_usage": True}))
        self.assertNotIn("usage", raw)
        _, _, body = self.post(anthropic(PROMPT + " [[nousage]]"))
        self.assertEqual(set(body["usage"].values()), {0})
        _, _, body = self.post(gemini(PROMPT + " [[nousage]]"))
        self.assertNotIn("usageMetadata", body)

    def test_delay_and_gap(self):
        start = time.monotonic()
        self.assertEqual(self.post(gemini(PROMPT + " [[delay:300]]"))[0], 200)
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        start = time.monotonic()
        self.stream(anthropic(stream=True), **{"x-mock-gap": "20"})  # 15 events, 14 gaps
        self.assertGreaterEqual(time.monotonic() - start, 14 * 0.02)

    def test_requests_are_recorded(self):
        path, body, headers = anthropic()
        self.post((path + "?beta=true", body, dict(headers, **{"X-Custom": "yes"})))
        self.call("POST", "/v1/chat/completions", raw="{not json", headers=OPENAI_KEY)
        status, _, data = self.call("GET", "/_mock/requests")
        self.assertEqual(status, 200)
        first, second = json.loads(data)
        self.assertEqual((first["method"], first["path"]), ("POST", "/v1/messages?beta=true"))
        self.assertEqual(first["headers"]["x-custom"], "yes")
        self.assertEqual(first["headers"]["anthropic-version"], "2023-06-01")
        self.assertEqual(first["body"], body)
        self.assertIsNone(second["body"])
        self.call("POST", "/_mock/reset")
        self.assertEqual(json.loads(self.call("GET", "/_mock/requests")[2]), [])


if __name__ == "__main__":
    unittest.main()
