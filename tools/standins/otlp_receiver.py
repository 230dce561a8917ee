#!/usr/bin/python3
"""
otlp_receiver.py - a STAND-IN for an OpenTelemetry collector, for tests only.

No collector binary is available here, so this small server speaks the part of the real
OTLP/HTTP protocol (JSON encoding) that libhm's exporter uses, and records what it receives so
tests can assert on it. It is not a collector: it forwards nothing and keeps everything in
memory.

Protocol, as the OTLP specification defines it (opentelemetry-proto, docs/specification.md):
  POST /v1/traces  Content-Type: application/json, body an ExportTraceServiceRequest in the
                   protobuf JSON mapping with OTLP's exceptions (trace and span ids as hex
                   strings, enums as integers; 64-bit integers may be strings). Answers 200 with
                   an ExportTraceServiceResponse ("{}"), 400 with a google.rpc.Status JSON when
                   the body is not such a request (bad JSON, ids that are not lower-case hex
                   of the right length, a kind or status code that is not an integer, an
                   intValue that is not a decimal integer), 415 for another content type. It is
                   stricter than a collector in one respect: it refuses upper-case hex ids,
                   which W3C and OTLP ids never contain but collectors tolerate.
  With --fail-first N the first N POSTs are answered --fail-status (503) with
  "Retry-After: --retry-after" (seconds; omitted when negative), as a collector under load does.

Inspection (not part of OTLP):
  GET  /debug/spans     {"requests": N, "failed": N, "rejected": N, "spans": [...]}: every span
                        accepted, as received, plus "resource" (its resource attributes as a
                        flat {key: value} object) and "scope" (its scope name)
  GET  /debug/requests  [{"status": 200, "content_type": "...", "spans": N, "ts": 1.5}, ...]
  DELETE /debug/spans   forgets everything received
  With --out FILE, each accepted request body is also appended to FILE as one JSON line.

Usage: otlp_receiver.py [--port 0] [--host 127.0.0.1] [--out FILE] [--fail-first N]
                        [--fail-status 503] [--retry-after 1]
The first line on stdout is the port listened on (useful with --port 0). SIGTERM or SIGINT stops
it. Tests written in Python may also import this module and use Receiver directly.
"""
import argparse
import http.server
import json
import re
import signal
import sys
import threading
import time

HEX_ID = {"traceId": re.compile(r"^[0-9a-f]{32}$"), "spanId": re.compile(r"^[0-9a-f]{16}$"),
          "parentSpanId": re.compile(r"^([0-9a-f]{16})?$")}
VALUE_KINDS = ("stringValue", "boolValue", "intValue", "doubleValue", "arrayValue",
               "kvlistValue", "bytesValue")


class BadRequest(Exception):
    pass


def _attr_value(v):
    """The Python value of an OTLP AnyValue (intValue may be a string or a number)."""
    if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in VALUE_KINDS:
        raise BadRequest("attribute value must be an AnyValue with one of %s" % (VALUE_KINDS,))
    kind, val = next(iter(v.items()))
    if kind == "intValue":
        if isinstance(val, bool) or not isinstance(val, (int, str)) or \
                not re.match(r"^-?[0-9]+$", str(val)):
            raise BadRequest("intValue must be a decimal integer (got %r)" % (val,))
        return int(val)
    return val


def _attrs(lst, where):
    if lst is None:
        return {}
    if not isinstance(lst, list):
        raise BadRequest("%s.attributes must be an array" % where)
    out = {}
    for kv in lst:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str) or "value" not in kv:
            raise BadRequest("%s.attributes entries must be {key, value}" % where)
        out[kv["key"]] = _attr_value(kv["value"])
    return out


def _check_span(s):
    if not isinstance(s, dict):
        raise BadRequest("span must be an object")
    for field, pat in HEX_ID.items():
        val = s.get(field, "")
        if field != "parentSpanId" and field not in s:
            raise BadRequest("span.%s is missing" % field)
        if not isinstance(val, str) or not pat.match(val):
            raise BadRequest("span.%s must be lower-case hex of the right length (got %r)"
                             % (field, val))
    if "kind" in s and (isinstance(s["kind"], bool) or not isinstance(s["kind"], int)):
        raise BadRequest("span.kind must be an integer (got %r)" % (s["kind"],))
    for field in ("startTimeUnixNano", "endTimeUnixNano"):
        val = s.get(field, "0")
        if isinstance(val, bool) or not re.match(r"^[0-9]+$", str(val)):
            raise BadRequest("span.%s must be an unsigned integer (got %r)" % (field, val))
    status = s.get("status", {})
    if not isinstance(status, dict) or isinstance(status.get("code", 0), bool) or \
            not isinstance(status.get("code", 0), int):
        raise BadRequest("span.status.code must be an integer")
    _attrs(s.get("attributes"), "span")


