#!/usr/bin/python3
"""
test_sigterm_under_load.py - fault tests of the runtime's shutdown and readiness.

- SIGTERM under load: client threads (each on its own connection) call Health/Check without
  pause and a Watch stream follows readiness when the daemon gets SIGTERM. The daemon must exit
  0 within its grace (+ margin); no call may fail with anything but UNAVAILABLE, and only a call
  the server never took may: every call the server logged as answered (access log, by
  x-request-id) must have reached its client with that status, and every call that was in
  flight at the signal and taken by the server completes OK. Calls refused after the drain began
  are counted, not failed (CANCELLED from the core's GOAWAY race too, see grpc/grpc#41785,
  unless HM_TEST_STRICT_DRAIN=1). The Watch stream sees NOT_SERVING and ends.
- Calls blocked in a handler (guestd GetProfile waiting on a table lock the test holds):
  health checks are still answered at once by a free worker; at SIGTERM the daemon waits for
  the blocked calls and for a call accepted but still waiting for a worker, all complete with
  their own status (NOT_FOUND) once the lock goes, and the process exits 0; calls still blocked
  when the grace is over are cut off and the process exits 0 soon after the grace.
- Idle client connections do not hold up the shutdown: exit well before the grace is over.
- Postgres going away at runtime: readiness (and "") turn NOT_SERVING while liveness stays
  SERVING, and SERVING again when Postgres is back. Uses a dedicated small cluster that the
  test stops and starts.

The daemon is HM_TEST_DAEMON (default guestd), executable HM_TEST_DAEMON_EXE.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import hmtest  # noqa: E402
from hmtest import NOT_SERVING, SERVING  # noqa: E402
from hmmesh import PostgresCluster  # noqa: E402

GRACE_S = 3
GOAWAY_WINDOW_S = 0.1  # longest time after SIGTERM a client may still start a call on
                       # a connection before it sees the GOAWAY (grpc/grpc#41785)
GOAWAY_TRANSIT_S = 0.02  # a call sent this long before SIGTERM may still be on the wire
                         # (unread by the server) when the shutdown starts: same race
CLIENTS = 6


def grpc():
    return hmtest.grpc_mod()


class Call:
    __slots__ = ("rid", "t0", "t1", "code", "details")

    def __init__(self, rid, t0):
        self.rid, self.t0, self.t1, self.code, self.details = rid, t0, None, None, ""


def load_client(addr, idx, stop, calls):
    """Calls Health/Check("") back to back on a connection of its own until `stop` is set."""
    g = grpc()
    ch = hmtest.channel(addr, **{"grpc.use_local_subchannel_pool": 1})
    h = hmtest.Health(ch)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            c = Call("load-%d-%d" % (idx, n), time.monotonic())
            calls.append(c)
            try:
                # wait_for_ready off (the default): a refused connection fails at once.
                h.check("", timeout=5, metadata=[("x-request-id", c.rid)])
                c.code = g.StatusCode.OK
            except g.RpcError as e:
                c.code, c.details = e.code(), e.details()
            c.t1 = time.monotonic()
            if c.code == g.StatusCode.UNAVAILABLE:
                time.sleep(0.01)  # the server is going away; do not spin
    finally:
        ch.close()


def served_calls(log_text):
    """{request_id: code} of the access log lines ("msg":"call") in a daemon's log."""
    out = {}
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "call" and rec.get("request_id"):
            out[rec["request_id"]] = rec.get("code")
    return out


