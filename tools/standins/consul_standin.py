#!/usr/bin/python3
"""A STAND-IN for Consul's agent HTTP API, for tests only. It is not Consul.

Consul's binary is not available here, so tests talk to this small server instead. It
implements exactly the endpoints libhm uses, with the request and response shapes of Consul's
documentation (developer.hashicorp.com/consul/api-docs):

  PUT /v1/agent/service/register          register (or replace) a service instance
  PUT /v1/agent/service/deregister/<id>   remove it (200 even when unknown, as documented)
  GET /v1/health/service/<name>[?passing] instances with Node, Service and Checks
  GET /v1/catalog/services                {"<name>": [tags...], ...}, "consul" included

It keeps one node ("standin", address --node-address), never runs checks itself (an instance's
check status is "passing" until a test sets it), and is stricter than Consul in one way: a
registration with a key outside the documented schema, or a value of the wrong type, is
refused with 400, so a misspelt field fails the test that sent it.

For tests it records every request (method, path, query, headers, body) and adds:

  GET  /debug/requests   [{"method","path","query","headers","body","json"}, ...]
  POST /debug/health     {"id": "<service id>", "status": "passing|warning|critical"}
  POST /debug/reset      forget services and recorded requests

With --token, /v1/ requests without that X-Consul-Token get 403 "Permission denied" (they are
recorded all the same). Binds 127.0.0.1; with --port 0 the kernel picks the port. The chosen
port is printed alone on stdout's first line. Exits when its parent process does.
"""

import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

NODE = "standin"
DATACENTER = "dc1"

# Keys of the documented registration schema (agent/service.mdx, agent/check.mdx).
SERVICE_KEYS = {
    "ID": str, "Name": str, "Tags": list, "Address": str, "TaggedAddresses": dict,
    "Meta": dict, "Namespace": str, "Port": int, "Kind": str, "Proxy": dict, "Connect": dict,
    "Check": dict, "Checks": list, "EnableTagOverride": bool, "Weights": dict,
}
CHECK_KEYS = {
    "Name": str, "CheckID": str, "ID": str, "Interval": str, "Notes": str,
    "DeregisterCriticalServiceAfter": str, "Args": list, "AliasNode": str,
    "AliasService": str, "DockerContainerID": str, "Shell": str, "GRPC": str,
    "GRPCUseTLS": bool, "H2PING": str, "HTTP": str, "Method": str, "Body": str,
    "Header": dict, "Timeout": str, "OutputMaxSize": int, "TLSServerName": str,
    "TLSSkipVerify": bool, "TCP": str, "TTL": str, "ServiceID": str, "Status": str,
    "SuccessBeforePassing": int, "FailuresBeforeCritical": int,
}
DURATION_KEYS = ("Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter")
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|\u00b5s|ms|s|m|h))+$")
STATUSES = ("passing", "warning", "critical")


class State:
    def __init__(self, node_address):
        self.lock = threading.Lock()
        self.node_address = node_address
        self.services = {}  # id -> {"reg": registration dict, "status": str}
        self.requests = []
        self.index = 1

    def bump(self):
        self.index += 1


def type_ok(value, want):
    # bool is an int in Python; Consul's JSON decoding keeps them apart.
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def validate_check(check, where):
    for key, value in check.items():
        if key not in CHECK_KEYS:
            return "%s has invalid key: %s" % (where, key)
        if not type_ok(value, CHECK_KEYS[key]):
            return "%s.%s has the wrong type" % (where, key)
        if key in DURATION_KEYS and not GO_DURATION.match(value):
            return "%s.%s: invalid duration %r" % (where, key, value)
    if "GRPC" in check:
        target = check["GRPC"].split("/", 1)[0]
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return "%s.GRPC: want host:port[/service], got %r" % (where, check["GRPC"])
        if "Interval" not in check:
            return "%s: Interval required for GRPC checks" % where
    return None


