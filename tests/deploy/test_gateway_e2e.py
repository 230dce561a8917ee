"""
End to end through the REST gateway (issue 11): tools/gateway's hm-gateway (grpc-gateway 1.6.4,
generated from our protos) in front of guestd, bookingd (with tools/partnersim as its partners)
gamificationd, recommenderd and privacyd, each on its own database; the seeds' REST calls go in as HTTP/JSON, the
daemons answer over gRPC.

- guest profile (seed 000): POST /api/v1/guests, GET /api/v1/guests/{id}/profile round trip;
- bookings (seed 004): POST /api/v1/bookings answers 201 Created; GET by id and by reference;
  PUT with a stale expected_version -> 409; an overlapping booking -> 409; an illegal status
  transition -> 400; POST .../cancel; GET /api/v1/bookings/guest/{guest_id};
  POST /api/v1/bookings/availability/check;
- status mapping (gRPC's canonical table, google/rpc/code.proto): INVALID_ARGUMENT and
  FAILED_PRECONDITION 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
  ALREADY_EXISTS and ABORTED 409, RESOURCE_EXHAUSTED 429 (with Retry-After), UNAVAILABLE 503
  (a daemon that is down); the body names the status and carries the daemon's message;
- X-Request-Id passes through both ways; GET /api/v1/guests/me/profile is not taken by the
  /api/v1/guests/{guest_id}/profile template;
- every REST path of the seeds, with recommenderd and privacyd up too, arrives at the RPC the
  seed-path mapping names, in the daemon serving it (its request counter grows, or it answers
  "unknown method <that RPC>" while its issue is open);
- with a daemon down, its paths answer 503 while the others keep working.
"""
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)
import hmtest  # noqa: E402

GATEWAY = os.environ.get("HM_TEST_GATEWAY_EXE") or os.path.join(
    hmtest.BUILD_ROOT, "tools", "gateway", "hm-gateway")