def parse_request(body):
    """The flattened spans of an ExportTraceServiceRequest body; raises BadRequest."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest("body is not JSON: %s" % e)
    if not isinstance(req, dict) or not isinstance(req.get("resourceSpans", []), list):
        raise BadRequest("resourceSpans must be an array")
    spans = []
    for rs in req.get("resourceSpans", []):
        resource = _attrs((rs.get("resource") or {}).get("attributes"), "resource")
        for ss in rs.get("scopeSpans", []):
            scope = (ss.get("scope") or {}).get("name", "")
            for s in ss.get("spans", []):
                _check_span(s)
                flat = dict(s)
                flat["resource"] = resource
                flat["scope"] = scope
                spans.append(flat)
    return spans


class Receiver:
    """The server and what it received. start() binds and serves on a thread."""

    def __init__(self, host="127.0.0.1", port=0, out=None, fail_first=0, fail_status=503,
                 retry_after=1):
        self.lock = threading.Lock()
        self.spans = []
        self.requests = []
        self.failed = 0
        self.rejected = 0
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.out = open(out, "a", encoding="utf-8") if out else None
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as collectors do

            def log_message(self, fmt, *args):  # quiet: tests read /debug instead
                pass

            def reply(self, code, obj, headers=()):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if self.path != "/v1/traces":
                    return self.reply(404, {"code": 5, "message": "not found"})
                status, _, headers, answer = receiver.handle(ctype, body)
                self.reply(status, answer, headers)

            def do_GET(self):
                if self.path == "/debug/spans":
                    with receiver.lock:
                        self.reply(200, {"requests": len(receiver.requests),
                                         "failed": receiver.failed,
                                         "rejected": receiver.rejected,
                                         "spans": list(receiver.spans)})
                elif self.path == "/debug/requests":
                    with receiver.lock:
                        self.reply(200, list(receiver.requests))
                else:
                    self.reply(404, {"code": 5, "message": "not found"})

            def do_DELETE(self):
                if self.path != "/debug/spans":
                    return self.reply(404, {"code": 5, "message": "not found"})
                with receiver.lock:
                    receiver.spans.clear()
                    receiver.requests.clear()
                    receiver.failed = receiver.rejected = 0
                self.reply(200, {})

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = None

    def handle(self, ctype, body):
        """(status, spans accepted, headers, answer) for one POST /v1/traces."""
        with self.lock:
            record = {"ts": time.time(), "content_type": ctype, "spans": 0}
            self.requests.append(record)
            if self.failed < self.fail_first:
                self.failed += 1
                record["status"] = self.fail_status
                headers = [("Retry-After", str(self.retry_after))] if self.retry_after >= 0 else []
                return self.fail_status, 0, headers, {"code": 14, "message": "stand-in: busy"}
        if ctype != "application/json":
            with self.lock:
                record["status"] = 415
                self.rejected += 1
            return 415, 0, [], {"code": 3, "message": "content type must be application/json"}
        try:
            spans = parse_request(body)
        except BadRequest as e:
            with self.lock:
                record["status"] = 400
                record["error"] = str(e)
                self.rejected += 1
            return 400, 0, [], {"code": 3, "message": str(e)}
        with self.lock:
            record["status"] = 200
            record["spans"] = len(spans)
            self.spans.extend(spans)
            if self.out:
                self.out.write(json.dumps(json.loads(body), separators=(",", ":")) + "\n")
                self.out.flush()
        return 200, len(spans), [], {}

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        if self.out:
            self.out.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Stand-in OTLP/HTTP JSON trace receiver (tests only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (printed first)")
    ap.add_argument("--out", help="append each accepted request body as a JSON line here")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N",
                    help="answer the first N POSTs with --fail-status")
    ap.add_argument("--fail-status", type=int, default=503)
    ap.add_argument("--retry-after", type=int, default=1, metavar="SECONDS",
                    help="Retry-After sent with failures; negative = no header")
    args = ap.parse_args(argv)

    r = Receiver(args.host, args.port, args.out, args.fail_first, args.fail_status,
                 args.retry_after)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    r.start()
    print(r.port, flush=True)
    while not stop.wait(0.2):
        pass
    r.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
