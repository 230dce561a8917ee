"""
Integration: guestd beyond CreateGuest - profile versions, the identity graph, preferences,
interactions, signals, segments, the personalization context, app profiles and the
data-subject interface - against real Postgres and Redis.

Each test checks what a caller relies on: success paths return what was stored, error paths
give the documented code naming the field, and the database agrees (rows moved by merges,
nothing half-written by a refused batch, no plaintext email anywhere).
"""
import concurrent.futures
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

GUEST = "/hospitality.guest.v1.GuestService/"
SUBJECT = "/hospitality.privacy.v1.DataSubjectService/"


class GuestModel(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from google.protobuf import field_mask_pb2, timestamp_pb2, wrappers_pb2
        from hospitality.common.v1 import common_pb2, domain_pb2
        from hospitality.events.v1 import external_events_pb2, privacy_events_pb2
        from hospitality.guest.v1 import guest_pb2
        from hospitality.privacy.v1 import privacy_pb2

        cls.pb, cls.dom, cls.com, cls.pv = guest_pb2, domain_pb2, common_pb2, privacy_pb2
        cls.ext, cls.pev = external_events_pb2, privacy_events_pb2
        cls.fm, cls.ts, cls.wr = field_mask_pb2, timestamp_pb2, wrappers_pb2
        cls.grpc = hmtest.grpc_mod()
        name, exe = hmtest.daemon_under_test()
        cls.d = hmtest.Daemon(name, exe, workers=4).start()
        cls.admin = hmtest.auth_md()
        cls.staff = hmtest.auth_md("staff-7", roles=("staff",))
        cls.service = hmtest.auth_md("privacyd", roles=("service",))

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
        finally:
            cls.d.close()

    # -- helpers

    def rpc(self, method, req, md=None, svc=GUEST, mod=None):
        name = method + "Response"
        fn = self.d.channel().unary_unary(
            svc + method, request_serializer=type(req).SerializeToString,
            response_deserializer=getattr(mod or self.pb, name).FromString)
        return fn(req, metadata=md if md is not None else self.admin, timeout=15)

    def code_of(self, fn, *a, **kw):
        with self.assertRaises(self.grpc.RpcError) as cm:
            fn(*a, **kw)
        return cm.exception.code(), cm.exception.details()

    def sql(self, q):
        return hmtest.psql(q, dbname=self.d.db).strip()

    def ident(self, t, v, app=0, verified=False):
        return self.pb.Identifier(type=t, value=v, app=app, verified=verified)

    def email(self, v, verified=False):
        return self.ident(self.pb.IDENTIFIER_TYPE_EMAIL, v, verified=verified)

    def session(self, v):
        return self.ident(self.pb.IDENTIFIER_TYPE_ANONYMOUS_SESSION_ID, v)

    def new_guest(self, **profile):
        return self.rpc("CreateGuest", self.pb.CreateGuestRequest(
            profile=self.pb.Profile(**profile))).profile

    def resolve(self, *ids, create=True, app=0):
        return self.rpc("ResolveIdentity", self.pb.ResolveIdentityRequest(
            identifiers=list(ids), create_if_missing=create, app=app))

    def interaction(self, guest, itype, key="", **kw):
        return self.rpc("RecordInteraction", self.pb.RecordInteractionRequest(
            guest_id=guest, interaction=self.pb.Interaction(type=itype, **kw),
            idempotency_key=key)).interaction

    def consent(self, guest, purpose, status, version):
        msg = self.pev.GuestConsentUpdated(guest_id=guest, version=version, changed=[
            self.pev.ConsentState(purpose=purpose, status=status)])
        hmtest.publish_event("guest.consent.updated", msg, guest, source="privacyd")

    def wait(self, pred, what, timeout=15):
        until = time.time() + timeout
        while time.time() < until:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        self.fail("timed out waiting for " + what)

    def outbox_types(self, guest):
        return self.sql("SELECT string_agg(event_type, ',' ORDER BY id) FROM outbox WHERE subject = '%s'"
                        % guest).split(",")

    # -- profiles

    def test_update_profile_versions_history_and_conflicts(self):
        p = self.new_guest(name="Ana", email="ana.v@example.com")
        mask = self.fm.FieldMask(paths=["name", "location.city"])
        up = self.rpc("UpdateProfile", self.pb.UpdateProfileRequest(
            guest_id=p.guest_id, profile=self.pb.Profile(name="Ana María",
                                                         location=self.pb.Location(city="Graz")),
            update_mask=mask, expected_version=1)).profile
        self.assertEqual((up.version, up.name, up.location.city, up.email),
                         (2, "Ana María", "Graz", "ana.v@example.com"))
        code, msg = self.code_of(self.rpc, "UpdateProfile", self.pb.UpdateProfileRequest(
            guest_id=p.guest_id, profile=self.pb.Profile(name="x"), update_mask=mask,
            expected_version=1))
        self.assertEqual(code, self.grpc.StatusCode.ABORTED)
        self.assertIn("expected_version", msg)
        code, msg = self.code_of(self.rpc, "UpdateProfile", self.pb.UpdateProfileRequest(
            guest_id=p.guest_id, profile=self.pb.Profile(version=9),
            update_mask=self.fm.FieldMask(paths=["version"]), expected_version=2))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("version", msg)
        hist = self.rpc("ListProfileHistory", self.pb.ListProfileHistoryRequest(
            guest_id=p.guest_id)).versions
        self.assertEqual([v.profile.version for v in hist], [2, 1])
        self.assertEqual(sorted(hist[0].changed_fields.paths), ["location.city", "name"])
        self.assertEqual(hist[1].profile.name, "Ana")
        self.assertIn("guest.profile.updated", self.outbox_types(p.guest_id))

    def test_my_profile_self_access_and_staff_read_audit(self):
        p = self.new_guest(name="Bo", email="bo.me@example.com")
        other = self.new_guest(name="Cy")
        mine = hmtest.auth_md(p.guest_id, roles=("guest",))
        self.assertEqual(self.rpc("GetMyProfile", self.pb.GetMyProfileRequest(), md=mine)
                         .profile.email, "bo.me@example.com")
        code, _ = self.code_of(self.rpc, "GetProfile",
                               self.pb.GetProfileRequest(guest_id=other.guest_id), md=mine)
        self.assertEqual(code, self.grpc.StatusCode.PERMISSION_DENIED)
        before = int(self.sql("SELECT count(*) FROM pii_access_log WHERE guest_id = '%s'"
                              % p.guest_id))
        self.rpc("GetProfile", self.pb.GetProfileRequest(guest_id=p.guest_id), md=self.staff)
        rows = self.sql("SELECT actor_id || ':' || method FROM pii_access_log WHERE guest_id = "
                        "'%s' ORDER BY id" % p.guest_id).splitlines()
        self.assertEqual(len(rows), before + 1)
        self.assertEqual(rows[-1], "staff-7:GetProfile")

    # -- identity

    def test_anonymous_browsing_then_sign_up_merges(self):
        sess = "sess-" + uuid.uuid4().hex
        anon = self.resolve(self.session(sess))
        self.assertTrue(anon.created)
        self.assertEqual(anon.profile.status, self.pb.GUEST_STATUS_ANONYMOUS)
        self.interaction(anon.guest_id, self.dom.INTERACTION_TYPE_VIEW, venue_id="v-anon",
                         category="italian")
        self.rpc("UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=anon.guest_id, explicit_preferences=self.pb.ExplicitPreferences(
                dietary_restrictions=["vegan"])))
        mail = "signup-%s@example.com" % uuid.uuid4().hex[:8]
        known = self.new_guest(name="Dee", email=mail)
        r = self.resolve(self.session(sess), self.email(mail))
        self.assertFalse(r.created)
        self.assertEqual(r.guest_id, known.guest_id)
        self.assertEqual(len(r.merges), 1)
        m = r.merges[0]
        self.assertEqual(m.rule_id, "anonymous_login")
        self.assertEqual(list(m.merged_guest_ids), [anon.guest_id])
        self.assertEqual(m.interactions_moved, 1)
        self.assertEqual({(e.type, e.value) for e in m.evidence},
                         {(self.pb.IDENTIFIER_TYPE_EMAIL, mail),
                          (self.pb.IDENTIFIER_TYPE_ANONYMOUS_SESSION_ID, sess)})
        old = self.rpc("GetProfile", self.pb.GetProfileRequest(guest_id=anon.guest_id)).profile
        self.assertEqual(old.status, self.pb.GUEST_STATUS_MERGED)
        self.assertEqual(old.merged_into_guest_id, known.guest_id)
        prefs = self.rpc("GetPreferences", self.pb.GetPreferencesRequest(guest_id=known.guest_id))
        self.assertEqual(list(prefs.preferences.explicit_preferences.dietary_restrictions),
                         ["vegan"])
        ix = self.rpc("ListInteractions", self.pb.ListInteractionsRequest(
            guest_id=known.guest_id)).interactions
        self.assertEqual([i.venue_id for i in ix], ["v-anon"])
        self.assertIn("guest.profile.merged", self.outbox_types(known.guest_id))
        ex = self.rpc("ExplainIdentity", self.pb.ExplainIdentityRequest(
            first=self.email(mail), second=self.session(sess)))
        self.assertTrue(ex.same_guest)
        self.assertEqual(ex.guest_id, known.guest_id)
        self.assertIn("anonymous_login", [l.rule_id for l in ex.path])
        self.assertIn("anonymous_login", ex.explanation)

    def test_sign_up_of_a_new_person_activates_the_anonymous_profile(self):
        sess = "sess-" + uuid.uuid4().hex
        anon = self.resolve(self.session(sess))
        mail = "new-%s@Example.com" % uuid.uuid4().hex[:8]
        r = self.resolve(self.session(sess), self.email(mail))
        self.assertEqual(r.guest_id, anon.guest_id)
        self.assertEqual(r.profile.status, self.pb.GUEST_STATUS_ACTIVE)
        self.assertEqual(r.profile.email, mail.lower())
        self.assertEqual(len(r.merges), 0)

    def test_blocked_values_and_limits(self):
        code, msg = self.code_of(self.resolve, self.email("null"))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("placeholder", msg)
        for bad in ["anonymous", "00000000-0000-0000-0000-000000000000", "undefined", " "]:
            r = self.resolve(self.session("ok-" + uuid.uuid4().hex), self.session(bad))
            self.assertEqual([x.value for x in r.rejected], [bad], bad)
        # one app user id per app: two accounts are two people, never merged
        a = self.resolve(self.ident(self.pb.IDENTIFIER_TYPE_APP_USER_ID, "u-" + uuid.uuid4().hex,
                                    app=self.dom.APP_WEB))
        b_id = "u-" + uuid.uuid4().hex
        b = self.resolve(self.ident(self.pb.IDENTIFIER_TYPE_APP_USER_ID, b_id,
                                    app=self.dom.APP_WEB))
        self.assertNotEqual(a.guest_id, b.guest_id)
        a_ids = self.rpc("LinkIdentity", self.pb.LinkIdentityRequest(
            guest_id=a.guest_id, identifier=self.email("lim-%s@example.com" % uuid.uuid4().hex[:6]))
        ).identifiers
        mail = [i.value for i in a_ids if i.type == self.pb.IDENTIFIER_TYPE_EMAIL][0]
        # the strongest identifier (the app user id) decides the guest; the email stays with
        # the other account instead of merging two accounts of one app
        r = self.resolve(self.email(mail), self.ident(self.pb.IDENTIFIER_TYPE_APP_USER_ID, b_id,
                                                      app=self.dom.APP_WEB))
        self.assertEqual(r.guest_id, b.guest_id)
        self.assertEqual(len(r.merges), 0)
        self.assertEqual([x.value for x in r.rejected], [mail])
        # at most 5 emails
        g = self.new_guest()
        for i in range(5):
            self.rpc("LinkIdentity", self.pb.LinkIdentityRequest(
                guest_id=g.guest_id, identifier=self.email("five%d-%s@example.com" % (i, g.guest_id[:6]))))
        code, msg = self.code_of(self.rpc, "LinkIdentity", self.pb.LinkIdentityRequest(
            guest_id=g.guest_id, identifier=self.email("six-%s@example.com" % g.guest_id[:6])))
        self.assertEqual(code, self.grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("limit", msg)

    def test_link_identity_takes_only_what_it_may(self):
        mail = "taken-%s@example.com" % uuid.uuid4().hex[:8]
        owner = self.new_guest(name="Owner", email=mail)
        other = self.new_guest(name="Other")
        code, _ = self.code_of(self.rpc, "LinkIdentity", self.pb.LinkIdentityRequest(
            guest_id=other.guest_id, identifier=self.email(mail)))
        self.assertEqual(code, self.grpc.StatusCode.ALREADY_EXISTS)
        r = self.rpc("LinkIdentity", self.pb.LinkIdentityRequest(
            guest_id=other.guest_id, identifier=self.email(mail, verified=True)))
        self.assertEqual(r.merge.rule_id, "verified_email_match")
        self.assertEqual(list(r.merge.merged_guest_ids), [owner.guest_id])
        self.assertIn(mail, [i.value for i in r.identifiers])
        code, _ = self.code_of(self.rpc, "LinkIdentity", self.pb.LinkIdentityRequest(
            guest_id=other.guest_id, identifier=self.ident(self.pb.IDENTIFIER_TYPE_APP_USER_ID, "x1")))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)  # app user id needs its app

    def test_merge_guests_idempotent_and_concurrent_merges_consistent(self):
        a, b = self.new_guest(name="A"), self.new_guest(name="B", bio="from b")
        key = uuid.uuid4().hex
        req = self.pb.MergeGuestsRequest(guest_id=a.guest_id, source_guest_ids=[b.guest_id],
                                         reason="duplicate account", idempotency_key=key)
        m1 = self.rpc("MergeGuests", req, md=self.staff)
        m2 = self.rpc("MergeGuests", req, md=self.staff)
        self.assertEqual(m1.merge.merge_id, m2.merge.merge_id)
        self.assertEqual(m1.merge.rule_id, "manual")
        self.assertEqual(m1.profile.bio, "from b")  # empty fields filled from the merged profile
        code, _ = self.code_of(self.rpc, "MergeGuests", self.pb.MergeGuestsRequest(
            guest_id=a.guest_id, source_guest_ids=[a.guest_id]))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        code, _ = self.code_of(self.rpc, "MergeGuests", req,
                               md=hmtest.auth_md(a.guest_id, roles=("guest",)))
        self.assertEqual(code, self.grpc.StatusCode.PERMISSION_DENIED)
        # Opposite merges of the same two profiles at once: one wins, the other is refused,
        # and the data is consistent either way.
        for _ in range(3):
            x, y = self.new_guest(name="X"), self.new_guest(name="Y")
            for g in (x, y):
                self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_VIEW, venue_id="v")

            def merge(into, src):
                try:
                    return self.rpc("MergeGuests", self.pb.MergeGuestsRequest(
                        guest_id=into, source_guest_ids=[src]), md=self.staff).merge.merge_id
                except self.grpc.RpcError as e:
                    return e.code()

            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                f1 = ex.submit(merge, x.guest_id, y.guest_id)
                f2 = ex.submit(merge, y.guest_id, x.guest_id)
                outcomes = [f1.result(), f2.result()]
            wins = [o for o in outcomes if isinstance(o, str)]
            self.assertEqual(len(wins), 1, outcomes)
            self.assertIn(self.grpc.StatusCode.FAILED_PRECONDITION, outcomes)
            rows = self.sql("SELECT status, coalesce(merged_into::text, '-') FROM guests WHERE "
                            "guest_id IN ('%s', '%s') ORDER BY status" % (x.guest_id, y.guest_id))
            st = [r.split("|") for r in rows.splitlines()]
            self.assertEqual([s[0] for s in st], ["1", "3"])  # one anonymous survivor, one merged
            survivor = x.guest_id if st[1][1] == x.guest_id else y.guest_id
            self.assertEqual(self.sql("SELECT count(*) FROM interactions WHERE guest_id = '%s'"
                                      % survivor), "2")

    # -- preferences

    def test_preferences_versions_mask_inheritance_and_as_of(self):
        g = self.new_guest(name="Pref")
        r1 = self.rpc("UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=g.guest_id, explicit_preferences=self.pb.ExplicitPreferences(
                dietary_restrictions=["vegetarian"], favorite_categories=["italian"],
                notification_settings=self.pb.NotificationSettings(
                    sms_enabled=self.wr.BoolValue(value=True))))).preferences
        self.assertEqual(r1.version, 1)
        t1 = self.ts.Timestamp()
        t1.GetCurrentTime()
        time.sleep(0.05)
        r2 = self.rpc("UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=g.guest_id, explicit_preferences=self.pb.ExplicitPreferences(
                favorite_categories=["italian", "spa"]),
            update_mask=self.fm.FieldMask(paths=["favorite_categories"]),
            expected_version=1)).preferences
        self.assertEqual(r2.version, 2)
        self.assertEqual(list(r2.explicit_preferences.dietary_restrictions), ["vegetarian"])
        code, _ = self.code_of(self.rpc, "UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=g.guest_id, explicit_preferences=self.pb.ExplicitPreferences(),
            expected_version=1))
        self.assertEqual(code, self.grpc.StatusCode.ABORTED)
        code, msg = self.code_of(self.rpc, "UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=g.guest_id, explicit_preferences=self.pb.ExplicitPreferences(
                dietary_restrictions=["carnivore"])))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("dietary_restrictions[0]", msg)
        # Inheritance: platform defaults, then the venue's brand, then the venue, then the guest.
        venue, brand = "venue-" + g.guest_id[:8], "brand-" + g.guest_id[:8]
        self.sql("INSERT INTO venue_brands VALUES ('%s', '%s');"
                 "INSERT INTO preference_defaults VALUES ('brand', '%s', "
                 "'{\"language\": \"de\", \"notification_settings.push_enabled\": false}');"
                 "INSERT INTO preference_defaults VALUES ('venue', '%s', "
                 "'{\"seating_preferences\": [\"terrace\"], \"language\": \"de-AT\"}')"
                 % (venue, brand, brand, venue))
        got = self.rpc("GetPreferences", self.pb.GetPreferencesRequest(guest_id=g.guest_id,
                                                                      venue_id=venue))
        eff = got.effective
        self.assertEqual(eff.language, "de-AT")
        self.assertEqual(list(eff.seating_preferences), ["terrace"])
        self.assertFalse(eff.notification_settings.push_enabled.value)
        self.assertTrue(eff.notification_settings.sms_enabled.value)
        self.assertTrue(eff.notification_settings.email_enabled.value)  # platform default
        prov = {p.field: (p.origin, p.origin_id) for p in got.provenance}
        self.assertEqual(prov["language"], (self.pb.PREFERENCE_ORIGIN_VENUE_DEFAULT, venue))
        self.assertEqual(prov["notification_settings.push_enabled"],
                         (self.pb.PREFERENCE_ORIGIN_BRAND_DEFAULT, brand))
        self.assertEqual(prov["notification_settings.sms_enabled"][0],
                         self.pb.PREFERENCE_ORIGIN_EXPLICIT)
        self.assertEqual(prov["notification_settings.email_enabled"][0],
                         self.pb.PREFERENCE_ORIGIN_PLATFORM_DEFAULT)
        old = self.rpc("GetPreferences", self.pb.GetPreferencesRequest(guest_id=g.guest_id,
                                                                      as_of=t1)).preferences
        self.assertEqual((old.version, list(old.explicit_preferences.favorite_categories)),
                         (1, ["italian"]))
        hist = self.rpc("ListPreferenceHistory", self.pb.ListPreferenceHistoryRequest(
            guest_id=g.guest_id)).versions
        self.assertEqual([v.preferences.version for v in hist], [2, 1])
        self.assertEqual(list(hist[0].changed_fields.paths), ["favorite_categories"])
        types = self.outbox_types(g.guest_id)
        self.assertEqual(types.count("guest.preferences.updated"), 2)
        self.assertIn("guest.preferences.category.added", types)

    # -- interactions, signals, segments

    def test_interactions_idempotent_batch_atomic_and_stable_pages(self):
        g = self.new_guest(name="Ix")
        a = self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_SEARCH, key="k1",
                             search_query="sushi")
        b = self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_SEARCH, key="k1",
                             search_query="sushi")
        self.assertEqual(a.interaction_id, b.interaction_id)
        bad = [self.pb.Interaction(type=self.dom.INTERACTION_TYPE_VIEW, venue_id="v1"),
               self.pb.Interaction(type=self.dom.INTERACTION_TYPE_RATING_SUBMITTED, rating=9)]
        code, msg = self.code_of(self.rpc, "RecordInteractions", self.pb.RecordInteractionsRequest(
            guest_id=g.guest_id, interactions=bad))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("interactions[1].rating", msg)
        self.assertEqual(self.sql("SELECT count(*) FROM interactions WHERE guest_id = '%s'"
                                  % g.guest_id), "1")
        base = int(time.time()) - 1000
        batch = [self.pb.Interaction(type=self.dom.INTERACTION_TYPE_VIEW, venue_id="v%d" % i,
                                     occurred_at=self.ts.Timestamp(seconds=base + i))
                 for i in range(25)]
        out = self.rpc("RecordInteractions", self.pb.RecordInteractionsRequest(
            guest_id=g.guest_id, interactions=batch, idempotency_key="b1")).interactions
        again = self.rpc("RecordInteractions", self.pb.RecordInteractionsRequest(
            guest_id=g.guest_id, interactions=batch, idempotency_key="b1")).interactions
        self.assertEqual([x.interaction_id for x in out], [x.interaction_id for x in again])
        seen, token = [], ""
        while True:
            page = self.rpc("ListInteractions", self.pb.ListInteractionsRequest(
                guest_id=g.guest_id, types=[self.dom.INTERACTION_TYPE_VIEW],
                page=self.com.PageRequest(page_size=10, page_token=token)))
            seen += [x.venue_id for x in page.interactions]
            # new interactions arriving between pages never shift the pages
            self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_VIEW, venue_id="late")
            token = page.page.next_page_token
            if not token:
                break
        self.assertEqual(seen, ["v%d" % i for i in range(24, -1, -1)])
        rng = self.rpc("ListInteractions", self.pb.ListInteractionsRequest(
            guest_id=g.guest_id, time_range=self.com.TimeRange(
                start_time=self.ts.Timestamp(seconds=base + 10),
                end_time=self.ts.Timestamp(seconds=base + 13)))).interactions
        self.assertEqual([x.venue_id for x in rng], ["v12", "v11", "v10"])
        self.assertEqual(self.outbox_types(g.guest_id).count("guest.interaction.batch.recorded"), 1)

    def test_signals_and_segments_follow_interactions(self):
        g = self.new_guest(name="Sig")
        eur = self.com.Money(amount_minor=60000, currency="EUR")
        for i in range(4):
            self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_BOOKING_CREATED,
                             venue_id="r%d" % i, category="restaurant",
                             metadata={"party_size": "4"})
        self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_BOOKING_COMPLETED,
                         category="restaurant", amount=eur)
        self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_BOOKING_COMPLETED, category="spa",
                         amount=eur)
        self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_BOOKING_CANCELLED, category="spa")
        s = self.rpc("GetBehaviorSignals", self.pb.GetBehaviorSignalsRequest(
            guest_id=g.guest_id)).signals
        self.assertEqual(s.bookings_completed, 2)
        self.assertEqual(s.bookings_cancelled, 1)
        self.assertAlmostEqual(s.cancellation_rate, 1 / 3, places=3)
        self.assertEqual(s.lifetime_spend.amount_minor, 120000)
        self.assertEqual(s.interactions_last_30_days, 7)
        self.assertEqual(s.average_party_size, 4)
        self.assertEqual(s.category_affinities[0].category, "restaurant")
        self.assertEqual(s.category_affinities[0].score, 1)
        self.assertLess(s.category_affinities[1].score, 1)
        segs = {x.segment_id: x for x in self.rpc("GetSegments", self.pb.GetSegmentsRequest(
            guest_id=g.guest_id)).segments}
        self.assertEqual(set(segs), {"new", "frequent_diner", "high_value", "family_traveller"})
        self.assertIn("dining_bookings_90_days = 4", segs["frequent_diner"].reason)
        self.assertIn("rule: >= 4", segs["frequent_diner"].reason)

    def test_bus_events_become_interactions_exactly_once(self):
        g = self.new_guest(name="Bus")
        order = self.ext.OrderCreated(order_id="o-" + uuid.uuid4().hex[:6], guest_id=g.guest_id,
                                      venue_id="v-bus", total=self.com.Money(
                                          amount_minor=2500, currency="EUR"),
                                      items=[self.ext.LineItem(item_id="pizza", category="italian",
                                                               quantity=1)])
        env = hmtest.publish_event("order.created", order, g.guest_id, source="order-service",
                                   times=3)
        self.wait(lambda: self.sql("SELECT count(*) FROM interactions WHERE source_event_id = '%s'"
                                   % env.id) == "1", "the order interaction")
        time.sleep(0.5)
        self.assertEqual(self.sql("SELECT count(*) FROM interactions WHERE guest_id = '%s'"
                                  % g.guest_id), "1")
        ix = self.rpc("ListInteractions", self.pb.ListInteractionsRequest(
            guest_id=g.guest_id)).interactions[0]
        self.assertEqual((ix.type, ix.item_id, ix.category, ix.amount.amount_minor,
                          ix.source_event_id),
                         (self.dom.INTERACTION_TYPE_ORDER_CREATED, "pizza", "italian", 2500,
                          env.id))

    # -- personalization context

    def test_context_is_consent_aware_cached_and_invalidated(self):
        g = self.new_guest(name="Ctx", language="it")
        self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_VIEW, category="italian")
        self.rpc("UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=g.guest_id, explicit_preferences=self.pb.ExplicitPreferences(
                dietary_restrictions=["gluten_free"])))

        def ctx():
            return self.rpc("GetPersonalizationContext", self.pb.GetPersonalizationContextRequest(
                guest_id=g.guest_id), md=self.service).context

        c = ctx()
        self.assertFalse(c.personalization_allowed)
        self.assertIn("signals", c.omitted)
        self.assertFalse(c.HasField("signals"))
        self.assertEqual(len(c.implicit_preferences), 0)
        self.assertEqual(list(c.preferences.dietary_restrictions), ["gluten_free"])
        self.assertEqual(c.profile.language, "it")
        P = self.dom.CONSENT_PURPOSE_PERSONALIZATION
        self.consent(g.guest_id, P, self.dom.CONSENT_STATUS_GRANTED, 1)
        c = self.wait(lambda: (lambda x: x if x.personalization_allowed else None)(ctx()),
                      "consent to reach the context")
        self.assertEqual(list(c.granted_purposes), [P])
        self.assertEqual(c.signals.category_affinities[0].category, "italian")
        self.assertEqual([(i.key, i.value) for i in c.implicit_preferences],
                         [("category", "italian")])
        feats = [f.feature for f in c.preference_vector]
        self.assertEqual(feats[0], "diet:gluten_free")
        self.assertIn("category:italian", feats)
        # served from the cache now: the same computed_at
        self.assertEqual(ctx().computed_at, c.computed_at)
        self.assertEqual(ctx().computed_at, c.computed_at)
        # any change shows at once
        self.rpc("UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=g.guest_id, explicit_preferences=self.pb.ExplicitPreferences(
                dietary_restrictions=["gluten_free", "vegan"])))
        self.assertEqual(list(ctx().preferences.dietary_restrictions), ["gluten_free", "vegan"])
        # a withdrawal too (older versions of the consent never undo a newer one)
        self.consent(g.guest_id, P, self.dom.CONSENT_STATUS_WITHDRAWN, 2)
        self.consent(g.guest_id, P, self.dom.CONSENT_STATUS_GRANTED, 1)
        self.wait(lambda: not ctx().personalization_allowed, "withdrawal to reach the context")
        time.sleep(0.3)
        self.assertFalse(ctx().personalization_allowed)

    # -- app profiles

    def test_app_profiles_map_sync_and_record_failures(self):
        g = self.new_guest(name="Short Name", email="apps-%s@example.com" % uuid.uuid4().hex[:6])
        up = self.rpc("UpdateAppProfile", self.pb.UpdateAppProfileRequest(
            guest_id=g.guest_id, app=self.dom.APP_MARKETPLACE,
            app_profile=self.pb.AppProfile(fields={"nickname": "Shorty", "shoe_size": "42"},
                                           preferences={"shipping": "express"}),
            update_mask=self.fm.FieldMask(paths=["fields.nickname", "fields.shoe_size",
                                                 "preferences.shipping"]),
            expected_version=0)).app_profile
        self.assertEqual(up.version, 1)
        self.assertEqual(up.sync_status, self.pb.SYNC_STATUS_SYNCED)
        self.assertEqual(up.fields["shoe_size"], "42")
        prof = self.rpc("GetProfile", self.pb.GetProfileRequest(guest_id=g.guest_id)).profile
        self.assertEqual(prof.name, "Shorty")  # mapped field flowed into the unified profile
        # a unified name too long for the marketplace: its sync fails with the reason, web syncs
        self.rpc("UpdateProfile", self.pb.UpdateProfileRequest(
            guest_id=g.guest_id, profile=self.pb.Profile(name="A Name Far Too Long For Nicknames"),
            update_mask=self.fm.FieldMask(paths=["name"]), expected_version=prof.version))
        res = {r.app: r for r in self.rpc("SyncAppProfiles", self.pb.SyncAppProfilesRequest(
            guest_id=g.guest_id, apps=[self.dom.APP_MARKETPLACE, self.dom.APP_WEB])).results}
        mk, web = res[self.dom.APP_MARKETPLACE], res[self.dom.APP_WEB]
        self.assertEqual(mk.sync_status, self.pb.SYNC_STATUS_FAILED)
        self.assertIn("nickname", mk.error)
        self.assertGreaterEqual(mk.app_profile.failed_attempts, 1)
        self.assertTrue(mk.app_profile.HasField("next_attempt_at"))
        self.assertEqual(web.sync_status, self.pb.SYNC_STATUS_SYNCED)
        self.assertEqual(web.app_profile.fields["display_name"], "A Name Far Too Long For Nicknames")
        # the background task retries; once the name fits, the marketplace syncs
        self.rpc("UpdateProfile", self.pb.UpdateProfileRequest(
            guest_id=g.guest_id, profile=self.pb.Profile(name="Fits"),
            update_mask=self.fm.FieldMask(paths=["name"]), expected_version=prof.version + 1))
        got = self.wait(lambda: (lambda a: a if a.sync_status == self.pb.SYNC_STATUS_SYNCED else None)(
            self.rpc("GetAppProfile", self.pb.GetAppProfileRequest(
                guest_id=g.guest_id, app=self.dom.APP_MARKETPLACE)).app_profile), "the retry")
        self.assertEqual(got.fields["nickname"], "Fits")
        self.assertIn("user.profile.synced", self.outbox_types(g.guest_id))
        # app fields are encrypted at rest like the profile
        self.assertEqual(self.sql("SELECT count(*) FROM guest_app_profiles WHERE guest_id = '%s' "
                                  "AND position('Fits'::bytea in fields_enc) > 0"
                                  % g.guest_id), "0")

    def test_app_profile_pull_and_errors(self):
        g = self.new_guest(name="Pull Me")
        code, _ = self.code_of(self.rpc, "GetAppProfile", self.pb.GetAppProfileRequest(
            guest_id=g.guest_id, app=self.dom.APP_BOOKING))
        self.assertEqual(code, self.grpc.StatusCode.NOT_FOUND)
        code, msg = self.code_of(self.rpc, "UpdateAppProfile", self.pb.UpdateAppProfileRequest(
            guest_id=g.guest_id, app=self.dom.APP_BOOKING, app_profile=self.pb.AppProfile(),
            update_mask=self.fm.FieldMask(paths=["fields.guest_name"]), expected_version=3))
        self.assertEqual(code, self.grpc.StatusCode.ABORTED)
        self.assertIn("does not exist yet", msg)
        code, msg = self.code_of(self.rpc, "UpdateAppProfile", self.pb.UpdateAppProfileRequest(
            guest_id=g.guest_id, app=self.dom.APP_BOOKING, app_profile=self.pb.AppProfile(),
            update_mask=self.fm.FieldMask(paths=["nickname"]), expected_version=0))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        code, msg = self.code_of(self.rpc, "UpdateAppProfile", self.pb.UpdateAppProfileRequest(
            guest_id=g.guest_id, app=self.dom.APP_BOOKING,
            app_profile=self.pb.AppProfile(fields={"contact_phone": "not a phone"}),
            update_mask=self.fm.FieldMask(paths=["fields.contact_phone"]), expected_version=0))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("phone", msg)
        # the booking app holds a phone the unified profile lacks: pulling takes it over
        self.rpc("UpdateAppProfile", self.pb.UpdateAppProfileRequest(
            guest_id=g.guest_id, app=self.dom.APP_BOOKING,
            app_profile=self.pb.AppProfile(fields={"guest_name": "Pull Me"}),
            update_mask=self.fm.FieldMask(paths=["fields.guest_name"]), expected_version=0))
        r = self.rpc("SyncAppProfiles", self.pb.SyncAppProfilesRequest(
            guest_id=g.guest_id, direction=self.pb.SYNC_DIRECTION_FROM_APP,
            source_app=self.dom.APP_BOOKING, apps=[self.dom.APP_WEB]))
        self.assertEqual(r.profile.name, "Pull Me")
        self.assertEqual(r.results[0].app, self.dom.APP_WEB)
        self.assertEqual(r.results[0].app_profile.fields["display_name"], "Pull Me")
        code, _ = self.code_of(self.rpc, "SyncAppProfiles", self.pb.SyncAppProfilesRequest(
            guest_id=g.guest_id, direction=self.pb.SYNC_DIRECTION_FROM_APP))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)
        code, _ = self.code_of(self.rpc, "SyncAppProfiles", self.pb.SyncAppProfilesRequest(
            guest_id=g.guest_id, direction=self.pb.SYNC_DIRECTION_FROM_APP,
            source_app=self.dom.APP_GAMIFICATION))
        self.assertEqual(code, self.grpc.StatusCode.NOT_FOUND)

    def test_unknown_guests_and_bad_ids(self):
        ghost = str(uuid.uuid4())
        for method, req in [
                ("GetProfile", self.pb.GetProfileRequest(guest_id=ghost)),
                ("GetPreferences", self.pb.GetPreferencesRequest(guest_id=ghost)),
                ("ListInteractions", self.pb.ListInteractionsRequest(guest_id=ghost)),
                ("GetSegments", self.pb.GetSegmentsRequest(guest_id=ghost)),
                ("GetBehaviorSignals", self.pb.GetBehaviorSignalsRequest(guest_id=ghost)),
                ("GetPersonalizationContext",
                 self.pb.GetPersonalizationContextRequest(guest_id=ghost)),
                ("RecordInteraction", self.pb.RecordInteractionRequest(
                    guest_id=ghost, interaction=self.pb.Interaction(
                        type=self.dom.INTERACTION_TYPE_VIEW))),
                ("MergeGuests", self.pb.MergeGuestsRequest(guest_id=ghost,
                                                           source_guest_ids=[str(uuid.uuid4())])),
        ]:
            code, msg = self.code_of(self.rpc, method, req)
            self.assertEqual(code, self.grpc.StatusCode.NOT_FOUND, method)
            with self.subTest(method=method):
                bad = type(req)()
                bad.CopyFrom(req)
                bad.guest_id = "42"
                code, msg = self.code_of(self.rpc, method, bad)
                self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT, method)
                self.assertIn("guest_id", msg)
        code, _ = self.code_of(self.rpc, "ResolveIdentity", self.pb.ResolveIdentityRequest(
            identifiers=[self.email("nobody-%s@example.com" % uuid.uuid4().hex[:6])]))
        self.assertEqual(code, self.grpc.StatusCode.NOT_FOUND)  # create_if_missing unset
        code, _ = self.code_of(self.rpc, "ListInteractions", self.pb.ListInteractionsRequest(
            guest_id=ghost, page=self.com.PageRequest(page_token="garbage")))
        self.assertEqual(code, self.grpc.StatusCode.INVALID_ARGUMENT)

    # -- privacy

    def test_export_then_erase_leaves_nothing(self):
        mail = "erase-%s@example.com" % uuid.uuid4().hex[:8]
        g = self.new_guest(name="Eve Erase", email=mail, phone="+43 660 1234567")
        sess = "sess-" + uuid.uuid4().hex
        anon = self.resolve(self.session(sess))
        self.resolve(self.session(sess), self.email(mail))  # merges anon into g
        self.interaction(g.guest_id, self.dom.INTERACTION_TYPE_VIEW, category="spa")
        self.rpc("UpdatePreferences", self.pb.UpdatePreferencesRequest(
            guest_id=g.guest_id, explicit_preferences=self.pb.ExplicitPreferences(
                favorite_categories=["spa"])))
        exp = self.rpc("ExportSubjectData", self.pv.ExportSubjectDataRequest(
            request_id="r1", guest_id=g.guest_id), md=self.service, svc=SUBJECT, mod=self.pv)
        sec = {s.section: s for s in exp.sections}
        self.assertEqual(exp.participant, "guestd")
        self.assertIn(mail, sec["profile"].records_json)
        self.assertIn("+436601234567", sec["profile"].records_json)
        for name in ("profile_history", "identifiers", "merges", "preferences", "interactions",
                     "behavior_signals", "segments"):
            self.assertGreater(sec[name].record_count, 0, name)
        code, _ = self.code_of(self.rpc, "ExportSubjectData", self.pv.ExportSubjectDataRequest(
            guest_id=g.guest_id), md=self.staff, svc=SUBJECT, mod=self.pv)
        self.assertEqual(code, self.grpc.StatusCode.PERMISSION_DENIED)
        req = self.pv.EraseSubjectDataRequest(request_id="erase-" + g.guest_id, guest_id=g.guest_id,
                                              mode=self.pv.ERASURE_MODE_DELETE)
        r1 = self.rpc("EraseSubjectData", req, md=self.service, svc=SUBJECT, mod=self.pv).receipt
        r2 = self.rpc("EraseSubjectData", req, md=self.service, svc=SUBJECT, mod=self.pv).receipt
        self.assertEqual(r1.receipt_id, r2.receipt_id)
        counts = {c.section: c.count for c in r1.deleted}
        self.assertEqual(counts["profile"], 2)  # the guest and the profile merged into it
        self.assertGreaterEqual(counts["interactions"], 1)
        for table in ("guests", "guest_identifiers", "guest_preferences", "interactions",
                      "guest_profile_versions", "guest_signals", "guest_segments",
                      "guest_category_affinity", "guest_implicit_preferences"):
            self.assertEqual(self.sql("SELECT count(*) FROM %s WHERE guest_id IN ('%s', '%s')"
                                      % (table, g.guest_id, anon.guest_id)), "0", table)
        again = self.rpc("ExportSubjectData", self.pv.ExportSubjectDataRequest(
            request_id="r2", guest_id=g.guest_id), md=self.service, svc=SUBJECT, mod=self.pv)
        self.assertEqual(sum(s.record_count for s in again.sections), 0)

    def test_database_never_holds_a_plaintext_email(self):
        mail = "plain-%s@example.com" % uuid.uuid4().hex[:8]
        g = self.new_guest(name="Plain Text", email=mail)
        self.resolve(self.email(mail), self.session("s-" + uuid.uuid4().hex))
        self.rpc("ExplainIdentity", self.pb.ExplainIdentityRequest(
            first=self.email(mail), second=self.email(mail)))
        self.rpc("UpdateAppProfile", self.pb.UpdateAppProfileRequest(
            guest_id=g.guest_id, app=self.dom.APP_WEB,
            app_profile=self.pb.AppProfile(fields={"email": mail}),
            update_mask=self.fm.FieldMask(paths=["fields.email"]), expected_version=0))
        env = hmtest.require_env()
        dump = subprocess.run(["pg_dump", "--data-only", env.conninfo(self.d.db)],
                              capture_output=True, timeout=60)
        self.assertEqual(dump.returncode, 0, dump.stderr[-500:])
        self.assertGreater(len(dump.stdout), 1000)
        self.assertNotIn(mail.encode(), dump.stdout)
        self.assertNotIn(b"Plain Text", dump.stdout)


if __name__ == "__main__":
    hmtest.main()
