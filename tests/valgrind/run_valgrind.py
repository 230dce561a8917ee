#!/usr/bin/python3
"""
run_valgrind.py - one daemon under valgrind memcheck: a few hundred calls, SIGTERM, and no
memory error or definite leak.

Runs HM_TEST_DAEMON (executable HM_TEST_DAEMON_EXE, default guestd) as
  valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99
           --suppressions=tests/valgrind/grpc.supp ...
makes health Check/Watch calls (SERVING, NOT_FOUND), unknown methods (UNIMPLEMENTED), garbage
requests (INVALID_ARGUMENT), an oversized request (RESOURCE_EXHAUSTED), cancelled Watch
streams and expired deadlines, then sends SIGTERM with a Watch stream open. Passes when the
daemon exits 0 and valgrind reports no error and no definitely lost block.

Only for a build without sanitizers (meson suite 'valgrind', run on the plain build): on an
ASan build it exits 77 (skipped). Exits 77 without the test environment too.

With HM_TEST_HMCTL_EXE set, libhm's client side runs under valgrind too: `hmctl health` against
the daemon (SERVING, and an unknown name: NOT_FOUND), no error and no definite leak either.
"""
import os
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))
import hmtest  # noqa: E402

VALGRIND = os.environ.get("HM_TEST_VALGRIND") or shutil.which("valgrind")
SUPP = os.path.join(HERE, "grpc.supp")
MAX_MESSAGE = 1024 * 1024


def sanitized(exe):
    """True when `exe` was built with ASan/UBSan (valgrind cannot run those)."""
    r = subprocess.run(["nm", "-D", "--undefined-only", exe], capture_output=True, text=True)
    r2 = subprocess.run(["nm", exe], capture_output=True, text=True)
    syms = r.stdout + r2.stdout
    return "__asan_init" in syms or "__ubsan_handle" in syms or "__tsan_init" in syms


def exercise(d):
    """A few hundred calls of every kind the runtime answers without a database query."""
    g = hmtest.grpc_mod()
    counts = {}

    def note(code):
        counts[code] = counts.get(code, 0) + 1

    with hmtest.channel(d.addr, **{"grpc.max_send_message_length": -1}) as ch:
        h = hmtest.Health(ch)
        raw = ch.unary_unary(hmtest.HEALTH_CHECK)
        unknown = ch.unary_unary("/hospitality.nope.v1.NopeService/Nothing")
        for i in range(100):
            for svc in ("", "readiness", "liveness", d.services[0]):
                note(g.StatusCode.OK if h.check(svc, timeout=10) == hmtest.SERVING else "bad")
            for fn, arg in ((h.check, "nope.v1.Nope"), (unknown, b"abc"),
                            (raw, b"\x0a\x64" + os.urandom(8)), (raw, b"\x0f\x01")):
                try:
                    fn(arg, timeout=10, metadata=[("x-request-id", "vg-%d" % i)])
                    note("unexpected OK")
                except g.RpcError as e:
                    note(e.code())
        # Larger than the limit, a 1 ms deadline, Watch streams cancelled or expired.
        for _ in range(3):
            try:
                h.check("s" * (MAX_MESSAGE + 1000), timeout=10)
            except g.RpcError as e:
                note(e.code())
            try:
                h.check("", timeout=0.001)
                note(g.StatusCode.OK)
            except g.RpcError as e:
                note(e.code())
            s = h.watch("", timeout=10)
            next(s)
            s.cancel()
            try:
                for _ in h.watch("readiness", timeout=0.5):
                    pass
            except g.RpcError as e:
                note(e.code())
        # Concurrency: futures on one channel.
        futs = [h.check_rpc.future(h.pb.HealthCheckRequest(service=""), timeout=20)
                for _ in range(100)]
        for f in futs:
            note(g.StatusCode.OK if f.exception() is None else f.exception().code())
    return counts


def vg_summary(path):
    """(errors, definitely lost bytes) from a valgrind log; None for what is missing."""
    text = open(path).read() if os.path.exists(path) else ""
    errors = re.findall(r"ERROR SUMMARY: ([\d,]+) errors", text)
    definite = re.findall(r"definitely lost: ([\d,]+) bytes", text)
    return (int(errors[-1].replace(",", "")) if errors else None,
            int(definite[-1].replace(",", "")) if definite else 0), text