def validate_registration(reg):
    if not isinstance(reg, dict):
        return "Request decode failed: body is not a JSON object"
    for key, value in reg.items():
        if key not in SERVICE_KEYS:
            return "Request decode failed: invalid key: %s" % key
        if not type_ok(value, SERVICE_KEYS[key]):
            return "Request decode failed: %s has the wrong type" % key
    if not reg.get("Name"):
        return "Missing service name"
    if not all(isinstance(t, str) for t in reg.get("Tags", [])):
        return "Request decode failed: Tags must be strings"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in reg.get("Meta", {}).items()):
        return "Request decode failed: Meta must map strings to strings"
    if not 0 <= reg.get("Port", 0) < 65536:
        return "Invalid Port"
    checks = [reg["Check"]] if "Check" in reg else []
    checks += reg.get("Checks", [])
    for i, check in enumerate(checks):
        if not isinstance(check, dict):
            return "Request decode failed: checks must be objects"
        err = validate_check(check, "Check" if "Check" in reg and i == 0 else "Checks[%d]" % i)
        if err:
            return "Request decode failed: " + err
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "consul-standin"
    state = None  # set in main()

    def log_message(self, fmt, *args):  # quiet: tests read /debug/requests instead
        pass

    def reply(self, status, payload=None, text=None):
        if text is not None:
            data, ctype = text.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Consul-Index", str(self.state.index))
        self.send_header("X-Consul-Knownleader", "true")
        self.send_header("X-Consul-Lastcontact", "0")
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def record(self, raw):
        url = urlsplit(self.path)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        entry = {
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": {k: v for k, v in self.headers.items()},
            "body": raw.decode("utf-8", "replace"),
            "json": parsed,
        }
        with self.state.lock:
            self.state.requests.append(entry)
        return url, parsed

    def handle_any(self):
        raw = self.read_body()
        url, body = self.record(raw)
        path = url.path
        if path.startswith("/debug/"):
            return self.debug(path, body)
        if not path.startswith("/v1/"):
            return self.reply(404, text="404 page not found")
        token = self.server.token
        if token is not None and self.headers.get("X-Consul-Token") != token:
            return self.reply(403, text="Permission denied")
        query = parse_qs(url.query, keep_blank_values=True)
        if self.command == "PUT" and path == "/v1/agent/service/register":
            return self.register(raw)
        if self.command == "PUT" and path.startswith("/v1/agent/service/deregister/"):
            return self.deregister(unquote(path[len("/v1/agent/service/deregister/"):]))
        if self.command == "GET" and path.startswith("/v1/health/service/"):
            return self.health(unquote(path[len("/v1/health/service/"):]), query)
        if self.command == "GET" and path == "/v1/catalog/services":
            return self.catalog()
        if path in ("/v1/agent/service/register", "/v1/catalog/services") or \
                path.startswith(("/v1/agent/service/deregister/", "/v1/health/service/")):
            return self.reply(405, text="method %s not allowed" % self.command)
        return self.reply(404, text="404 page not found (not implemented by the stand-in)")

    do_GET = do_PUT = do_POST = do_DELETE = handle_any

    # ---- Consul endpoints ----

    def register(self, raw):
        try:
            reg = json.loads(raw)
        except ValueError as e:
            return self.reply(400, text="Request decode failed: %s" % e)
        err = validate_registration(reg)
        if err:
            return self.reply(400, text=err)
        sid = reg.get("ID") or reg["Name"]
        with self.state.lock:
            old = self.state.services.get(sid)
            status = old["status"] if old else reg.get("Check", {}).get("Status", "passing")
            self.state.services[sid] = {"reg": reg, "status": status}
            self.state.bump()
        return self.reply(200, text="")

    def deregister(self, sid):
        with self.state.lock:
            if self.state.services.pop(sid, None) is not None:
                self.state.bump()
        return self.reply(200, text="")

    def instance(self, sid, svc):
        reg = svc["reg"]
        name = reg["Name"]
        node = {
            "ID": "8a0d8f4e-0000-4000-8000-000000000001",
            "Node": NODE,
            "Address": self.state.node_address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": self.state.node_address, "wan": self.state.node_address},
            "Meta": {"consul-network-segment": ""},
        }
        service = {
            "ID": sid,
            "Service": name,
            "Tags": reg.get("Tags") or [],
            "Address": reg.get("Address", ""),
            "Meta": reg.get("Meta") or {},
            "Port": reg.get("Port", 0),
            "Weights": reg.get("Weights") or {"Passing": 1, "Warning": 1},
            "EnableTagOverride": reg.get("EnableTagOverride", False),
            "Namespace": "default",
        }
        checks = [{
            "Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
            "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Namespace": "default",
        }]
        if "Check" in reg or reg.get("Checks"):
            checks.append({
                "Node": NODE, "CheckID": "service:" + sid,
                "Name": "Service '%s' check" % name, "Status": svc["status"], "Notes": "",
                "Output": "", "ServiceID": sid, "ServiceName": name,
                "ServiceTags": service["Tags"], "Namespace": "default",
            })
        return {"Node": node, "Service": service, "Checks": checks}

    def health(self, name, query):
        passing = "passing" in query and query["passing"][-1].lower() not in ("false", "0")
        with self.state.lock:
            out = [self.instance(sid, svc) for sid, svc in sorted(self.state.services.items())
                   if svc["reg"]["Name"] == name and (not passing or svc["status"] == "passing")]
        return self.reply(200, out)

    def catalog(self):
        names = {"consul": []}
        with self.state.lock:
            for svc in self.state.services.values():
                tags = names.setdefault(svc["reg"]["Name"], [])
                for t in svc["reg"].get("Tags") or []:
                    if t not in tags:
                        tags.append(t)
        return self.reply(200, names)

    # ---- test hooks ----

    def debug(self, path, body):
        if self.command == "GET" and path == "/debug/requests":
            with self.state.lock:
                reqs = [r for r in self.state.requests if not r["path"].startswith("/debug/")]
            return self.reply(200, reqs)
        if self.command == "POST" and path == "/debug/health":
            if not isinstance(body, dict) or body.get("status") not in STATUSES:
                return self.reply(400, text="want {\"id\": ..., \"status\": passing|warning|critical}")
            with self.state.lock:
                svc = self.state.services.get(body.get("id"))
                if svc is None:
                    return self.reply(404, text="unknown service id")
                svc["status"] = body["status"]
                self.state.bump()
            return self.reply(200, {"id": body["id"], "status": body["status"]})
        if self.command == "POST" and path == "/debug/reset":
            with self.state.lock:
                self.state.services.clear()
                self.state.requests.clear()
                self.state.bump()
            return self.reply(200, {})
        return self.reply(404, text="unknown debug endpoint")


def watch_parent(server):
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    server.shutdown()


def main():
    ap = argparse.ArgumentParser(description="STAND-IN for Consul's agent HTTP API (tests only)")
    ap.add_argument("--port", type=int, default=8500, help="port on 127.0.0.1; 0 = any free")
    ap.add_argument("--token", default=None, help="require this X-Consul-Token on /v1/ requests")
    ap.add_argument("--node-address", default="127.0.0.1", help="Node.Address of the one node")
    args = ap.parse_args()

    Handler.state = State(args.node_address)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.token = args.token
    print(server.server_address[1], flush=True)
    threading.Thread(target=watch_parent, args=(server,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
