"""
Integration: the runtime's place in the mesh, with meshd (tests/integration/meshd), a test
daemon on the same runtime as the five daemons.

Consul (tools/standins/consul_standin.py, a STAND-IN: Consul's binary is not available): a
daemon registers once serving with the body Consul's API documents (ID unique per instance,
Name, Address, Port, Tags with "data-subject" for participants, Meta.version, a GRPC check of
the readiness health name with Interval and DeregisterCriticalServiceAfter, X-Consul-Token);
a second daemon finds the first through Consul alone (no HM_<PEER>_ADDR) and calls it with
hm_peer_call; the data-subject participants come from the tag; SIGTERM deregisters the
instance. Without Consul, peers and participants come from HM_<PEER>_ADDR and
HM_DATA_SUBJECT_PEERS.

TLS (certificates made by this test with openssl): TLS calls succeed and plaintext ones fail;
with HM_TLS_CA (mTLS) a client with a certificate is served and one without is refused; a
daemon calls a peer over mTLS; the Consul check asks with TLS.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import hmtest  # noqa: E402

STANDIN = os.path.join(hmtest.SRC_ROOT, "tools", "standins", "consul_standin.py")
MESH = "/hm.test.mesh.v1.MeshTest/"
TOKEN = "consul-acl-" + hmtest.random_hex(8)


def meshd_exe():
    return os.environ.get("HM_TEST_MESHD_EXE") or os.path.join(
        hmtest.BUILD_ROOT, "tests", "integration", "meshd", "meshd")


def mesh_pb():
    """meshd_pb2, generated from meshd.proto into the harness' cache."""
    src = os.path.join(HERE, "meshd")

    def run(out):
        hmtest._protoc(["--proto_path=.", "--python_out=" + out, "meshd.proto"], cwd=src)

    hmtest._generate("meshd", [os.path.join(src, "meshd.proto")], run)
    import meshd_pb2

    return meshd_pb2


