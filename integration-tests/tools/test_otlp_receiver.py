"""Self-test for otlp_receiver.py: run with ``python3 test_otlp_receiver.py``.

Starts the receiver as a subprocess, POSTs OTLP requests built with the official
pb2 classes and checks the JSON lines it writes.
"""

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest
import urllib.error
import urllib.request

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

RECEIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "otlp_receiver.py")
TRACE_ID = bytes(range(16))
SPAN_ID = bytes(range(8))


def kv(key, **value):
    return KeyValue(key=key, value=AnyValue(**value))


def fill_resource(resource):
    resource.attributes.append(kv("service.name", string_value="tollgate"))


class ReceiverTest(unittest.TestCase):
    def setUp(self):
        fd, self.out = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)
        self.proc = subprocess.Popen([sys.executable, RECEIVER, self.out],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        self.assertTrue(line.startswith("listening 127.0.0.1:"), line)
        self.base = "http://" + line.split(" ", 1)[1]

    def tearDown(self):
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=10), 0)
        self.proc.stdout.close()
        os.unlink(self.out)

    def post(self, path, body, gzipped=False):
        headers = {"Content-Type": "application/x-protobuf"}
        if gzipped:
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        req = urllib.request.Request(self.base + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    def lines(self):
        with open(self.out, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def test_traces(self):
        req = trace_svc.ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        fill_resource(rs.resource)
        ss = rs.scope_spans.add()
        ss.scope.name = "tollgate-edge"
        span = ss.spans.add(trace_id=TRACE_ID, span_id=SPAN_ID, name="GET /users",
                            kind=2, start_time_unix_nano=1000, end_time_unix_nano=2000)
        span.attributes.extend([
            kv("http.response.status_code", int_value=200),
            kv("ok", bool_value=True),
            kv("ratio", double_value=0.5),
            kv("raw", bytes_value=b"\x01\xff"),
            kv("list", array_value={"values": [AnyValue(string_value="a"), AnyValue(int_value=1)]}),
            kv("map", kvlist_value={"values": [kv("k", string_value="v")]}),
        ])
        span.status.code = 2
        span.status.message = "boom"
        status, ctype, body = self.post("/v1/traces", req.SerializeToString(), gzipped=True)
        self.assertEqual((status, ctype), (200, "application/x-protobuf"))
        trace_svc.ExportTraceServiceResponse.FromString(body)
        [line] = self.lines()
        self.assertEqual(line, {
            "signal": "span", "resource": {"service.name": "tollgate"}, "scope": "tollgate-edge",
            "trace_id": TRACE_ID.hex(), "span_id": SPAN_ID.hex(), "parent_span_id": "",
            "name": "GET /users", "kind": 2, "start_unix_nano": 1000, "end_unix_nano": 2000,
            "attributes": {"http.response.status_code": 200, "ok": True, "ratio": 0.5,
                           "raw": "01ff", "list": ["a", 1], "map": {"k": "v"}},
            "status_code": 2, "status_message": "boom", "unknown_fields": False,
        })

    def test_logs(self):
        req = logs_svc.ExportLogsServiceRequest()
        rl = req.resource_logs.add()
        fill_resource(rl.resource)
        sl = rl.scope_logs.add()
        sl.scope.name = "access"
        rec = sl.log_records.add(time_unix_nano=42, severity_number=9, severity_text="INFO",
                                 body=AnyValue(string_value="request done"),
                                 trace_id=TRACE_ID, span_id=SPAN_ID)
        rec.attributes.append(kv("route", string_value="users"))
        status, _, _ = self.post("/v1/logs", req.SerializeToString())
        self.assertEqual(status, 200)
        [line] = self.lines()
        self.assertEqual(line, {
            "signal": "log", "resource": {"service.name": "tollgate"}, "scope": "access",
            "time_unix_nano": 42, "severity_number": 9, "severity_text": "INFO",
            "body": "request done", "attributes": {"route": "users"},
            "trace_id": TRACE_ID.hex(), "span_id": SPAN_ID.hex(), "unknown_fields": False,
        })

    def test_metrics(self):
        req = metrics_svc.ExportMetricsServiceRequest()
        rm = req.resource_metrics.add()
        fill_resource(rm.resource)
        sm = rm.scope_metrics.add()
        counter = sm.metrics.add(name="requests", unit="1")
        counter.sum.is_monotonic = True
        counter.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        counter.sum.data_points.add(as_int=7).attributes.append(kv("route", string_value="users"))
        hist = sm.metrics.add(name="latency", unit="s")
        hist.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
        hist.histogram.data_points.add(count=3, sum=0.6, bucket_counts=[1, 2, 0],
                                       explicit_bounds=[0.1, 0.5])
        self.assertEqual(self.post("/v1/metrics", req.SerializeToString())[0], 200)
        sum_line, hist_line = self.lines()
        self.assertEqual(sum_line["type"], "sum")
        self.assertEqual(sum_line["value"], 7)
        self.assertEqual(sum_line["attributes"], {"route": "users"})
        self.assertEqual((sum_line["is_monotonic"], sum_line["temporality"]), (True, 2))
        self.assertEqual(hist_line["type"], "histogram")
        self.assertEqual((hist_line["name"], hist_line["unit"]), ("latency", "s"))
        self.assertEqual((hist_line["count"], hist_line["sum"]), (3, 0.6))
        self.assertEqual(hist_line["bucket_counts"], [1, 2, 0])
        self.assertEqual(hist_line["explicit_bounds"], [0.1, 0.5])
        self.assertEqual(hist_line["temporality"], 1)

    def test_unknown_fields_are_flagged(self):
        req = logs_svc.ExportLogsServiceRequest()
        req.resource_logs.add().scope_logs.add().log_records.add(severity_text="WARN")
        record = req.resource_logs[0].scope_logs[0].log_records[0]
        # Field 1000 (varint 5) is not in the LogRecord schema.
        record.ParseFromString(record.SerializeToString() + b"\xc0\x3e\x05")
        self.assertEqual(self.post("/v1/logs", req.SerializeToString())[0], 200)
        [line] = self.lines()
        self.assertTrue(line["unknown_fields"])
        self.assertEqual(line["severity_text"], "WARN")

    def test_bad_body_and_unknown_path(self):
        status, _, _ = self.post("/v1/traces", b"\xff\xff\xff")
        self.assertEqual(status, 400)
        [line] = self.lines()
        self.assertEqual(line["signal"], "span")
        self.assertIn("error", line)
        self.assertEqual(self.post("/v1/nope", b"")[0], 404)


if __name__ == "__main__":
    unittest.main()
