"""
Integration: issue 3's authentication and authorization Done-when lines not covered by the
guestd suite (test_guestd_profile.py has missing, forged, expired tokens and guest A reading
guest B), against running daemons:

- wrong audience: guestd with HM_JWT_AUDIENCE refuses a token for another audience (and one
  without `aud`) with UNAUTHENTICATED, and serves the right one;
- staff of venue X reading venue Y: PERMISSION_DENIED on meshd's VenueEcho (policy
  venue_field "venue_id", staff only), venue X served; admin (and service) allowed for any
  venue; a guest is not staff.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import hmtest  # noqa: E402
import test_mesh_peers  # noqa: E402

GUEST = "/hospitality.guest.v1.GuestService/"
AUD = "hospitality-mesh"


class AudienceTest(hmtest.TestCase):

    def test_wrong_audience_is_unauthenticated(self):
        hmtest.project_protos()
        from hospitality.guest.v1 import guest_pb2

        grpc = hmtest.grpc_mod()
        d = hmtest.Daemon("guestd", hmtest.daemon_under_test()[1], label="aud-guestd",
                          env={"HM_JWT_AUDIENCE": AUD})
        try:
            d.start()
            get = d.channel().unary_unary(
                GUEST + "GetProfile", request_serializer=guest_pb2.GetProfileRequest.SerializeToString,
                response_deserializer=guest_pb2.GetProfileResponse.FromString)
            req = guest_pb2.GetProfileRequest(guest_id="00000000-0000-4000-8000-0000000000ab")
            for what, kw in (("another audience", {"aud": "billing"}), ("no audience", {})):
                with self.assertRaises(grpc.RpcError, msg=what) as cm:
                    get(req, timeout=5, metadata=hmtest.auth_md("aud-admin", **kw))
                self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED, what)
                self.assertIn("audience", cm.exception.details(), what)
            # The right audience passes authentication (the guest does not exist).
            with self.assertRaises(grpc.RpcError) as cm:
                get(req, timeout=5, metadata=hmtest.auth_md("aud-admin", aud=AUD))
            self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


class VenueTest(hmtest.TestCase):

    def test_staff_only_for_their_venues(self):
        pb = test_mesh_peers.mesh_pb()
        grpc = hmtest.grpc_mod()
        d = hmtest.Daemon("meshd", test_mesh_peers.meshd_exe(), label="venue-meshd")
        try:
            d.start()
            f = d.channel().unary_unary(
                "/hm.test.mesh.v1.MeshTest/VenueEcho",
                request_serializer=pb.EchoRequest.SerializeToString,
                response_deserializer=pb.EchoResponse.FromString)

            def call(md, venue):
                return f(pb.EchoRequest(text="v", venue_id=venue), timeout=5, metadata=md)

            staff_x = hmtest.auth_md("staff-1", roles=("staff",), venues=("venue-x",))
            self.assertEqual(call(staff_x, "venue-x").subject, "staff-1")
            for md, venue, who in ((staff_x, "venue-y", "staff of X reading Y"),
                                   (hmtest.auth_md("g-1", roles=("guest",)), "venue-x", "guest")):
                with self.assertRaises(grpc.RpcError, msg=who) as cm:
                    call(md, venue)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED, who)
            self.assertEqual(call(hmtest.auth_md("boss", roles=("admin",)), "venue-y").subject,
                             "boss")
            self.assertEqual(call(hmtest.auth_md("svc", roles=("service",)), "venue-y").subject,
                             "svc")
            m = d.metrics()
            self.assertEqual(hmtest.metric(m, "hm_auth_denials_total"), 2)
            self.assertEqual(d.stop(), 0)
        finally:
            d.close()


if __name__ == "__main__":
    hmtest.main()