class Consul:
    """The stand-in agent, in a child process."""

    def __init__(self, token=None):
        args = ["/usr/bin/python3", STANDIN, "--port", "0"]
        if token:
            args += ["--token", token]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = "http://127.0.0.1:%d" % self.port

    def get(self, path, token=None):
        req = urllib.request.Request(self.url + path, headers={"X-Consul-Token": token or ""})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def requests(self):
        return self.get("/debug/requests")

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        self.proc.stdout.close()


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A CA, and two certificates it signs (127.0.0.1/localhost, server and client use), plus
    a certificate from another CA. Returns {name: path}."""
    ext = os.path.join(d, "leaf.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                "/CN=hm test %s" % ca, "-keyout", ca + ".key", "-out", ca + ".pem", cwd=d)
    for leaf, ca in (("alpha", "ca"), ("beta", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % leaf, "-keyout",
                leaf + ".key", "-out", leaf + ".csr", cwd=d)
        openssl("x509", "-req", "-in", leaf + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", leaf + ".pem", cwd=d)
    return {n: os.path.join(d, n) for n in os.listdir(d)}


def read(path):
    with open(path, "rb") as f:
        return f.read()


class MeshBase(hmtest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.pb = mesh_pb()
        cls.grpc = hmtest.grpc_mod()
        cls.daemons = []

    @classmethod
    def tearDownClass(cls):
        for d in cls.daemons:
            d.close()

    def meshd(self, name, env, channel=None, data_subject=False):
        e = {"HM_TEST_MESHD_NAME": name, "HM_TEST_MESHD_DATA_SUBJECT": "1" if data_subject else "0",
             "HM_SERVICE_TOKEN": hmtest.token("svc-test", roles=("service",))}
        e.update(env)
        d = hmtest.Daemon(name, meshd_exe(), env=e, label="%s-%s" % (self.id().split(".")[-1], name))
        if channel:
            d._channel = channel(d.addr)
        self.daemons.append(d)
        return d.start()

    def rpc(self, d, method, req_type, resp_type, ch=None):
        return (ch or d.channel()).unary_unary(
            MESH + method, request_serializer=req_type.SerializeToString,
            response_deserializer=resp_type.FromString)

    def call_peer(self, d, peer, ch=None):
        f = self.rpc(d, "CallPeer", self.pb.CallPeerRequest, self.pb.EchoResponse, ch)
        return f(self.pb.CallPeerRequest(peer=peer, text="hello"), timeout=10,
                 metadata=hmtest.auth_md("guest-7", roles=("guest",)))

    def participants(self, d):
        f = self.rpc(d, "Participants", self.pb.ParticipantsRequest, self.pb.ParticipantsResponse)
        r = f(self.pb.ParticipantsRequest(), timeout=10, metadata=hmtest.auth_md("privacyd-test"))
        return [(p.service, p.addr) for p in r.participants]


class ConsulTest(MeshBase):

    def test_register_resolve_deregister(self):
        consul = Consul(token=TOKEN)
        try:
            env = {"HM_CONSUL_ADDR": consul.url, "HM_CONSUL_TOKEN": TOKEN,
                   "HM_CONSUL_REFRESH": "200ms", "HM_CONSUL_TAGS": "blue",
                   "HM_CONSUL_CHECK_INTERVAL": "5s", "HM_CONSUL_DEREGISTER_AFTER": "2m"}
            alpha = self.meshd("alpha", env, data_subject=True)
            beta = self.meshd("beta", env)
            regs = [r for r in consul.requests()
                    if r["method"] == "PUT" and r["path"] == "/v1/agent/service/register"]
            self.assertEqual(len(regs), 2, regs)
            by_name = {r["json"]["Name"]: r for r in regs}
            a = by_name["alpha"]
            self.assertEqual(a["headers"].get("X-Consul-Token"), TOKEN)
            body = a["json"]
            self.assertEqual(set(body), {"ID", "Name", "Address", "Port", "Tags", "Meta", "Check"})
            self.assertTrue(body["ID"].startswith("alpha-127.0.0.1-%d-" % alpha.port), body["ID"])
            self.assertNotEqual(body["ID"], by_name["beta"]["json"]["ID"])
            self.assertEqual((body["Address"], body["Port"]), ("127.0.0.1", alpha.port))
            self.assertEqual(body["Tags"], ["blue", "data-subject"])
            self.assertEqual(by_name["beta"]["json"]["Tags"], ["blue"])
            self.assertRegex(body["Meta"]["version"], r"^\d+\.\d+\.\d+")
            self.assertEqual(body["Check"], {
                "GRPC": "127.0.0.1:%d/readiness" % alpha.port, "GRPCUseTLS": False,
                "Interval": "5s", "DeregisterCriticalServiceAfter": "2m"})

            # beta has no HM_ALPHA_ADDR: it finds alpha through Consul.
            r = self.call_peer(beta, "alpha")
            self.assertEqual((r.daemon, r.addr, r.text), ("alpha", alpha.addr, "hello"))
            self.assertEqual(r.subject, "svc-test")  # beta's own service credential
            self.assertEqual(r.end_user, "guest-7")  # the end user, for audit only
            self.assertTrue(any(q["path"] == "/v1/health/service/alpha" and
                                "passing" in q["query"] for q in consul.requests()))
            self.assertEqual(self.participants(beta), [("alpha", alpha.addr)])

            # A peer nobody registered: UNAVAILABLE, reason PEER_UNRESOLVED.
            with self.assertRaises(self.grpc.RpcError) as cm:
                self.call_peer(beta, "nosuchd")
            self.assertEqual(cm.exception.code(), self.grpc.StatusCode.UNAVAILABLE)
            self.assertEqual(hmtest.error_details(cm.exception)[1].reason, "PEER_UNRESOLVED")

            m = hmtest.parse_metrics(hmtest.http_get(alpha.admin_addr, "/metrics")[1])
            self.assertEqual(hmtest.metric(m, "hm_consul_registered"), 1)

            alpha_id = body["ID"]
            self.assertEqual(alpha.stop(), 0)
            deregs = [r for r in consul.requests() if r["method"] == "PUT" and
                      r["path"].startswith("/v1/agent/service/deregister/")]
            self.assertEqual([r["path"] for r in deregs],
                             ["/v1/agent/service/deregister/" + alpha_id])
            self.assertEqual(deregs[0]["headers"].get("X-Consul-Token"), TOKEN)
            self.assertEqual(consul.get("/v1/health/service/alpha?passing=true", TOKEN), [])
            # Deregistration comes before the drain: logged before the daemon stopped serving.
            log = alpha.log_text()
            self.assertLess(log.index("consul: deregistered"), log.index("stopped cleanly"))
            self.assertEqual(beta.stop(), 0)
        finally:
            consul.close()

    def test_without_consul_peers_come_from_the_environment(self):
        alpha = self.meshd("alpha", {})
        gamma = self.meshd("gamma", {"HM_ALPHA_ADDR": alpha.addr,
                                     "HM_DATA_SUBJECT_PEERS": "alpha, zeta"})
        r = self.call_peer(gamma, "alpha")
        self.assertEqual((r.daemon, r.addr), ("alpha", alpha.addr))
        self.assertEqual(self.participants(gamma), [("alpha", alpha.addr), ("zeta", "")])


class TlsTest(MeshBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.TemporaryDirectory(prefix="hm-tls-")
        cls.pki = make_pki(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.tmp.cleanup()

    def creds(self, cert=None):
        p = self.pki
        if cert:
            return self.grpc.ssl_channel_credentials(read(p["ca.pem"]), read(p[cert + ".key"]),
                                                     read(p[cert + ".pem"]))
        return self.grpc.ssl_channel_credentials(read(p["ca.pem"]))

    def secure(self, cert=None):
        return lambda addr: self.grpc.secure_channel(addr, self.creds(cert))

    def echo(self, ch, timeout=5):
        f = ch.unary_unary(MESH + "Echo", request_serializer=self.pb.EchoRequest.SerializeToString,
                           response_deserializer=self.pb.EchoResponse.FromString)
        return f(self.pb.EchoRequest(text="tls"), timeout=timeout)

    def tls_env(self, leaf, mtls):
        p = self.pki
        env = {"HM_TLS_CERT": p[leaf + ".pem"], "HM_TLS_KEY": p[leaf + ".key"]}
        if mtls:
            env["HM_TLS_CA"] = p["ca.pem"]
        return env

    def test_tls(self):
        alpha = self.meshd("alpha", self.tls_env("alpha", mtls=False), channel=self.secure())
        self.assertEqual(self.echo(alpha.channel()).text, "tls")
        with hmtest.channel(alpha.addr) as plain:
            with self.assertRaises(self.grpc.RpcError) as cm:
                self.echo(plain, timeout=3)
            self.assertEqual(cm.exception.code(), self.grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(alpha.stop(), 0)

    def test_mtls_refuses_clients_without_a_certificate(self):
        alpha = self.meshd("alpha", self.tls_env("alpha", mtls=True), channel=self.secure("client"))
        self.assertEqual(self.echo(alpha.channel()).text, "tls")
        for who, creds in (("no certificate", self.creds()),
                           ("a certificate of another CA", self.creds("rogue"))):
            with self.grpc.secure_channel(alpha.addr, creds) as ch:
                with self.assertRaises(self.grpc.RpcError, msg=who) as cm:
                    self.echo(ch, timeout=3)
                self.assertEqual(cm.exception.code(), self.grpc.StatusCode.UNAVAILABLE, who)
        self.assertIn("(mTLS)", alpha.log_text())

        # A daemon calls its peer over mTLS with its own certificate (HM_PEER_TLS=auto).
        consul = Consul()
        try:
            env = self.tls_env("beta", mtls=True)
            env.update({"HM_ALPHA_ADDR": alpha.addr, "HM_CONSUL_ADDR": consul.url})
            beta = self.meshd("beta", env, channel=self.secure("client"))
            r = self.call_peer(beta, "alpha", ch=beta.channel())
            self.assertEqual((r.daemon, r.text), ("alpha", "hello"))
            reg = [q for q in consul.requests() if q["path"] == "/v1/agent/service/register"]
            self.assertIs(reg[0]["json"]["Check"]["GRPCUseTLS"], True)
            self.assertEqual(beta.stop(), 0)
        finally:
            consul.close()
        self.assertEqual(alpha.stop(), 0)

    def test_bad_tls_configuration_exits_2_naming_the_variable(self):
        p = self.pki
        for env, var in (({"HM_TLS_CERT": p["alpha.pem"]}, "HM_TLS_KEY"),
                         ({"HM_TLS_CERT": p["alpha.pem"], "HM_TLS_KEY": "/nonexistent"},
                          "HM_TLS_KEY"),
                         ({"HM_TLS_CA": p["ca.pem"]}, "HM_TLS_CA"),
                         ({"HM_TLS_CERT": p["alpha.csr"] + ".missing", "HM_TLS_KEY": p["alpha.key"]},
                          "HM_TLS_CERT")):
            e = dict(os.environ)
            e.update({"HM_DATABASE_URL": "dbname=none", "HM_TEST_MESHD_NAME": "alpha"})
            e.update(env)
            r = subprocess.run([meshd_exe()], env=e, capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(var + ":", r.stderr)
            self.assertNotIn("PRIVATE KEY", r.stderr)


if __name__ == "__main__":
    hmtest.main()
