"""Drives a Tollgate AI service with the official ``openai`` Python SDK, for the
integration tests.

Usage: python3 openai_client.py BASE_URL API_KEY < OPS_JSON

OPS_JSON is a list of operations; one JSON result per operation is printed, in order, as
a JSON list on stdout. Operations:

- ``{"op": "chat", "model": M, "messages": [...], ...}``: a plain completion; any other key
  (``tools``, ``max_tokens``, ``response_format``...) is passed to ``create``. Result:
  ``{"content", "tool_calls": [{"id", "name", "arguments"}], "finish_reason", "model",
  "usage": {...}}``.
- ``{"op": "stream", ...}``: the same streamed with ``stream_options.include_usage`` (unless
  ``"include_usage": false``); tool calls are assembled from their deltas as an SDK user
  does. Result: the same fields plus ``"chunks"`` (how many) and ``"usage_chunks"``.
- ``{"op": "models"}``: ``{"ids": [...]}``.

An operation that raises an ``openai`` error gives ``{"error": class name, "status",
"code", "message"}`` instead.
"""

import json
import sys

import openai


def usage_dict(u):
    if u is None:
        return None
    return u.model_dump()


def chat(client, op):
    args = {k: v for k, v in op.items() if k != "op"}
    r = client.chat.completions.create(**args)
    m = r.choices[0].message
    return {
        "content": m.content,
        "tool_calls": [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in (m.tool_calls or [])
        ],
        "finish_reason": r.choices[0].finish_reason,
        "model": r.model,
        "usage": usage_dict(r.usage),
    }


def stream(client, op):
    args = {k: v for k, v in op.items() if k not in ("op", "include_usage")}
    if op.get("include_usage", True):
        args["stream_options"] = {"include_usage": True}
    content, calls, finish, model, usage = "", {}, None, None, None
    chunks = usage_chunks = 0
    for chunk in client.chat.completions.create(stream=True, **args):
        chunks += 1
        model = chunk.model
        if chunk.usage is not None:
            usage = usage_dict(chunk.usage)
            usage_chunks += 1
        for choice in chunk.choices:
            d = choice.delta
            if d.content:
                content += d.content
            for tc in d.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    return {
        "content": content,
        "tool_calls": [calls[i] for i in sorted(calls)],
        "finish_reason": finish,
        "model": model,
        "usage": usage,
        "chunks": chunks,
        "usage_chunks": usage_chunks,
    }


def run(client, op):
    try:
        if op["op"] == "chat":
            return chat(client, op)
        if op["op"] == "stream":
            return stream(client, op)
        if op["op"] == "models":
            return {"ids": [m.id for m in client.models.list()]}
        raise ValueError(f"unknown op {op['op']!r}")
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {
            "error": type(e).__name__,
            "status": e.status_code,
            "code": body.get("code"),
            "message": body.get("message"),
        }
    except openai.APIError as e:
        cause = f"{e}: {e.__cause__!r}" if e.__cause__ else str(e)
        return {"error": type(e).__name__, "status": None, "code": None, "message": cause}


def main():
    base_url, api_key = sys.argv[1], sys.argv[2]
    # No retries: the test counts exactly what it sent.
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    ops = json.load(sys.stdin)
    print(json.dumps([run(client, op) for op in ops]))


if __name__ == "__main__":
    main()
