#!/usr/bin/python3
"""
run_node.py - runs the @grpc/grpc-js interop tests (grpcjs.test.mjs) against one daemon.

With an argument, runs that test file of tests/interop instead (e.g. guest_journey.test.mjs).
Starts HM_TEST_DAEMON (executable HM_TEST_DAEMON_EXE) with its own database and ports through
tests/lib/hmtest.py, runs `node --test grpcjs.test.mjs` with the daemon's address in the
environment, then stops the daemon with SIGTERM: the test passes when node's tests pass and the
daemon exits 0 within its grace period. Exits 77 without the test environment.

Needs tests/interop/node_modules (`npm ci` in tests/interop; tools/dev setup does it) and node
(HM_TEST_NODE, else `node` on PATH).
"""
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))
import hmtest  # noqa: E402

MAX_MESSAGE = 4 * 1024 * 1024


def main():
    hmtest.require_env()
    node = os.environ.get("HM_TEST_NODE") or shutil.which("node")
    if not node:
        print("node not found (install nodejs; tools/dev setup does)")
        return 1
    if not os.path.isdir(os.path.join(HERE, "node_modules", "@grpc", "grpc-js")):
        print("tests/interop/node_modules missing: run `npm ci` in tests/interop "
              "(tools/dev setup does)")
        return 1
    script = sys.argv[1] if len(sys.argv) > 1 else "grpcjs.test.mjs"
    name, exe = hmtest.daemon_under_test()
    d = hmtest.Daemon(name, exe, env={"HM_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)})
    rc = 1
    try:
        d.start()
        env = dict(os.environ)
        env.update({
            "HM_INTEROP_ADDR": d.addr,
            "HM_INTEROP_SERVICES": ",".join(d.services),
            "HM_INTEROP_DAEMON": name,
            "HM_INTEROP_MAX_MESSAGE": str(MAX_MESSAGE),
            # a service credential for tests that call authenticated methods
            "HM_INTEROP_TOKEN": hmtest.token("interop-client", roles=("service",)),
            "HM_INTEROP_PROTO_DIR": os.path.join(os.path.dirname(os.path.dirname(HERE)), "proto"),
            "NODE_PATH": os.path.join(HERE, "node_modules"),
        })
        t0 = time.monotonic()
        r = subprocess.run([node, "--test", "--test-reporter=spec",
                            os.path.join(HERE, script)],
                           cwd=HERE, env=env, stdin=subprocess.DEVNULL, timeout=240)
        print("node --test exited %d after %.1f s" % (r.returncode, time.monotonic() - t0))
        rc = 0 if r.returncode == 0 else 1
        status = d.stop()
        print("%s exited %s %.2f s after SIGTERM" % (name, status, d.stop_seconds or -1))
        if status != 0:
            print("FAIL: %s exit status %s after SIGTERM (want 0)" % (name, status))
            rc = 1
    except Exception as e:  # start-up failure, timeout
        print("FAIL: %s: %s" % (type(e).__name__, e))
        rc = 1
    finally:
        if rc != 0:
            sys.stdout.flush()
            sys.stderr.write(d.log_tail(80) + "\n")
        d.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
