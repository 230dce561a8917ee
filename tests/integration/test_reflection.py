"""
Integration: gRPC server reflection (grpc.reflection.v1 and v1alpha) on a running daemon
(guestd), answered from the descriptor set embedded at build time.

`buf curl` (npm @bufbuild/buf, tests/interop/node_modules) lists the services and methods and
calls the daemon with nothing but reflection (no --schema, no proto files), over both
reflection protocols; a raw grpcio stream checks several requests on one stream, the
transitive dependencies sent with a file, and the NOT_FOUND error response; with
HM_REFLECTION=off the service is UNIMPLEMENTED.
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import hmtest  # noqa: E402

BUF = os.path.join(hmtest.SRC_ROOT, "tests", "interop", "node_modules", ".bin", "buf")
GUEST_SERVICE = "hospitality.guest.v1.GuestService"
REFLECT = "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo"


def reflection_pb():
    src = os.path.join(hmtest.GRPC_PROTO_DIR, "grpc", "reflection", "v1")

    def run(out):
        # From inside its folder (see hmtest.base_protos: the `grpc` package shadows grpc.*).
        hmtest._protoc(["--proto_path=.", "--python_out=" + out, "reflection.proto"], cwd=src)

    hmtest._generate("reflection", [os.path.join(src, "reflection.proto")], run)
    import reflection_pb2

    return reflection_pb2


class ReflectionTest(hmtest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not os.access(BUF, os.X_OK):
            raise AssertionError("%s missing: run `npm ci` in tests/interop" % BUF)
        cls.grpc = hmtest.grpc_mod()
        name, exe = hmtest.daemon_under_test()
        cls.name, cls.exe = name, exe
        cls.d = hmtest.Daemon(name, exe).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.close()
        assert rc == 0, "%s exited %s" % (cls.name, rc)

    def buf(self, *args, data=None, token=None, reflect="grpc-v1", check=True):
        cmd = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
               "--reflect-protocol", reflect]
        if token:
            cmd += ["-H", "authorization: Bearer " + token]
        if data is not None:
            cmd += ["-d", json.dumps(data)]
        cmd += list(args)
        env = dict(os.environ, HOME=os.environ.get("HM_TEST_TMPDIR") or "/tmp")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                           cwd="/tmp")  # no buf.yaml around: reflection is the only schema
        if check and r.returncode != 0:
            raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), r.returncode, r.stdout,
                                                       r.stderr))
        return r

    def test_buf_curl_lists_and_calls_through_reflection_alone(self):
        url = "http://" + self.d.addr
        for reflect in ("grpc-v1", "grpc-v1alpha"):
            services = self.buf("--list-services", url, reflect=reflect).stdout.split()
            self.assertIn(GUEST_SERVICE, services)
            self.assertIn("grpc.health.v1.Health", services)
            self.assertIn("grpc.reflection.v1.ServerReflection", services)
        methods = self.buf("--list-methods", url).stdout.split()
        self.assertIn(GUEST_SERVICE + "/CreateGuest", methods)
        self.assertIn(GUEST_SERVICE + "/GetProfile", methods)

        admin = hmtest.token("reflect-admin", roles=("admin",))
        email = "reflect-%s@example.com" % hmtest.random_hex(4)
        out = self.buf(url + "/" + GUEST_SERVICE + "/CreateGuest", token=admin,
                       data={"profile": {"email": email, "name": "Refl"}}).stdout
        guest = json.loads(out)["profile"]
        self.assertEqual(guest["email"], email)
        for reflect in ("grpc-v1", "grpc-v1alpha"):
            got = json.loads(self.buf(url + "/" + GUEST_SERVICE + "/GetProfile", token=admin,
                                      data={"guest_id": guest["guestId"]},
                                      reflect=reflect).stdout)
            self.assertEqual(got["profile"]["guestId"], guest["guestId"])
            self.assertEqual(got["profile"]["name"], "Refl")
        # Errors come back as gRPC statuses (buf's exit code is the status times 8).
        r = self.buf(url + "/" + GUEST_SERVICE + "/GetProfile", data={"guest_id": guest["guestId"]},
                     check=False)
        self.assertEqual(r.returncode, 16 * 8, r.stderr)  # UNAUTHENTICATED

    def test_grpcio_stream_several_requests(self):
        pb = reflection_pb()
        for version in ("v1", "v1alpha"):
            rpc = self.d.channel().stream_stream(
                REFLECT % version, request_serializer=pb.ServerReflectionRequest.SerializeToString,
                response_deserializer=pb.ServerReflectionResponse.FromString)
            reqs = [pb.ServerReflectionRequest(host="h1", list_services=""),
                    pb.ServerReflectionRequest(file_containing_symbol=GUEST_SERVICE + ".GetProfile"),
                    pb.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
                    pb.ServerReflectionRequest(file_by_filename="google/protobuf/timestamp.proto")]
            resps = list(rpc(iter(reqs), timeout=10))
            self.assertEqual(len(resps), 4)
            self.assertEqual(resps[0].valid_host, "h1")
            self.assertEqual(resps[0].original_request, reqs[0])
            names = [s.name for s in resps[0].list_services_response.service]
            self.assertIn(GUEST_SERVICE, names)
            files = resps[1].file_descriptor_response.file_descriptor_proto
            from google.protobuf import descriptor_pb2

            fds = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in files]
            self.assertEqual(fds[0].package, "hospitality.guest.v1")
            self.assertIn(GUEST_SERVICE.split(".")[-1], [s.name for s in fds[0].service])
            # Transitive dependencies come along, each once.
            sent = [f.name for f in fds]
            self.assertEqual(len(sent), len(set(sent)))
            for f in fds:
                for dep in f.dependency:
                    self.assertIn(dep, sent)
            self.assertEqual(resps[2].error_response.error_code, 5)  # NOT_FOUND
            self.assertEqual(
                [descriptor_pb2.FileDescriptorProto.FromString(b).name
                 for b in resps[3].file_descriptor_response.file_descriptor_proto],
                ["google/protobuf/timestamp.proto"])

    def test_reflection_off(self):
        d = hmtest.Daemon(self.name, self.exe, env={"HM_REFLECTION": "off"}, label="reflect-off")
        try:
            d.start()
            pb = reflection_pb()
            rpc = d.channel().stream_stream(
                REFLECT % "v1", request_serializer=pb.ServerReflectionRequest.SerializeToString,
                response_deserializer=pb.ServerReflectionResponse.FromString)
            with self.assertRaises(self.grpc.RpcError) as cm:
                list(rpc(iter([pb.ServerReflectionRequest(list_services="")]), timeout=10))
            self.assertEqual(cm.exception.code(), self.grpc.StatusCode.UNIMPLEMENTED)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    hmtest.main()
