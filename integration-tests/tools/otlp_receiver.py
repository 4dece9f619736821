"""Minimal OTLP/HTTP (protobuf) receiver for the Tollgate integration tests.

Usage: python3 otlp_receiver.py OUT_FILE

Binds 127.0.0.1 on an ephemeral port, prints one line ``listening 127.0.0.1:PORT``
to stdout, then serves until SIGTERM. Request bodies to /v1/traces, /v1/logs and
/v1/metrics are decoded with the official ``opentelemetry-proto`` classes, so a
body that decodes here is valid OTLP. Every span, log record and metric data
point is appended to OUT_FILE as one JSON line; every line carries
``"unknown_fields": bool``, true when the request held fields (anywhere in it)
that the official schema does not define. Undecodable bodies get a 400 and a
``{"signal": ..., "error": ...}`` line.
"""

import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc


def any_value(v):
    """Convert an AnyValue to plain JSON data (bytes become hex)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "bytes_value":
        return v.bytes_value.hex()
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def has_unknown_fields(msg):
    """True if msg or any nested message carries fields unknown to the schema."""
    if len(UnknownFieldSet(msg)):
        return True
    for field, value in msg.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type != value_field.TYPE_MESSAGE:
                continue
            items = value.values()
        else:
            items = value if field.is_repeated else [value]
        if any(has_unknown_fields(m) for m in items):
            return True
    return False


def spans(req):
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "signal": "span",
                    "resource": attrs(rs.resource.attributes),
                    "scope": ss.scope.name,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start_unix_nano": s.start_time_unix_nano,
                    "end_unix_nano": s.end_time_unix_nano,
                    "attributes": attrs(s.attributes),
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                }


def logs(req):
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for r in sl.log_records:
                yield {
                    "signal": "log",
                    "resource": attrs(rl.resource.attributes),
                    "scope": sl.scope.name,
                    "time_unix_nano": r.time_unix_nano,
                    "severity_number": r.severity_number,
                    "severity_text": r.severity_text,
                    "body": any_value(r.body),
                    "attributes": attrs(r.attributes),
                    "trace_id": r.trace_id.hex(),
                    "span_id": r.span_id.hex(),
                }


def metrics(req):
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind not in ("sum", "gauge", "histogram"):
                    continue  # other metric types are not used by the edge
                data = getattr(m, kind)
                for p in data.data_points:
                    line = {
                        "signal": "metric",
                        "resource": attrs(rm.resource.attributes),
                        "scope": sm.scope.name,
                        "name": m.name,
                        "unit": m.unit,
                        "type": kind,
                        "attributes": attrs(p.attributes),
                    }
                    if kind == "histogram":
                        line.update(
                            count=p.count,
                            sum=p.sum,
                            bucket_counts=list(p.bucket_counts),
                            explicit_bounds=list(p.explicit_bounds),
                            temporality=data.aggregation_temporality,
                        )
                    else:
                        value_kind = p.WhichOneof("value")
                        line["value"] = getattr(p, value_kind) if value_kind else None
                    if kind == "sum":
                        line.update(
                            is_monotonic=data.is_monotonic,
                            temporality=data.aggregation_temporality,
                        )
                    yield line


# path -> (signal name, request class, response class, line generator)
ROUTES = {
    "/v1/traces": ("span", trace_svc.ExportTraceServiceRequest,
                   trace_svc.ExportTraceServiceResponse, spans),
    "/v1/logs": ("log", logs_svc.ExportLogsServiceRequest,
                 logs_svc.ExportLogsServiceResponse, logs),
    "/v1/metrics": ("metric", metrics_svc.ExportMetricsServiceRequest,
                    metrics_svc.ExportMetricsServiceResponse, metrics),
}


class Handler(BaseHTTPRequestHandler):
    out = None  # file object, set in main()
    lock = threading.Lock()

    def log_message(self, *args):  # keep stderr quiet
        pass

    def write_lines(self, lines):
        with self.lock:
            for line in lines:
                self.out.write(json.dumps(line) + "\n")
            self.out.flush()

    def reply(self, code, body=b"", ctype="application/x-protobuf"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        route = ROUTES.get(self.path.split("?", 1)[0])
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if route is None:
            return self.reply(404, b"not found", "text/plain")
        signal_name, req_cls, resp_cls, extract = route
        try:
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype != "application/x-protobuf":
                raise ValueError(f"unsupported Content-Type {ctype!r}")
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            req = req_cls.FromString(body)
            unknown = has_unknown_fields(req)
            lines = [dict(item, unknown_fields=unknown) for item in extract(req)]
        except Exception as e:  # decode failure of any kind
            self.write_lines([{"signal": signal_name, "error": f"{type(e).__name__}: {e}"}])
            return self.reply(400, str(e).encode(), "text/plain")
        self.write_lines(lines)
        self.reply(200, resp_cls().SerializeToString())

    def do_GET(self):
        self.reply(404, b"not found", "text/plain")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: otlp_receiver.py OUT_FILE")
    Handler.out = open(sys.argv[1], "a", encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # shutdown() blocks until serve_forever returns, so call it from another thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    host, port = server.server_address[:2]
    print(f"listening {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        Handler.out.close()


if __name__ == "__main__":
    main()