class SigtermUnderLoad(hmtest.TestCase):

    def test_sigterm_under_load(self):
        g = grpc()
        name, exe = hmtest.daemon_under_test()
        # debug: the access log then has a line per health call (x-request-id, code).
        d = hmtest.Daemon(name, exe, grace="%ds" % GRACE_S, log_level="debug",
                          env={"HM_ACCESS_LOG": "on"})
        try:
            d.start()
            stop = threading.Event()
            calls = []
            watch = {"msgs": [], "end": None}

            def watcher():
                with hmtest.channel(d.addr, **{"grpc.use_local_subchannel_pool": 1}) as ch:
                    try:
                        for m in hmtest.Health(ch).watch("readiness", timeout=30):
                            watch["msgs"].append((time.monotonic(), m.status))
                    except g.RpcError as e:
                        watch["end"] = e.code()
                    else:
                        watch["end"] = "end of stream"

            wt = threading.Thread(target=watcher)
            wt.start()
            threads = [threading.Thread(target=load_client, args=(d.addr, i, stop, calls))
                       for i in range(CLIENTS)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            n_before = len(calls)
            self.assertTrue(watch["msgs"] and watch["msgs"][0][1] == SERVING,
                            "Watch(readiness) first message: %r" % watch["msgs"])
            t_sig = time.monotonic()
            d.send_signal(signal.SIGTERM)
            status = d.wait(GRACE_S + 5)
            t_exit = time.monotonic()
            time.sleep(0.3)
            stop.set()
            for t in threads:
                t.join(10)
            wt.join(10)
            self.assertFalse(wt.is_alive(), "the Watch stream did not end")
            self.assertIsNotNone(status, "no exit within grace + 5 s")
            self.assertEqual(status, 0, "exit status after SIGTERM")
            self.assertLess(t_exit - t_sig, GRACE_S + 2, "exit took %.2f s" % (t_exit - t_sig))

            served = served_calls(d.log_text())
            done = [c for c in calls if c.t1 is not None]
            ok = [c for c in done if c.code == g.StatusCode.OK]
            unavailable = [c for c in done if c.code == g.StatusCode.UNAVAILABLE]
            other = [c for c in done if c.code not in (g.StatusCode.OK, g.StatusCode.UNAVAILABLE)]
            # Known limitation of the gRPC core (grpc/grpc#41785, fixed upstream after 1.51): a
            # call that reaches the server after grpc_server_shutdown_and_notify and before its
            # client saw the GOAWAY is reset with CANCELLED instead of UNAVAILABLE. Tolerated
            # for calls the server never answered that started within GOAWAY_WINDOW_S of the
            # signal; HM_TEST_STRICT_DRAIN=1 fails on them too.
            goaway_race = [] if os.environ.get("HM_TEST_STRICT_DRAIN") == "1" else [
                c for c in other if c.code == g.StatusCode.CANCELLED and c.rid not in served
                and c.t0 >= t_sig - GOAWAY_TRANSIT_S]
            other = [c for c in other if c not in goaway_race]
            in_flight = [c for c in done if c.t0 < t_sig < c.t1]
            before = [c for c in done if c.t1 < t_sig]
            lost = [c for c in done if c.rid in served and c.code.name != served[c.rid]]
            taken_failed = [c for c in in_flight if c.rid in served and c.code != g.StatusCode.OK]
            hmtest.log("%d calls before SIGTERM (%d before the first 1.5 s), %d OK, %d UNAVAILABLE "
                       "(drain), %d in flight at the signal (%d of them taken by the server), "
                       "%d other; exit %.2f s after SIGTERM" % (
                           len(before), n_before, len(ok), len(unavailable), len(in_flight),
                           len([c for c in in_flight if c.rid in served]), len(other),
                           t_exit - t_sig))
            if goaway_race:
                hmtest.log("%d calls CANCELLED by the GOAWAY race (grpc/grpc#41785), tolerated: "
                           "%s" % (len(goaway_race), ", ".join(
                               "%s %+.1f ms" % (c.rid, (c.t0 - t_sig) * 1000)
                               for c in goaway_race)))
            # The race is the window before each client sees the GOAWAY: bounded in time, not
            # in count (a client may start several calls in it; slower under ASan).
            late = ["%s %+.1f ms" % (c.rid, (c.t0 - t_sig) * 1000) for c in goaway_race
                    if c.t0 - t_sig > GOAWAY_WINDOW_S]
            self.assertEqual(late, [], "CANCELLED calls started well after the GOAWAY was sent")
            for c in unavailable[:5]:
                hmtest.log("  UNAVAILABLE %s +%.1f ms after the signal (taken: %s): %s" % (
                    c.rid, (c.t0 - t_sig) * 1000, c.rid in served, c.details))

            self.assertGreater(len(before), 100, "the load was too light to mean anything")
            self.assertEqual([c for c in before if c.code != g.StatusCode.OK], [])
            # Started before the signal: the server got them and must complete them.
            self.assertEqual(["%s %s (%s) started %.1f ms before SIGTERM" % (
                c.rid, c.code.name, c.details, (t_sig - c.t0) * 1000)
                for c in in_flight if c.code != g.StatusCode.OK and c.t0 < t_sig - 0.05], [],
                "calls in flight for 50 ms or more at SIGTERM failed")
            self.assertEqual(["%s %s (%s) started %+.1f ms after SIGTERM, %s by the server" % (
                c.rid, c.code.name, c.details, (c.t0 - t_sig) * 1000,
                "answered" if c.rid in served else "not answered") for c in other], [],
                "calls failed with codes other than UNAVAILABLE")
            self.assertEqual([(c.rid, c.code, served[c.rid]) for c in lost], [],
                             "calls the server answered whose status did not reach the client")
            self.assertEqual([(c.rid, c.code, c.details) for c in taken_failed], [],
                             "calls in flight at SIGTERM and taken by the server did not complete")
            # Every OK a client got was answered by the server (the access log is complete).
            self.assertEqual([c.rid for c in ok if c.rid not in served], [])

            # Watch(readiness): SERVING, then NOT_SERVING once SIGTERM arrived, then the end.
            statuses = [s for _, s in watch["msgs"]]
            self.assertEqual(statuses, [SERVING, NOT_SERVING], "Watch(readiness) messages")
            self.assertGreaterEqual(watch["msgs"][1][0], t_sig)
            self.assertIn(watch["end"], (g.StatusCode.UNAVAILABLE, "end of stream"))
        finally:
            d.close()

    def test_idle_connections_do_not_hold_shutdown(self):
        name, exe = hmtest.daemon_under_test()
        d = hmtest.Daemon(name, exe, grace="%ds" % GRACE_S, label=hmtest.test_name() + "-idle")
        chans = []
        try:
            d.start()
            # A few clients that made a call and keep their connection open, idle (like a
            # peer's channel cache or a load balancer's health checker).
            for _ in range(3):
                ch = hmtest.channel(d.addr, **{"grpc.use_local_subchannel_pool": 1})
                self.assertEqual(hmtest.Health(ch).check(""), SERVING)
                chans.append(ch)
            status = d.stop(timeout=GRACE_S + 5)
            self.assertEqual(status, 0)
            # Nothing is in flight: the drain has nothing to wait for.
            self.assertLess(d.stop_seconds, 1.0,
                            "idle connections held the shutdown for %.2f s (grace %d s)" % (
                                d.stop_seconds, GRACE_S))
        finally:
            for ch in chans:
                ch.close()
            d.close()


GET_PROFILE = "/hospitality.guest.v1.GuestService/GetProfile"


class TableLock:
    """ACCESS EXCLUSIVE lock on a table, held by a psql session of the test until release()."""

    def __init__(self, db, table):
        env = hmtest.require_env()
        self.p = subprocess.Popen(
            ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", env.pg_host, "-p",
             str(env.pg_port), "-U", env.pg_user, "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.p.stdin.write("BEGIN; LOCK TABLE %s IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n"
                           % table)
        self.p.stdin.flush()
        line = self.p.stdout.readline().strip()
        if line != "locked":
            raise AssertionError("could not lock %s: %s" % (table, line))

    def release(self):
        if self.p.poll() is None and not self.p.stdin.closed:
            self.p.stdin.write("COMMIT;\n")
            self.p.stdin.close()
            self.p.wait(10)
            self.p.stdout.close()


def lock_waiters(db):
    """Backends of database `db` waiting for a lock."""
    return int(hmtest.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND "
                           "wait_event_type = 'Lock'" % db).strip() or 0)


