"""hmrpc.py - calling the mesh's gRPC APIs from Python without generated code.

Used by tools/demo/hm-demo and the mesh-level tests (tests/lib/hmmesh.py). protoc compiles
proto/ into a descriptor set once per process; requests and responses are built from the
descriptors and converted from and to the proto3 JSON mapping (dicts), so a caller writes

    rpc = Rpc({"guestd": "127.0.0.1:50051", ...}, jwt_secret)
    r = rpc.call("guestd", "hospitality.guest.v1.GuestService", "GetProfile",
                 {"guest_id": gid}, rpc.token(gid, ["guest"]))

Needs protoc, python3-grpcio and python3-protobuf (Debian packages), nothing from PyPI.
Tokens are HS256 JWTs signed with the development secret (HM_JWT_HS256_SECRET).
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(ROOT, "proto")
INCLUDES = ["/usr/share/grpc-gateway/third_party/googleapis", "/usr/include",
            "/usr/share/gocode/src/github.com/gogo/googleapis"]


def descriptor_set():
    """Compiles every proto of the project (with imports) and returns the FileDescriptorSet."""
    from google.protobuf import descriptor_pb2

    files = []
    for d, _, names in os.walk(PROTO):
        if os.path.relpath(d, PROTO).split(os.sep)[0] == "google":
            continue
        files += [os.path.relpath(os.path.join(d, n), PROTO) for n in names
                  if n.endswith(".proto")]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "all.binpb")
        inc = ["-I" + PROTO] + ["-I" + i for i in INCLUDES if os.path.isdir(i)]
        subprocess.run(["protoc"] + inc + ["--include_imports", "--descriptor_set_out=" + out]
                       + sorted(files), check=True, cwd=PROTO)
        with open(out, "rb") as f:
            return descriptor_pb2.FileDescriptorSet.FromString(f.read())


def jwt(secret, sub, roles, venues=(), ttl=3600):
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    now = int(time.time())
    body = {"sub": sub, "roles": list(roles), "iat": now, "exp": now + ttl}
    if venues:
        body["venues"] = list(venues)
    signing = "%s.%s" % (b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
                         b64(json.dumps(body).encode()))
    key = secret.encode() if isinstance(secret, str) else secret
    return "%s.%s" % (signing, b64(hmac.new(key, signing.encode(), hashlib.sha256).digest()))


class Rpc:
    def __init__(self, addrs, secret):
        import grpc
        from google.protobuf import descriptor_pool, json_format

        self.grpc = grpc
        self.json_format = json_format
        self.secret = secret
        self.pool = descriptor_pool.DescriptorPool()
        for f in descriptor_set().file:
            self.pool.Add(f)
        self.addrs = dict(addrs)
        self.channels = {}
        self._classes = {}

    def channel(self, daemon):
        if daemon not in self.channels:
            self.channels[daemon] = self.grpc.insecure_channel(self.addrs[daemon])
        return self.channels[daemon]

    def reset(self, daemon=None):
        """Drops cached channels (after a daemon moved or restarted)."""
        for d in [daemon] if daemon else list(self.channels):
            ch = self.channels.pop(d, None)
            if ch is not None:
                ch.close()

    def message_class(self, desc):
        if desc.full_name not in self._classes:
            try:
                from google.protobuf.message_factory import GetMessageClass
                cls = GetMessageClass(desc)
            except ImportError:  # protobuf < 4 (Debian 12 ships 3.21)
                from google.protobuf import message_factory
                cls = message_factory.MessageFactory(self.pool).GetPrototype(desc)
            self._classes[desc.full_name] = cls
        return self._classes[desc.full_name]

    def token(self, sub, roles, venues=(), ttl=3600):
        return jwt(self.secret, sub, roles, venues, ttl)

    def stub(self, daemon, service, method):
        """(callable, request class, response class) for one method."""
        mdesc = self.pool.FindServiceByName(service).methods_by_name[method]
        req_cls = self.message_class(mdesc.input_type)
        resp_cls = self.message_class(mdesc.output_type)
        fn = self.channel(daemon).unary_unary(
            "/%s/%s" % (service, method), request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString)
        return fn, req_cls, resp_cls

    def call(self, daemon, service, method, body, token, timeout=10):
        """Calls service/method on daemon with `body` (a dict in the proto JSON mapping; field
        names as in the .proto) and returns the response as such a dict. Raises
        grpc.RpcError."""
        fn, req_cls, _ = self.stub(daemon, service, method)
        req = self.json_format.ParseDict(body, req_cls())
        md = [("authorization", "Bearer " + token), ("x-request-id", "py-" + uuid.uuid4().hex)]
        resp = fn(req, metadata=md, timeout=timeout)
        return self.json_format.MessageToDict(resp, preserving_proto_field_name=True)
