"""
Integration: guestd's CreateGuest and GetProfile against real Postgres and Redis.

Checks what a caller relies on: the stored profile comes back as sent (normalized email and
phone), retries with an idempotency key create one guest, duplicates and bad fields get the
right code with the field named in ErrorInfo, personal data is never stored in plaintext, and
the daemon's own counters match the calls made.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

GUEST = "/hospitality.guest.v1.GuestService/"


class GuestdBase(hmtest.TestCase):
    """One guestd per test class, with helpers; holds no tests itself."""

    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from hospitality.guest.v1 import guest_pb2

        cls.pb = guest_pb2
        name, exe = hmtest.daemon_under_test()
        cls.d = hmtest.Daemon(name, exe).start()
        ch = cls.d.channel()
        grpc = hmtest.grpc_mod()
        cls.grpc = grpc
        raw_create = ch.unary_unary(GUEST + "CreateGuest",
                                    request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
                                    response_deserializer=guest_pb2.CreateGuestResponse.FromString)
        raw_get = ch.unary_unary(GUEST + "GetProfile",
                                 request_serializer=guest_pb2.GetProfileRequest.SerializeToString,
                                 response_deserializer=guest_pb2.GetProfileResponse.FromString)
        cls.raw_get = raw_get
        admin = hmtest.auth_md("staff-tool", roles=("admin",))

        # Calls carry an admin token unless a test passes its own metadata.
        cls.create_rpc = staticmethod(
            lambda req, timeout=5, metadata=None: raw_create(req, timeout=timeout,
                                                             metadata=metadata or admin))
        cls.get_rpc = staticmethod(
            lambda req, timeout=5, metadata=None: raw_get(req, timeout=timeout,
                                                          metadata=metadata or admin))

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.close()
        assert rc == 0, "guestd exited %s" % rc

    def create(self, **profile):
        key = profile.pop("idempotency_key", "")
        return self.create_rpc(self.pb.CreateGuestRequest(profile=self.pb.Profile(**profile),
                                                          idempotency_key=key), timeout=5)

    def assert_invalid(self, field, **profile):
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.create(**profile)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn(field, cm.exception.details())
        _, info, req = hmtest.error_details(cm.exception)
        self.assertEqual(info.reason, "VALIDATION_FAILED")
        self.assertEqual(info.domain, hmtest.ERROR_DOMAIN)
        self.assertEqual(info.metadata["field"], field)
        self.assertTrue(req.request_id)


class GuestProfileTest(GuestdBase):
    def test_create_then_get_round_trip(self):
        r = self.create(name="Zoë Brontë", email="  Zoe.B@Example.ORG ", phone="+44 (20) 7946-0958",
                        language="en-GB", time_zone="Europe/London", bio="tea & scones",
                        location=self.pb.Location(city="London", country_code="GB"))
        p = r.profile
        self.assertEqual(len(p.guest_id), 36)
        self.assertEqual(p.version, 1)
        self.assertEqual(p.status, self.pb.GUEST_STATUS_ACTIVE)
        self.assertEqual(p.email, "zoe.b@example.org")
        self.assertEqual(p.phone, "+442079460958")
        self.assertGreater(p.created_at.seconds, 1700000000)
        got = self.get_rpc(self.pb.GetProfileRequest(guest_id=p.guest_id), timeout=5).profile
        self.assertEqual(got, p)
        self.assertEqual(got.name, "Zoë Brontë")
        self.assertEqual(got.location.city, "London")

    def test_anonymous_guest_without_identifiers(self):
        p = self.create(language="fr").profile
        self.assertEqual(p.status, self.pb.GUEST_STATUS_ANONYMOUS)
        self.assertEqual(p.email, "")

    def test_idempotent_retry_creates_one_guest(self):
        a = self.create(email="retry@example.com", idempotency_key="create-retry-1").profile
        b = self.create(email="retry@example.com", idempotency_key="create-retry-1").profile
        self.assertEqual(a.guest_id, b.guest_id)
        n = hmtest.psql("SELECT count(*) FROM guests WHERE idempotency_key = 'create-retry-1'",
                        dbname=self.d.db).strip()
        self.assertEqual(n, "1")

    def test_duplicate_email_is_already_exists(self):
        self.create(email="dup@example.com")
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.create(email="DUP@example.com")  # same after normalization
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.ALREADY_EXISTS)
        _, info, _ = hmtest.error_details(cm.exception)
        self.assertEqual(info.metadata["field"], "profile.email")

    def test_validation_names_the_field(self):
        self.assert_invalid("profile.email", email="not-an-email")
        self.assert_invalid("profile.phone", phone="call me")
        self.assert_invalid("profile.location.country_code",
                            location=self.pb.Location(country_code="aut"))
        self.assert_invalid("profile.time_zone", time_zone="Europe/Vienna; DROP TABLE")
        self.assert_invalid("profile.name", name="x" * 201)
        loc = self.pb.Location()
        loc.point.latitude = 48.2  # in range: accepted
        self.create(location=loc)
        loc.point.latitude = 91
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.create(location=loc)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("profile.location.point", cm.exception.details())

    def test_invalid_utf8_is_refused_not_stored(self):
        # CreateGuestRequest{profile: Profile{name(4): b"\xff\xfe"}} encoded by hand: Python's
        # protobuf refuses to serialize invalid UTF-8 itself.
        name = bytes([0x22, 0x02, 0xFF, 0xFE])
        raw = bytes([0x0A, len(name)]) + name
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.create_rpc(raw, timeout=5)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("profile.name", cm.exception.details())

    def test_unrepackable_field_zero_is_refused(self):
        # Field number 0 in a two-byte tag: protobuf-c decodes it, but would re-pack it into
        # bytes no decoder accepts; the runtime refuses it before any handler sees it.
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.create_rpc(bytes([0x80, 0x00, 0x01]), timeout=5)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.INVALID_ARGUMENT)
        _, info, _ = hmtest.error_details(cm.exception)
        self.assertEqual(info.reason, "MALFORMED_REQUEST")

    def test_get_profile_errors(self):
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.get_rpc(self.pb.GetProfileRequest(guest_id="nope"), timeout=5)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.get_rpc(self.pb.GetProfileRequest(guest_id="00000000-0000-4000-8000-000000000000"),
                         timeout=5)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.NOT_FOUND)
        _, info, _ = hmtest.error_details(cm.exception)
        self.assertEqual(info.reason, "NOT_FOUND")

    def test_personal_data_is_encrypted_at_rest(self):
        p = self.create(name="Plaintext Person", email="secret.person@example.net",
                        phone="+15550100999").profile
        row = hmtest.psql("SELECT row_to_json(g)::text FROM guests g WHERE guest_id = '%s'"
                          % p.guest_id, dbname=self.d.db)
        self.assertIn(p.guest_id, row)
        for plain in ("secret.person", "example.net", "Plaintext", "5550100999"):
            self.assertNotIn(plain, row)

    def test_counters_match_calls(self):
        before = hmtest.metric(self.d.metrics(), "hm_grpc_requests_total",
                               method=GUEST + "GetProfile", code="NOT_FOUND") or 0
        for _ in range(3):
            with self.assertRaises(self.grpc.RpcError):
                self.get_rpc(self.pb.GetProfileRequest(guest_id="00000000-0000-4000-8000-00000000000a"),
                             timeout=5)
        # The worker counts a call after its status went out: allow it a moment.
        until = time.time() + 3
        while True:
            after = hmtest.metric(self.d.metrics(), "hm_grpc_requests_total",
                                  method=GUEST + "GetProfile", code="NOT_FOUND")
            if after - before >= 3 or time.time() > until:
                break
            time.sleep(0.05)
        self.assertEqual(after - before, 3)


class GuestProfileAuthTest(GuestdBase):
    """Authentication and authorization on a guest-owned method (issue 3's Done-when lines)."""

    def setUp(self):
        self.guest = self.create(email="owner-%s@example.com" % hmtest.random_hex(4)).profile

    def get_as(self, md, guest_id=None):
        return self.get_rpc(self.pb.GetProfileRequest(guest_id=guest_id or self.guest.guest_id),
                            metadata=md)

    def assert_code(self, code, md, guest_id=None, reason=None):
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.get_as(md, guest_id)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        if reason:
            _, info, _ = hmtest.error_details(cm.exception)
            self.assertEqual(info.reason, reason)
        return cm.exception

    def test_missing_bad_expired_credentials_are_unauthenticated(self):
        U = self.grpc.StatusCode.UNAUTHENTICATED
        e = self.assert_code(U, [("x-request-id", "no-token")], reason="UNAUTHENTICATED")
        self.assertIn("missing credentials", e.details())
        tok = hmtest.token(self.guest.guest_id, roles=("guest",))
        forged = tok[:-2] + ("AA" if not tok.endswith("AA") else "BB")
        self.assertIn("signature", self.assert_code(
            U, [("authorization", "Bearer " + forged)]).details())
        self.assertIn("expired", self.assert_code(
            U, hmtest.auth_md(self.guest.guest_id, roles=("guest",), ttl=-3600)).details())
        self.assertIn("signature", self.assert_code(
            U, [("authorization", "Bearer " + hmtest.token("x", secret="another-secret-" * 3))]
        ).details())
        self.assert_code(U, [("authorization", "Basic dXNlcjpwYXNz")])

    def test_guest_reads_own_profile_but_not_another(self):
        own = self.get_as(hmtest.auth_md(self.guest.guest_id, roles=("guest",))).profile
        self.assertEqual(own.guest_id, self.guest.guest_id)
        other = self.create(email="other-%s@example.com" % hmtest.random_hex(4)).profile
        e = self.assert_code(self.grpc.StatusCode.PERMISSION_DENIED,
                             hmtest.auth_md(self.guest.guest_id, roles=("guest",)),
                             guest_id=other.guest_id, reason="PERMISSION_DENIED")
        self.assertIn("guest_id", e.details())

    def test_admin_and_service_may_read_any_profile(self):
        for roles in (("admin",), ("service",)):
            p = self.get_as(hmtest.auth_md("caller-" + roles[0], roles=roles)).profile
            self.assertEqual(p.guest_id, self.guest.guest_id)

    def test_health_needs_no_credentials(self):
        self.assertEqual(self.d.health().check(), hmtest.SERVING)

    def test_auth_failures_are_counted(self):
        before = hmtest.metric(self.d.metrics(), "hm_auth_failures_total")
        for _ in range(2):
            with self.assertRaises(self.grpc.RpcError):
                self.get_as([("x-request-id", "anon")])
        self.assertEqual(hmtest.metric(self.d.metrics(), "hm_auth_failures_total") - before, 2)


if __name__ == "__main__":
    hmtest.main()