class DrainBlockedCalls(hmtest.TestCase):
    """Calls in a handler at SIGTERM (guestd only: GetProfile reads the guests table, which the
    test locks so that the calls wait in Postgres)."""

    def setUp(self):
        name, exe = hmtest.daemon_under_test()
        if name != "guestd":
            self.skipTest("uses guestd's GetProfile")
        self.exe = exe

    def start_blocked(self, label, workers, blocked, call_timeout=20, env=None):
        """A daemon with `blocked` GetProfile calls waiting on a table lock. Returns (daemon,
        lock, results, threads, call) where call(i) starts one more call in a thread and
        results collects (request id, code, seconds)."""
        g = grpc()
        # No consumer or tasks: only the calls under test may wait on the locked table (guestd's
        # app-sync task reads it too).
        env = dict(env or {}, HM_CONSUMERS="off")
        d = hmtest.Daemon("guestd", self.exe, grace="%ds" % GRACE_S, workers=workers,
                          label=hmtest.test_name() + "-" + label, env=env)
        d.start()
        rpc = d.channel().unary_unary(GET_PROFILE)
        guest = b"0190f5c2-7d1e-7c3b-9c1a-" + os.urandom(6).hex().encode()
        req = b"\x0a" + bytes([len(guest)]) + guest
        try:
            rpc(req, timeout=5, metadata=hmtest.auth_md())
            baseline = g.StatusCode.OK
        except g.RpcError as e:
            baseline = e.code()
        if baseline == g.StatusCode.UNIMPLEMENTED:
            self.skipTest("guestd has no GetProfile yet")
        self.assertEqual(baseline, g.StatusCode.NOT_FOUND,
                         "GetProfile of an unknown guest (auth required now? update the test)")
        lock = TableLock(d.db, "guests")
        results = []
        threads = []

        def call(i):
            def run():
                t0 = time.monotonic()
                try:
                    rpc(req, timeout=call_timeout,
                        metadata=[("x-request-id", "blocked-%d" % i)] + hmtest.auth_md())
                    code = g.StatusCode.OK
                except g.RpcError as e:
                    code = e.code()
                results.append(("blocked-%d" % i, code, time.monotonic() - t0))
            t = threading.Thread(target=run)
            t.start()
            threads.append(t)

        for i in range(blocked):
            call(i)
        until = time.monotonic() + 10
        while lock_waiters(d.db) < blocked and time.monotonic() < until:
            time.sleep(0.05)
        self.assertEqual(lock_waiters(d.db), blocked, "calls not blocked on the lock")
        return d, lock, results, threads, call

    def test_health_not_behind_blocked_handlers(self):
        # Two of three workers block in Postgres; one is free. Health checks (readiness probes
        # time out in about a second) must not wait for a blocked handler.
        d, lock, results, threads, _ = self.start_blocked(
            "health", workers=3, blocked=2, env={"HM_DB_STATEMENT_TIMEOUT": "2s"})
        try:
            h = d.health()
            slow = []
            for i in range(6):
                t0 = time.monotonic()
                st = h.check("readiness", timeout=10)
                dt = time.monotonic() - t0
                self.assertEqual(st, SERVING)
                if dt > 0.5:
                    slow.append("Check %d: %.2f s" % (i, dt))
            self.assertEqual(slow, [], "health checks waited behind blocked handlers")
        finally:
            lock.release()
            for t in threads:
                t.join(10)
            d.close()

    def test_blocked_calls_complete_after_sigterm(self):
        # Both workers block in a handler; a third call waits in the server for a free worker.
        # All three were accepted before SIGTERM: all must complete with their own status
        # (NOT_FOUND) once the lock goes, within the grace.
        g = grpc()
        d, lock, results, threads, call = self.start_blocked("drain", workers=2, blocked=2)
        try:
            call(2)
            time.sleep(0.5)
            self.assertEqual(results, [], "the queued call finished with both workers blocked")
            self.assertEqual(lock_waiters(d.db), 2)
            t_sig = time.monotonic()
            d.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            self.assertTrue(d.alive(), "exited with calls in flight")
            self.assertEqual(hmtest.http_get(d.admin_addr, "/readyz")[0], 503)
            early = list(results)
            lock.release()
            for t in threads:
                t.join(10)
            status = d.wait(GRACE_S + 5)
            dt = time.monotonic() - t_sig
            self.assertEqual(early, [], "calls ended while their handlers were still blocked")
            self.assertEqual(sorted((rid, code) for rid, code, _ in results),
                             [("blocked-%d" % i, g.StatusCode.NOT_FOUND) for i in range(3)],
                             "calls accepted before SIGTERM must complete with their own status")
            self.assertEqual(status, 0)
            self.assertLess(dt, GRACE_S + 1, "exit %.2f s after SIGTERM" % dt)
        finally:
            lock.release()
            d.close()

    def test_grace_over_cuts_blocked_calls(self):
        g = grpc()
        # Neither the statement timeout (30 s) nor the calls' deadline (8 s) ends the handlers
        # before the grace (3 s) does.
        d, lock, results, threads, _ = self.start_blocked(
            "grace", workers=3, blocked=2, call_timeout=8, env={"HM_DB_STATEMENT_TIMEOUT": "30s"})
        try:
            t_sig = time.monotonic()
            d.send_signal(signal.SIGTERM)
            status = d.wait(15)
            dt = time.monotonic() - t_sig
            for t in threads:
                t.join(15)
            self.assertIsNotNone(status, "no exit 15 s after SIGTERM (grace %d s)" % GRACE_S)
            self.assertEqual(status, 0, "exit status with calls still blocked at the grace")
            # The grace bounds the shutdown: a handler stuck in Postgres is cut off with it.
            self.assertLess(dt, GRACE_S + 1.5, "exit %.2f s after SIGTERM (grace %d s)" % (
                dt, GRACE_S))
            self.assertEqual(len(results), 2)
            for rid, code, secs in results:
                self.assertIn(code, (g.StatusCode.UNAVAILABLE, g.StatusCode.CANCELLED),
                              "%s cut off at the grace (after %.2f s)" % (rid, secs))
        finally:
            lock.release()
            d.close()


