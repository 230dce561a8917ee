#!/usr/bin/python3
"""
Interop: the client examples of docs/clients.md, run exactly as written there against a live
guestd. The blocks after `<!-- test: NAME -->` markers are extracted: `python-gen` (the stub
generation commands, bash), `python` (grpcio with those stubs) and `node` (@grpc/grpc-js with
@grpc/proto-loader, from tests/interop/node_modules). Each example creates a guest, reads it
back and reads a missing one, as a service, and prints a JSON line this test checks (and the
daemon's counters confirm the calls came in with the service credential).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))
import hmtest  # noqa: E402

DOC = os.path.join(hmtest.SRC_ROOT, "docs", "clients.md")
GUEST = "/hospitality.guest.v1.GuestService/"


def examples():
    """{name: code} of the blocks marked `<!-- test: name -->` in docs/clients.md."""
    with open(DOC) as f:
        text = f.read()
    found = re.findall(r"<!-- test: ([a-z-]+) -->\s*```[a-z]*\n(.*?)```", text, re.S)
    return {name: code for name, code in found}


class ClientsDocTest(hmtest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.ex = examples()
        cls.tmp = tempfile.mkdtemp(prefix="hm-clients-doc-")
        cls.d = hmtest.Daemon("guestd", hmtest.daemon_under_test()[1]).start()
        cls.env = dict(os.environ, HM_GUESTD_ADDR=cls.d.addr,
                       HM_SERVICE_TOKEN=hmtest.token("clients-doc-svc", roles=("service",)),
                       PROTO=os.path.join(hmtest.SRC_ROOT, "proto"),
                       HM_PROTO_DIR=os.path.join(hmtest.SRC_ROOT, "proto"))

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, "guestd exited %s" % rc

    def check_output(self, out):
        line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
        r = json.loads(line)
        self.assertRegex(r["guest_id"], r"^[0-9a-f-]{36}$")
        self.assertEqual(r["name"], "Ada Example")
        self.assertEqual(r["missing"], "NOT_FOUND")

    def run_example(self, cmd, **kw):
        before = hmtest.metric(self.d.metrics(), "hm_grpc_requests_total",
                               method=GUEST + "GetProfile", code="NOT_FOUND")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
        self.assertEqual(r.returncode, 0, "%s\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
        self.check_output(r.stdout)
        # Counted when the server's final batch completes, maybe just after the client is done.
        until = time.monotonic() + 5
        while True:
            after = hmtest.metric(self.d.metrics(), "hm_grpc_requests_total",
                                  method=GUEST + "GetProfile", code="NOT_FOUND")
            if after - before >= 1 or time.monotonic() > until:
                break
            time.sleep(0.05)
        self.assertEqual(after - before, 1)

    def test_python_example(self):
        self.assertIn("python-gen", self.ex)
        self.assertIn("python", self.ex)
        gen = subprocess.run(["bash", "-euo", "pipefail", "-c", self.ex["python-gen"]],
                             cwd=self.tmp, env=self.env, capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(gen.returncode, 0, gen.stderr)
        self.assertTrue(os.path.exists(os.path.join(
            self.tmp, "gen", "python", "hospitality", "guest", "v1", "guest_pb2_grpc.py")))
        path = os.path.join(self.tmp, "example.py")
        with open(path, "w") as f:
            f.write(self.ex["python"])
        env = dict(self.env, PYTHONPATH=os.path.join(self.tmp, "gen", "python"))
        self.run_example(["/usr/bin/python3", path], env=env, cwd=self.tmp)

    def test_node_example(self):
        self.assertIn("node", self.ex)
        node = os.environ.get("HM_TEST_NODE") or shutil.which("node")
        self.assertTrue(node, "node not found")
        modules = os.path.join(HERE, "node_modules")
        self.assertTrue(os.path.isdir(os.path.join(modules, "@grpc", "proto-loader")),
                        "run `npm ci` in tests/interop")
        path = os.path.join(self.tmp, "example.js")
        with open(path, "w") as f:
            f.write(self.ex["node"])
        env = dict(self.env, NODE_PATH=modules)
        self.run_example([node, path], env=env, cwd=self.tmp)


if __name__ == "__main__":
    hmtest.main()
