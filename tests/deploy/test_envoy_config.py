"""
Envoy's gRPC-JSON transcoder configuration (deploy/k8s/components/gateway/envoy.yaml), checked
structurally: Envoy is not installable here, so this test asserts what Envoy would need.

- one HTTP listener whose connection manager runs envoy.filters.http.grpc_json_transcoder
  (typed v3 GrpcJsonTranscoder) before the router, and the router last;
- proto_descriptor is the file the gateway Deployment mounts (the init container's copy of
  share/hospitality-mesh/hm_descriptor_set.pb, which meson builds with --include_imports and
  installs), and that descriptor set (read from the build) holds every listed service with its
  google.api.http imports;
- `services` is exactly the set of services of the descriptor set that carry HTTP bindings;
- convert_grpc_status is on; proto field names are preserved (the seeds' snake_case);
- a route per service (prefix "/<package>.<Service>/") to the cluster of the daemon that serves
  it (tests/lib/hmtest.DAEMONS; MarketingService lives in recommenderd); one cluster per daemon,
  HTTP/2 upstream, addressed at the daemon's headless Service on the gRPC port of its rendered
  ClusterIP Service;
- the rendered overlays carry the ConfigMap with this very file.
"""
import os
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

SRC = hmtest.SRC_ROOT
ENVOY = os.path.join(SRC, "deploy", "k8s", "components", "gateway", "envoy.yaml")
DESCRIPTORS = os.environ.get("HM_TEST_GATEWAY_DESCRIPTORS") or os.path.join(
    hmtest.BUILD_ROOT, "tools", "gateway", "hm_descriptor_set.pb")
T = "type.googleapis.com/"
SERVES = dict((svc, d) for d, svcs in hmtest.DAEMONS.items() for svc in svcs)
SERVES["hospitality.marketing.v1.MarketingService"] = "recommenderd"
problems = []


def fail(msg):
    problems.append(msg)


def http_services():
    hmtest.base_protos()
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    with open(DESCRIPTORS, "rb") as f:
        fds.ParseFromString(f.read())
    files = {f.name for f in fds.file}
    out = set()
    for fd in fds.file:
        for svc in fd.service:
            if any(m.options.HasExtension(annotations_pb2.http) for m in svc.method):
                out.add("%s.%s" % (fd.package, svc.name))
    for need in ("google/api/annotations.proto", "google/api/http.proto",
                 "google/protobuf/descriptor.proto"):
        if need not in files:
            fail("descriptor set lacks %s (built without --include_imports?)" % need)
    return out


def render(overlay):
    r = subprocess.run([os.environ.get("KUBECTL") or "kubectl", "kustomize",
                        os.path.join(SRC, "deploy", "k8s", "overlays", overlay)],
                       capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def main():
    with open(ENVOY, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    listeners = cfg["static_resources"]["listeners"]
    if len(listeners) != 1:
        fail("want one listener, have %d" % len(listeners))
    hcm = listeners[0]["filter_chains"][0]["filters"][0]
    if hcm["name"] != "envoy.filters.network.http_connection_manager":
        fail("first network filter is %s" % hcm["name"])
    tc = hcm["typed_config"]
    filters = tc["http_filters"]
    names = [f["name"] for f in filters]
    if names[-1] != "envoy.filters.http.router":
        fail("the router is not the last HTTP filter: %s" % names)
    if "envoy.filters.http.grpc_json_transcoder" not in names[:-1]:
        fail("no transcoder before the router: %s" % names)
        return
    tr = filters[names.index("envoy.filters.http.grpc_json_transcoder")]["typed_config"]
    if tr.get("@type") != T + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder":
        fail("transcoder @type %s" % tr.get("@type"))
    if tr.get("convert_grpc_status") is not True:
        fail("convert_grpc_status is not on")
    if not (tr.get("print_options") or {}).get("preserve_proto_field_names"):
        fail("proto field names not preserved (the seeds use snake_case)")
    listed = tr.get("services") or []
    if len(set(listed)) != len(listed):
        fail("services listed twice: %s" % listed)
    want = http_services()
    if set(listed) != want:
        fail("services %s, want the descriptor set's HTTP services %s (missing %s, extra %s)" % (
            sorted(listed), sorted(want), sorted(want - set(listed)), sorted(set(listed) - want)))

    # routes and clusters
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    routes = tc["route_config"]["virtual_hosts"][0]["routes"]
    by_prefix = {r["match"].get("prefix"): r["route"]["cluster"] for r in routes}
    for svc in listed:
        daemon = SERVES.get(svc)
        got = by_prefix.get("/%s/" % svc)
        if got is None:
            fail("no route for %s" % svc)
        elif got != daemon:
            fail("%s routed to %s, served by %s" % (svc, got, daemon))
        if got and got not in clusters:
            fail("route to unknown cluster %s" % got)

    for overlay in ("dev", "prod"):
        docs = render(overlay)
        svc_ports = {}
        headless = set()
        for d in docs:
            if d["kind"] == "Service":
                ports = {p.get("name"): p["port"] for p in d["spec"]["ports"]}
                if d["spec"].get("clusterIP") == "None":
                    headless.add(d["metadata"]["name"])
                else:
                    svc_ports[d["metadata"]["name"]] = ports
        for name, c in clusters.items():
            opts = c.get("typed_extension_protocol_options", {}).get(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
            if "http2_protocol_options" not in (opts.get("explicit_http_config") or {}):
                fail("cluster %s is not HTTP/2" % name)
            eps = [lb["endpoint"]["address"]["socket_address"]
                   for e in c["load_assignment"]["endpoints"] for lb in e["lb_endpoints"]]
            for sa in eps:
                if sa["address"] != name + "-headless" or sa["address"] not in headless:
                    fail("%s: cluster %s addresses %s, want the rendered Service %s-headless" % (
                        overlay, name, sa["address"], name))
                if svc_ports.get(name, {}).get("grpc") != sa["port_value"]:
                    fail("%s: cluster %s port %s, Service %s grpc port %s" % (
                        overlay, name, sa["port_value"], name, svc_ports.get(name, {}).get("grpc")))
        # the Deployment mounts the descriptor set where proto_descriptor points, and the
        # ConfigMap it mounts is this file
        gw = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "hm-gateway"]
        if len(gw) != 1:
            fail("%s: no hm-gateway Deployment" % overlay)
            continue
        pod = gw[0]["spec"]["template"]["spec"]
        envoy = [c for c in pod["containers"] if c["name"] == "envoy"][0]
        mounts = {m["name"]: m["mountPath"] for m in envoy["volumeMounts"]}
        desc_dir = mounts.get("descriptors")
        if not desc_dir or os.path.join(desc_dir, os.path.basename(DESCRIPTORS)) != tr["proto_descriptor"]:
            fail("%s: proto_descriptor %s is not in the mounted %s" % (overlay, tr["proto_descriptor"], desc_dir))
        init = pod.get("initContainers", [])
        if not any("/usr/share/hospitality-mesh/" + os.path.basename(DESCRIPTORS) in c.get("command", [])
                   for c in init):
            fail("%s: no init container copies the installed descriptor set" % overlay)
        cm_name = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v][0]
        cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name]
        if not cms or yaml.safe_load(cms[0]["data"]["envoy.yaml"]) != cfg:
            fail("%s: ConfigMap %s does not carry envoy.yaml" % (overlay, cm_name))
    print("envoy.yaml: %d services, %d routes, %d clusters; descriptor set %s" % (
        len(listed), len(routes), len(clusters), DESCRIPTORS))
    for p in problems:
        print("FAIL  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