class PostgresOutage(hmtest.TestCase):

    def test_readiness_follows_postgres(self):
        g = grpc()
        name, exe = hmtest.daemon_under_test()
        pg = PostgresCluster()
        d = None
        try:
            pg.init()
            pg.start()
            pg.createdb(name)
            d = hmtest.Daemon(name, exe, conninfo=pg.conninfo(name), grace="%ds" % GRACE_S,
                              label=hmtest.test_name() + "-pg")
            d.start()
            h = d.health()
            for svc in ("", "readiness", "liveness"):
                self.assertEqual(h.check(svc), SERVING, svc)
            msgs = []
            ended = threading.Event()

            def watcher():
                with hmtest.channel(d.addr, **{"grpc.use_local_subchannel_pool": 1}) as ch:
                    try:
                        for m in hmtest.Health(ch).watch("readiness", timeout=40):
                            msgs.append(m.status)
                    except g.RpcError:
                        pass
                ended.set()

            wt = threading.Thread(target=watcher)
            wt.start()

            t0 = time.monotonic()
            pg.stop()
            d.wait_status(NOT_SERVING, "readiness", timeout=10)
            hmtest.log("readiness NOT_SERVING %.2f s after Postgres stopped" % (
                time.monotonic() - t0))
            # Still alive and answering: liveness SERVING, "" and the service NOT_SERVING.
            self.assertEqual(h.check("liveness"), SERVING)
            self.assertEqual(h.check(""), NOT_SERVING)
            for svc in d.services:
                self.assertEqual(h.check(svc), NOT_SERVING, svc)
            self.assertEqual(hmtest.http_get(d.admin_addr, "/readyz")[0], 503)
            self.assertEqual(hmtest.http_get(d.admin_addr, "/healthz")[0], 200)
            self.assertEqual(hmtest.metric(d.metrics(), "hm_ready"), 0)
            time.sleep(1.5)  # a few probe rounds against a dead server: no crash, no hang
            self.assertTrue(d.alive())
            self.assertEqual(h.check("readiness", timeout=2), NOT_SERVING)

            t0 = time.monotonic()
            pg.start()
            d.wait_status(SERVING, "readiness", timeout=10)
            hmtest.log("readiness SERVING %.2f s after Postgres restarted" % (
                time.monotonic() - t0))
            self.assertEqual(h.check(""), SERVING)
            self.assertEqual(hmtest.http_get(d.admin_addr, "/readyz")[0], 200)
            self.assertEqual(hmtest.metric(d.metrics(), "hm_ready"), 1)
            deadline = time.monotonic() + 3
            while msgs[-1:] != [SERVING] and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(msgs, [SERVING, NOT_SERVING, SERVING], "Watch(readiness) messages")

            self.assertEqual(d.stop(), 0)
            self.assertTrue(ended.wait(5), "Watch did not end at shutdown")
            wt.join(5)
        finally:
            if d:
                d.close()
            pg.destroy()


if __name__ == "__main__":
    hmtest.main()