def run_hmctl(wrapper, hmctl, addr, log_dir):
    """hmctl health under valgrind: SERVING (exit 0) and an unknown name (exit 1, NOT_FOUND).
    Returns a list of failure messages."""
    fails = []
    for args, want_rc, want_out in (([], 0, "SERVING"), (["hospitality.nope.v1.Nope"], 1,
                                                         "NOT_FOUND")):
        log = os.path.join(log_dir, "valgrind-hmctl-%s.%d.log" % (want_out, os.getpid()))
        cmd = [w if not w.startswith("--log-file=") else "--log-file=" + log for w in wrapper]
        t0 = time.monotonic()
        r = subprocess.run(cmd + [hmctl, "health", addr] + args + ["--timeout", "60000"],
                           capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        (errors, definite), text = vg_summary(log)
        print("hmctl health %s under valgrind: exit %d, %r, errors %s, definitely lost %s "
              "(%.1f s, log %s)" % (" ".join(args) or "\"\"", r.returncode, r.stdout.strip(),
                                   errors, definite, time.monotonic() - t0, log))
        if r.returncode != want_rc or want_out not in r.stdout or errors != 0 or definite:
            fails.append("hmctl health %s: exit %d (want %d), output %r (want %s), valgrind "
                         "errors %s, definitely lost %s" % (args, r.returncode, want_rc,
                                                            r.stdout + r.stderr, want_out,
                                                            errors, definite))
            print(text[-15000:])
    return fails


def main():
    hmtest.require_env()
    name, exe = hmtest.daemon_under_test()
    if not VALGRIND:
        print("FAIL: valgrind not found (apt-get install valgrind; tools/dev setup does)")
        return 1
    if sanitized(exe):
        print("SKIP: %s is built with sanitizers; valgrind needs the plain build" % exe)
        return hmtest.SKIP
    env = hmtest.require_env()
    vg_log = os.path.join(env.log_dir, "valgrind-%s.%d.log" % (name, os.getpid()))
    wrapper = [VALGRIND, "--leak-check=full", "--errors-for-leak-kinds=definite",
               "--show-leak-kinds=definite,possible", "--error-exitcode=99",
               "--suppressions=" + SUPP, "--num-callers=40", "--log-file=" + vg_log,
               "--gen-suppressions=all"]
    d = hmtest.Daemon(name, exe, wrapper=wrapper, start_timeout=120, grace="10s",
                      env={"HM_MAX_MESSAGE_BYTES": str(MAX_MESSAGE), "HM_ACCESS_LOG": "on"})
    rc = 1
    try:
        t0 = time.monotonic()
        d.start()
        print("%s under valgrind serving after %.1f s" % (name, time.monotonic() - t0))
        counts = exercise(d)
        g = hmtest.grpc_mod()
        print("calls: " + ", ".join("%s=%d" % (getattr(k, "name", k), v)
                                    for k, v in sorted(counts.items(), key=str)))
        expect = {g.StatusCode.OK, g.StatusCode.NOT_FOUND, g.StatusCode.UNIMPLEMENTED,
                  g.StatusCode.INVALID_ARGUMENT, g.StatusCode.RESOURCE_EXHAUSTED,
                  g.StatusCode.DEADLINE_EXCEEDED}
        bad = {k: v for k, v in counts.items() if k not in expect}
        calls_ok = not bad and counts.get(g.StatusCode.OK, 0) >= 500 and \
            counts.get(g.StatusCode.UNIMPLEMENTED, 0) == 100 and \
            counts.get(g.StatusCode.INVALID_ARGUMENT, 0) == 200
        if not calls_ok:
            print("FAIL: unexpected call results: %r" % counts)
        hmctl = os.environ.get("HM_TEST_HMCTL_EXE")
        hmctl_fails = run_hmctl(wrapper, hmctl, d.addr, env.log_dir) if hmctl else []
        for f in hmctl_fails:
            print("FAIL: " + f)
        # SIGTERM with a Watch stream open (the drain path runs too).
        watch_ch = hmtest.channel(d.addr)
        stream = hmtest.Health(watch_ch).watch("", timeout=60)
        next(stream)
        drained = []
        t = threading.Thread(target=lambda: drained.append(_consume(stream)))
        t.start()
        d._channel.close()  # the harness' own channel: idle connections would wait the grace
        d._channel = None
        status = d.stop(timeout=120)
        t.join(10)
        watch_ch.close()
        print("%s exited %s after SIGTERM (%.1f s)" % (name, status, d.stop_seconds or -1))
        (errors, definite), text = vg_summary(vg_log)
        print("%s under valgrind: ERROR SUMMARY %s, definitely lost %s bytes (log %s)" % (
            name, errors, definite, vg_log))
        ok = calls_ok and not hmctl_fails and status == 0 and errors == 0 and definite == 0
        if status == 99:
            print("FAIL: valgrind found errors or definite leaks (exit 99)")
        elif status != 0:
            print("FAIL: exit status %s" % status)
        if not ok:
            print(text[-20000:])
        rc = 0 if ok else 1
    except Exception as e:
        print("FAIL: %s: %s" % (type(e).__name__, e))
        if os.path.exists(vg_log):
            print(open(vg_log).read()[-20000:])
    finally:
        if rc != 0:
            sys.stderr.write(d.log_tail(60) + "\n")
        d.close()
    return rc


def _consume(stream):
    out = []
    try:
        for m in stream:
            out.append(m.status)
    except Exception as e:
        out.append(getattr(e, "code", lambda: e)())
    return out


if __name__ == "__main__":
    sys.exit(main())