def http(addr, method, path, body=None, token=None, headers=None, timeout=20):
    """(status, parsed JSON body or text, response headers) of one request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://%s%s" % (addr, path), data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw.decode() or "null"), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def dead_port():
    """A port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Gateway:
    def __init__(self, env):
        self.port = hmtest.alloc_ports(1, "gateway")[0]
        self.addr = "127.0.0.1:%d" % self.port
        self.log_path = os.path.join(hmtest.require_env().log_dir,
                                     "gateway_e2e-hm-gateway.%d.log" % os.getpid())
        full = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
        full.update(env)
        full["HM_GATEWAY_ADDR"] = self.addr
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([GATEWAY], env=full, stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        until = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("hm-gateway exited %s:\n%s" % (self.proc.returncode,
                                                                    self.log()))
            try:
                st, _, _ = http(self.addr, "GET", "/healthz", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > until:
                raise AssertionError("hm-gateway not answering /healthz:\n" + self.log())
            time.sleep(0.1)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


class GatewayE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        hmtest.require_env()
        if not os.access(GATEWAY, os.X_OK):
            raise unittest.SkipTest("no hm-gateway at %s (needs golang-go, golang-grpc-gateway)"
                                    % GATEWAY)
        import test_bookingd_core

        cls.stack = test_bookingd_core.Stack(workers=4)
        cls.guestd = hmtest.Daemon("guestd", os.environ["HM_TEST_GUESTD_EXE"]).start()
        cls.gamificationd = hmtest.Daemon(
            "gamificationd", os.environ["HM_TEST_GAMIFICATIOND_EXE"],
            env={"HM_RATE_LIMITS": "default=5/10s"}).start()
        cls.recommenderd = hmtest.Daemon("recommenderd",
                                         os.environ["HM_TEST_RECOMMENDERD_EXE"]).start()
        cls.privacyd = hmtest.Daemon("privacyd", os.environ["HM_TEST_PRIVACYD_EXE"]).start()
        cls.routes = {
            "HM_GUESTD_ADDR": cls.guestd.addr,
            "HM_BOOKINGD_ADDR": cls.stack.bk.addr,
            "HM_GAMIFICATIOND_ADDR": cls.gamificationd.addr,
            "HM_RECOMMENDERD_ADDR": cls.recommenderd.addr,
            "HM_PRIVACYD_ADDR": cls.privacyd.addr,
        }
        cls.by_service = {}
        for d in (cls.guestd, cls.stack.bk, cls.gamificationd, cls.recommenderd, cls.privacyd):
            for svc in hmtest.DAEMONS[d.name]:
                cls.by_service[svc] = d
        cls.by_service["hospitality.marketing.v1.MarketingService"] = cls.recommenderd
        cls.gw = Gateway(cls.routes)
        cls.admin = hmtest.token("gw-admin", roles=("admin",))

    @classmethod
    def tearDownClass(cls):
        rc = {}
        if getattr(cls, "gw", None):
            rc["hm-gateway"] = cls.gw.stop()
        for d in (getattr(cls, "guestd", None), getattr(cls, "gamificationd", None),
                  getattr(cls, "recommenderd", None), getattr(cls, "privacyd", None)):
            if d is not None:
                rc[d.name] = d.stop()
                d.close()
        if getattr(cls, "stack", None):
            cls.stack.close()
        assert all(v == 0 for v in rc.values()), rc

    def call(self, method, path, body=None, token=None, **kw):
        return http(self.gw.addr, method, path, body,
                    token=self.admin if token is None else token, **kw)

    def assert_error(self, got, http_status, grpc_status):
        status, body, _ = got
        self.assertEqual(status, http_status, body)
        self.assertEqual(body["status"], grpc_status, body)
        self.assertTrue(body["message"], body)
        return body

    # -- seed 000: guest profile

    def create_guest(self, **profile):
        profile.setdefault("name", "Grace Hopper")
        profile.setdefault("email", "grace.%s@example.com" % uuid.uuid4().hex[:8])
        status, body, _ = self.call("POST", "/api/v1/guests", {"profile": profile})
        self.assertEqual(status, 200, body)
        return body["profile"]

    def test_guest_profile_round_trip(self):
        p = self.create_guest(name="Zoë Brontë", language="en-GB", time_zone="Europe/London")
        status, body, _ = self.call("GET", "/api/v1/guests/%s/profile" % p["guest_id"])
        self.assertEqual(status, 200, body)
        self.assertEqual(body["profile"]["name"], "Zoë Brontë")
        self.assertEqual(body["profile"]["email"], p["email"])
        self.assertEqual(body["profile"]["time_zone"], "Europe/London")

    def test_guest_status_mapping(self):
        p = self.create_guest()
        path = "/api/v1/guests/%s/profile" % p["guest_id"]
        # 401: no credentials, and a token signed with another key
        self.assert_error(self.call("GET", path, token=""), 401, "UNAUTHENTICATED")
        self.assert_error(self.call("GET", path, token=hmtest.token("x", secret="f" * 64)), 401,
                          "UNAUTHENTICATED")
        # 403: a guest reading another guest's profile; 200 for their own
        other = hmtest.token(str(uuid.uuid4()), roles=("guest",))
        self.assert_error(self.call("GET", path, token=other), 403, "PERMISSION_DENIED")
        own = hmtest.token(p["guest_id"], roles=("guest",))
        self.assertEqual(self.call("GET", path, token=own)[0], 200)
        # 404: a well-formed id nobody has
        self.assert_error(self.call("GET", "/api/v1/guests/%s/profile" % uuid.uuid4()), 404,
                          "NOT_FOUND")
        # 400: a malformed id, and invalid input naming the field
        self.assert_error(self.call("GET", "/api/v1/guests/nope/profile"), 400, "INVALID_ARGUMENT")
        body = self.assert_error(
            self.call("POST", "/api/v1/guests", {"profile": {"name": "x", "email": "not-an-email"}}),
            400, "INVALID_ARGUMENT")
        self.assertIn("email", body["message"])
        info = [d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
        self.assertEqual(info[0]["reason"], "VALIDATION_FAILED", body)
        self.assertEqual(info[0]["metadata"]["field"], "profile.email", body)
        # 409: a second guest with the same email
        self.assert_error(self.call("POST", "/api/v1/guests", {"profile": {
            "name": "Twin", "email": p["email"]}}), 409, "ALREADY_EXISTS")
        # a body that is not JSON never reaches the daemon: 400 from the transcoder
        req = urllib.request.Request("http://%s/api/v1/guests" % self.gw.addr, data=b"{nope",
                                     method="POST", headers={"Authorization": "Bearer " + self.admin})
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(cm.exception.code, 400)

    def test_me_profile_is_not_get_profile(self):
        """GET /api/v1/guests/me/profile binds GetMyProfile; the template
        /api/v1/guests/{guest_id}/profile must not take it with guest_id "me"."""
        def get_profile_calls():
            return sum(v for (name, labels), v in self.guestd.metrics().items()
                       if name == "hm_grpc_requests_total"
                       and dict(labels).get("method", "").endswith("GuestService/GetProfile"))

        before = get_profile_calls()
        g = str(uuid.uuid4())
        status, body, _ = self.call("GET", "/api/v1/guests/me/profile",
                                    token=hmtest.token(g, roles=("guest",)))
        # and the template still routes real ids to GetProfile (counted after the status is
        # sent: wait for it, which also lets a wrongly routed "me" call show up)
        self.call("GET", "/api/v1/guests/%s/profile" % uuid.uuid4())
        until = time.monotonic() + 3
        while get_profile_calls() < before + 1 and time.monotonic() < until:
            time.sleep(0.05)
        time.sleep(0.2)
        self.assertEqual(get_profile_calls(), before + 1, (status, body))

    def test_request_id_passes_both_ways(self):
        rid = "req-" + uuid.uuid4().hex
        status, body, hdrs = self.call("GET", "/api/v1/guests/%s/profile" % uuid.uuid4(),
                                       headers={"X-Request-Id": rid})
        self.assertEqual(status, 404, body)
        self.assertEqual(hdrs.get("X-Request-Id"), rid)

    # -- seed 004: bookings

    def booking_body(self, guest, venue, item, day, hour):
        return {"guest_id": guest, "guest_name": "Ada Lovelace", "guest_email": "ada@example.com",
                "guest_phone": "+44 20 7946 0000", "venue_id": venue,
                "venue_type": "VENUE_TYPE_RESTAURANT", "inventory_item_id": item,
                "booking_date": {"year": day.year, "month": day.month, "day": day.day},
                "booking_time": {"hours": hour, "minutes": 0}, "duration_minutes": 90,
                "party_size": 2}

    def test_booking_lifecycle(self):
        guest, venue = str(uuid.uuid4()), str(uuid.uuid4())
        day = datetime.date.today() + datetime.timedelta(days=40)
        item = "table-%s" % uuid.uuid4().hex[:6]
        status, body, _ = self.call("POST", "/api/v1/bookings",
                                    self.booking_body(guest, venue, item, day, 19))
        self.assertEqual(status, 201, body)  # seed 004: "Create booking (201 Created)"
        b = body["booking"]
        self.assertEqual(b["guest_id"], guest)
        self.assertEqual(b["party_size"], 2)
        bid, ref, version = b["booking_id"], b["booking_reference"], int(b["version"])

        status, body, _ = self.call("GET", "/api/v1/bookings/%s" % bid)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["booking"]["booking_reference"], ref)
        status, body, _ = self.call("GET", "/api/v1/bookings/reference/%s" % ref)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["booking"]["booking_id"], bid)
        self.assert_error(self.call("GET", "/api/v1/bookings/%s" % uuid.uuid4()), 404, "NOT_FOUND")

        # the same slot again: ALREADY_EXISTS -> 409 (seed: "409 Conflict")
        self.assert_error(self.call("POST", "/api/v1/bookings",
                                    self.booking_body(str(uuid.uuid4()), venue, item, day, 19)),
                          409, "ALREADY_EXISTS")
        # availability of the taken slot
        status, body, _ = self.call("POST", "/api/v1/bookings/availability/check", {
            "venue_id": venue, "venue_type": "VENUE_TYPE_RESTAURANT", "inventory_item_id": item,
            "booking_date": {"year": day.year, "month": day.month, "day": day.day},
            "booking_time": {"hours": 19, "minutes": 30}, "duration_minutes": 60,
            "party_size": 2})
        self.assertEqual(status, 200, body)
        self.assertFalse(body.get("available"), body)

        # PUT with the current version changes it; the same stale version again -> 409.
        # (grpc-gateway 1.6's jsonpb reads a FieldMask as the message {"paths": [...]}, not the
        # proto3 JSON string form; docs/operations.md says so.)
        upd = {"booking": {"party_size": 4}, "update_mask": {"paths": ["party_size"]},
               "expected_version": str(version)}
        status, body, _ = self.call("PUT", "/api/v1/bookings/%s" % bid, upd)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["booking"]["party_size"], 4)
        self.assert_error(self.call("PUT", "/api/v1/bookings/%s" % bid, upd), 409, "ABORTED")
        version = int(body["booking"]["version"])

        # an illegal transition (pending -> completed): FAILED_PRECONDITION -> 400
        self.assert_error(self.call("POST", "/api/v1/bookings/%s/status" % bid, {
            "status": "BOOKING_STATUS_COMPLETED", "expected_version": str(version),
            "reason": "skip ahead"}), 400, "FAILED_PRECONDITION")

        status, body, _ = self.call("GET", "/api/v1/bookings/guest/%s" % guest)
        self.assertEqual(status, 200, body)
        self.assertEqual([x["booking_id"] for x in body["bookings"]], [bid])

        status, body, _ = self.call("POST", "/api/v1/bookings/%s/cancel" % bid, {
            "expected_version": str(version), "reason": "changed plans"})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["booking"]["status"], "BOOKING_STATUS_CANCELLED")

    # -- rate limits and a daemon that is down

    def test_rate_limited_is_429_with_retry_after(self):
        guest = str(uuid.uuid4())
        tok = hmtest.token(guest, roles=("guest",))
        path = "/api/v1/gamification/guests/%s/stats" % guest
        seen = []
        for _ in range(8):
            status, body, hdrs = self.call("GET", path, token=tok)
            seen.append(status)
            if status == 429:
                self.assertEqual(body["status"], "RESOURCE_EXHAUSTED", body)
                self.assertGreaterEqual(int(hdrs.get("Retry-After", "0")), 1, dict(hdrs))
                break
        self.assertIn(429, seen, seen)
        self.assertEqual(seen.count(429), 1, seen)
        self.assertGreaterEqual(len(seen), 6, seen)  # five calls fit the bucket

    def test_daemon_down_is_503(self):
        # A second gateway whose recommenderd and privacyd addresses have nothing listening:
        # 503 UNAVAILABLE, quickly, not a hang or a 500.
        down = "127.0.0.1:%d" % dead_port()
        gw = Gateway(dict(self.routes, HM_RECOMMENDERD_ADDR=down, HM_PRIVACYD_ADDR=down))
        try:
            t0 = time.monotonic()
            for method, path, body in (
                    ("POST", "/api/v1/events/watch", {"guest_id": str(uuid.uuid4())}),
                    ("GET", "/api/v1/guests/%s/consent" % uuid.uuid4(), None)):
                self.assert_error(http(gw.addr, method, path, body, token=self.admin), 503,
                                  "UNAVAILABLE")
            self.assertLess(time.monotonic() - t0, 15)
            # the daemons that are up still answer through it
            self.assertEqual(http(gw.addr, "GET", "/api/v1/bookings/%s" % uuid.uuid4(),
                                  token=self.admin)[0], 404)
        finally:
            self.assertEqual(gw.stop(), 0)

    # -- every seed path reaches the RPC it maps to, in the daemon that serves it

    def test_every_seed_path_reaches_its_rpc(self):
        """For each REST path of the seeds (test_seed_paths.py's list and mapping), a request
        through the gateway must arrive at the mapped RPC of the daemon serving its service:
        that daemon's hm_grpc_requests_total for the method grows, or, for an RPC the daemon
        does not implement yet, the answer is 501 naming exactly that method. Any other 404 or
        a call counted elsewhere is a routing error."""
        import test_seed_paths as sp

        table = sp.bindings()
        guest = self.create_guest()["guest_id"]
        day = datetime.date.today() + datetime.timedelta(days=50)
        status, body, _ = self.call("POST", "/api/v1/bookings", self.booking_body(
            guest, str(uuid.uuid4()), "table-seed", day, 12))
        self.assertEqual(status, 201, body)
        values = {"guest_id": guest, "user_id": guest, "id": body["booking"]["booking_id"],
                  "reference": body["booking"]["booking_reference"],
                  "venue_id": str(uuid.uuid4())}
        checked = implemented = 0
        for verb, path, where in sp.seed_paths():
            if sp.NOT_GATEWAY.search(path):
                continue
            (rpc, _template), = table[(verb, sp.normalize(path))]
            svc, method = rpc.split("/")
            daemon = self.by_service[svc]
            full = "/%s/%s" % (svc, method)
            url = re.sub(r"\{([a-z_]+)\}", lambda m: values[m.group(1)], path)

            def count():
                return sum(v for (name, labels), v in daemon.metrics().items()
                           if name == "hm_grpc_requests_total" and dict(labels).get("method") == full)

            before = count()
            # "me" paths act on the caller: a guest token; the rest as admin
            token = hmtest.token(guest, roles=("guest",)) if "/me/" in path else None
            status, body, _ = self.call(verb, url, {} if verb in ("POST", "PUT", "PATCH") else None,
                                        token=token)
            msg = body.get("message", "") if isinstance(body, dict) else str(body)
            if status == 501 and msg == "unknown method " + full:
                pass  # reached the right daemon, which does not serve the RPC yet
            else:
                # the daemon counts a call after sending its status: allow it a moment
                until = time.monotonic() + 3
                while count() == before and time.monotonic() < until:
                    time.sleep(0.05)
                self.assertEqual(count(), before + 1, "%s %s (%s) -> %s: %s %s not counted by %s" % (
                    verb, url, where, full, status, msg, daemon.name))
                implemented += 1
            checked += 1
        print("seed paths through the gateway: %d, served by the mapped RPC: %d, "
              "reaching a daemon that does not implement it yet: %d" % (
                  checked, implemented, checked - implemented), file=sys.stderr)
        self.assertGreater(checked, 30)

    def test_unknown_path_is_404(self):
        status, body, _ = self.call("GET", "/api/v1/nothing-here")
        self.assertEqual(status, 404, body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
