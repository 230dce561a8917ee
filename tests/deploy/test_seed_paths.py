"""
Every REST path in the seeds maps to an RPC (issue 11).

Reads the descriptor set meson builds (common/descriptor_set.pb: our protos with their imports,
protoc --include_imports) and the google.api.http bindings in it, then checks the whole list of
`METHOD /path` lines in ../shared/seeds/*.txt beside the checkout (or HM_TEST_SEEDS_DIR): each maps to exactly
one RPC of a service the REST gateways serve (tools/gateway/main.go's upstreams and the Envoy
component's `services` list). Path variables compare by position, not by name (`{id}` in a seed,
`{booking_id}` in the proto). Health and metrics paths are left out: the gRPC health service and
the admin port's /metrics serve them.

Fails listing every unmapped or ambiguous path. Needs no database.
"""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

SRC = hmtest.SRC_ROOT
SEEDS = os.environ.get("HM_TEST_SEEDS_DIR") or os.path.join(SRC, "..", "shared", "seeds")
DESCRIPTORS = os.environ.get("HM_TEST_DESCRIPTOR_SET") or os.path.join(
    hmtest.BUILD_ROOT, "common", "descriptor_set.pb")
SEED_LINE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`")
# Served by grpc.health.v1 (liveness/readiness) and the admin port (/metrics), not the gateway.
NOT_GATEWAY = re.compile(r"/health(/live|/ready)?$|/metrics$")


def seed_paths():
    found = []
    files = sorted(glob.glob(os.path.join(SEEDS, "*.txt")))
    if not files:
        raise SystemExit("no seed documents in %s" % SEEDS)
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                for m in SEED_LINE.finditer(line):
                    found.append((m.group(1), m.group(2), "%s:%d" % (os.path.basename(f), n)))
    return found


def normalize(path):
    """/a/{x}/b/{y=**} -> /a/{}/b/{}; trailing slash dropped."""
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/"


def rule_bindings(rule):
    out = []
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        out.append((rule.custom.kind.upper(), rule.custom.path))
    elif kind:
        out.append((kind.upper(), getattr(rule, kind)))
    for extra in rule.additional_bindings:
        out.extend(rule_bindings(extra))
    return out


def bindings():
    hmtest.base_protos()  # generates google.api.annotations_pb2 (registers the extension)
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    with open(DESCRIPTORS, "rb") as f:
        fds.ParseFromString(f.read())
    table = {}
    for fd in fds.file:
        for svc in fd.service:
            full = "%s.%s" % (fd.package, svc.name)
            for m in svc.method:
                if not m.options.HasExtension(annotations_pb2.http):
                    continue
                for verb, path in rule_bindings(m.options.Extensions[annotations_pb2.http]):
                    table.setdefault((verb, normalize(path)), []).append(
                        ("%s/%s" % (full, m.name), path))
    return table


def gateway_services():
    with open(os.path.join(SRC, "tools", "gateway", "main.go"), encoding="utf-8") as f:
        go = set(re.findall(r'\{"(hospitality\.[a-z]+\.v1\.[A-Za-z]+)"', f.read()))
    envoy = set()
    path = os.path.join(SRC, "deploy", "k8s", "components", "gateway", "envoy.yaml")
    if os.path.exists(path):
        import yaml

        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                for s in _find_key(doc, "services"):
                    envoy.update(s)
    return go, envoy


def _find_key(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            else:
                yield from _find_key(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _find_key(v, key)


def main():
    if not os.path.exists(DESCRIPTORS):
        print("no descriptor set at %s (build first)" % DESCRIPTORS)
        return 1
    table = bindings()
    go_services, envoy_services = gateway_services()
    seeds = seed_paths()
    problems = []
    checked = skipped = 0
    for verb, path, where in seeds:
        if NOT_GATEWAY.search(path):
            skipped += 1
            print("skip  %-6s %-52s %s (health service / admin port)" % (verb, path, where))
            continue
        checked += 1
        hits = table.get((verb, normalize(path)), [])
        if len(hits) != 1:
            problems.append("%s %s (%s): %s" % (
                verb, path, where,
                "no RPC binds it" if not hits else "ambiguous: " + ", ".join(h[0] for h in hits)))
            continue
        rpc, template = hits[0]
        svc = rpc.split("/")[0]
        if svc not in go_services:
            problems.append("%s %s -> %s: service not routed by tools/gateway" % (verb, path, rpc))
        if envoy_services and svc not in envoy_services:
            problems.append("%s %s -> %s: service not in the Envoy transcoder's list" % (
                verb, path, rpc))
        print("ok    %-6s %-52s -> %s (%s)" % (verb, path, rpc, template))
    # No two RPCs may bind one method + path: the transcoders would pick one arbitrarily.
    for (verb, tmpl), hits in sorted(table.items()):
        if len(hits) > 1:
            problems.append("%s %s bound by %d RPCs: %s" % (
                verb, tmpl, len(hits), ", ".join(h[0] for h in hits)))
    print("%d seed paths checked, %d health/metrics paths skipped, %d bindings in the "
          "descriptor set" % (checked, skipped, sum(len(v) for v in table.values())))
    if checked == 0:
        problems.append("no seed paths found in %s" % SEEDS)
    for p in problems:
        print("FAIL  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
