"""
Integration: recommenderd against real Postgres and Redis (issue 7).

privacyd (GetConsent) and guestd (GetPersonalizationContext) are played by a STAND-IN in this
file (a Python gRPC server answering from dictionaries the tests set), so that consent and
preferences can be switched per test; recommenderd reaches it through HM_PRIVACYD_ADDR and
HM_GUESTD_ADDR as it would reach the real daemons.

- tracking: validation per field, batches with rejected events (and their dead letters),
  duplicates by event id;
- the bus: booking/order/purchase events stored exactly once however often delivered; bad
  ones dead-lettered;
- features: counts, average rating, decayed category affinities, refresh (published);
- each strategy (popularity, item-item, content, graph, hybrid) and its reasons;
- filters (category, price, exclusions, consumed, hidden, dismissed, dietary) and MMR;
- consent fallback (denied, privacyd unavailable, withdrawal dropping the cache), cold start;
- cache and history; feedback accounting per strategy and model version; cross-sell with
  offers (priority, expiry) and their conversion rates; the user graph; export and erasure.
"""
import concurrent.futures
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

SVC = "/hospitality.recommender.v1.RecommenderService/"


def uuid7():
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))


redis_cmd = hmtest.redis_cmd


class StandIn:
    """STAND-IN for privacyd's GetConsent and guestd's GetPersonalizationContext."""

    def __init__(self, pv, gs, common):
        grpc = hmtest.grpc_mod()
        self.pv, self.gs, self.common = pv, gs, common
        self.granted = set()   # guests with personalization consent
        self.down = set()      # guests for whom privacyd answers UNAVAILABLE
        self.prefs = {}        # guest -> (dietary restrictions, favourite categories)
        self.consent_calls = 0

        def get_consent(req, ctx):
            self.consent_calls += 1
            if req.guest_id in self.down:
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "privacyd stand-in: down")
            st = (common.CONSENT_STATUS_GRANTED if req.guest_id in self.granted
                  else common.CONSENT_STATUS_WITHDRAWN)
            return pv.GetConsentResponse(guest_id=req.guest_id, consents=[pv.ConsentRecord(
                guest_id=req.guest_id, purpose=common.CONSENT_PURPOSE_PERSONALIZATION,
                status=st)], version=1)

        def get_context(req, ctx):
            diet, fav = self.prefs.get(req.guest_id, ((), ()))
            return gs.GetPersonalizationContextResponse(context=gs.PersonalizationContext(
                guest_id=req.guest_id, personalization_allowed=True,
                preferences=gs.ExplicitPreferences(dietary_restrictions=list(diet),
                                                   favorite_categories=list(fav))))

        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("hospitality.privacy.v1.PrivacyService", {
                "GetConsent": grpc.unary_unary_rpc_method_handler(
                    get_consent, request_deserializer=pv.GetConsentRequest.FromString,
                    response_serializer=pv.GetConsentResponse.SerializeToString)}),
            grpc.method_handlers_generic_handler("hospitality.guest.v1.GuestService", {
                "GetPersonalizationContext": grpc.unary_unary_rpc_method_handler(
                    get_context,
                    request_deserializer=gs.GetPersonalizationContextRequest.FromString,
                    response_serializer=gs.GetPersonalizationContextResponse.SerializeToString)}),
        ))
        (self.port,) = hmtest.alloc_ports(1, "recommenderd-standin")
        self.server.add_insecure_port("127.0.0.1:%d" % self.port)
        self.server.start()
        self.addr = "127.0.0.1:%d" % self.port


class RecommenderBase(hmtest.TestCase):
    extra_env = {}

    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from google.protobuf import timestamp_pb2, wrappers_pb2
        from hospitality.common.v1 import common_pb2, domain_pb2
        from hospitality.events.v1 import (booking_events_pb2, events_pb2, external_events_pb2,
                                           guest_events_pb2, privacy_events_pb2)
        from hospitality.guest.v1 import guest_pb2
        from hospitality.privacy.v1 import privacy_pb2
        from hospitality.recommender.v1 import recommender_pb2 as rc

        cls.rc, cls.ev, cls.bev, cls.xev, cls.gev, cls.pev = (
            rc, events_pb2, booking_events_pb2, external_events_pb2, guest_events_pb2,
            privacy_events_pb2)
        cls.pv, cls.dm, cls.cm, cls.ts, cls.wr = (privacy_pb2, domain_pb2, common_pb2,
                                                   timestamp_pb2, wrappers_pb2)
        cls.standin = StandIn(privacy_pb2, guest_pb2, domain_pb2)
        name, exe = hmtest.daemon_under_test()
        env = {"HM_PRIVACYD_ADDR": cls.standin.addr, "HM_GUESTD_ADDR": cls.standin.addr,
               "HM_REC_CONSENT_TTL": "30s", "HM_REC_DIVERSITY": "0"}
        env.update(cls.extra_env)
        cls.d = hmtest.Daemon(name, exe, workers=4, env=env).start()
        cls.staff = hmtest.auth_md("staff-1", roles=("staff",))
        cls.admin = hmtest.auth_md()
        cls.svc = hmtest.auth_md("privacyd", roles=("service",))

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
        finally:
            cls.d.close()
            cls.standin.server.stop(0)

    # -- helpers

    def rpc(self, method, req, md=None, timeout=10):
        resp = getattr(self.rc, method + "Response")
        fn = self.d.channel().unary_unary(SVC + method,
                                          request_serializer=type(req).SerializeToString,
                                          response_deserializer=resp.FromString)
        return fn(req, metadata=md if md is not None else self.admin, timeout=timeout)

    def rpc_error(self, method, req, md=None):
        grpc = hmtest.grpc_mod()
        with self.assertRaises(grpc.RpcError) as cm:
            self.rpc(method, req, md)
        return cm.exception

    def sql(self, q):
        return hmtest.psql(q, dbname=self.d.db).strip()

    def wait(self, pred, what, timeout=15):
        until = time.time() + timeout
        while time.time() < until:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        self.fail("timed out waiting for " + what)

    def items(self, *items):
        self.rpc("UpsertItems", self.rc.UpsertItemsRequest(items=list(items)), self.staff)

    def item(self, item_id, category, name=None, price=None, tags=(), app=0, kind=0, diet=(),
             hidden=False, rel=(), attrs=None):
        it = self.rc.Item(item_id=item_id, name=name or item_id, category=category, tags=list(tags),
                          app=app, kind=kind, dietary_labels=list(diet), hidden=hidden,
                          attributes=attrs or {})
        if price is not None:
            it.price.amount_minor = price
            it.price.currency = "EUR"
        for t, other, w in rel:
            it.relations.add(type=t, item_id=other, weight=w)
        return it

    def event(self, guest, etype, item="", **kw):
        e = self.rc.TrackedEvent(guest_id=guest, type=etype, item_id=item, event_id=kw.pop(
            "event_id", str(uuid.uuid4())))
        if etype == self.rc.TRACKED_EVENT_TYPE_RATING:
            e.rating.rating = kw.pop("rating", 4.0)
        elif etype in (self.rc.TRACKED_EVENT_TYPE_PURCHASE, self.rc.TRACKED_EVENT_TYPE_BOOKING,
                       self.rc.TRACKED_EVENT_TYPE_ORDER):
            e.transaction.transaction_id = "t-" + uuid.uuid4().hex[:8]
            e.transaction.quantity = 1
        elif etype == self.rc.TRACKED_EVENT_TYPE_SEARCH:
            e.search.query = kw.pop("query", "spa")
        return e

    def track(self, *events):
        return self.rpc("TrackEvents", self.rc.TrackEventsRequest(events=list(events)),
                        self.staff)

    def buy(self, guest, *items):
        return self.track(*[self.event(guest, self.rc.TRACKED_EVENT_TYPE_PURCHASE, i)
                            for i in items])

    def recommend(self, guest, md=None, **kw):
        return self.rpc("Recommend", self.rc.RecommendRequest(guest_id=guest, **kw), md)

    def publish(self, etype, msg, guest, event_id=None):
        t = self.ts.Timestamp()
        t.GetCurrentTime()
        env = self.ev.Event(id=event_id or uuid7(), type=etype, source="test", subject=guest,
                            time=t, schema_version=1, payload=msg.SerializeToString())
        redis_cmd("XADD", "hm:events:" + etype.split(".")[0], "*", "id", env.id, "type", etype,
                  "env", env.SerializeToString())
        return env

    def personal_guest(self):
        g = str(uuid.uuid4())
        self.standin.granted.add(g)
        return g

    def dlq(self):
        return redis_cmd("XRANGE", "hm:dlq:recommenderd", "-", "+") or []


class Recommender(RecommenderBase):
    # -- tracking

    def test_track_validation_batches_and_dead_letters(self):
        g = str(uuid.uuid4())
        self.items(self.item("tv-1", "spa"))
        e = self.rpc_error("TrackRating", self.rc.TrackRatingRequest(
            guest_id=g, item_id="tv-1", rating=self.rc.RatingDetails(rating=6.0)))
        self.assertEqual(e.code().name, "INVALID_ARGUMENT")
        self.assertIn("0.5..5.0", e.details())
        e = self.rpc_error("TrackWatch", self.rc.TrackWatchRequest(
            guest_id="nope", item_id="tv-1"))
        self.assertEqual(e.code().name, "INVALID_ARGUMENT")
        e = self.rpc_error("TrackWatch", self.rc.TrackWatchRequest(
            guest_id=g, item_id="tv-1", watch=self.rc.WatchDetails(progress=1.5)))
        self.assertEqual(e.code().name, "INVALID_ARGUMENT")
        ok = self.rpc("TrackWatch", self.rc.TrackWatchRequest(
            guest_id=g, item_id="tv-1", watch=self.rc.WatchDetails(progress=0.5)),
            hmtest.auth_md(g, roles=("guest",)))
        self.assertEqual(ok.event.guest_id, g)
        self.assertTrue(ok.event.event_id)
        # a guest may not track for another guest
        e = self.rpc_error("TrackWatch", self.rc.TrackWatchRequest(
            guest_id=str(uuid.uuid4()), item_id="tv-1"), hmtest.auth_md(g, roles=("guest",)))
        self.assertEqual(e.code().name, "PERMISSION_DENIED")

        before = len(self.dlq())
        good = [self.event(g, self.rc.TRACKED_EVENT_TYPE_VIEW, "tv-1") for _ in range(3)]
        bad_item = self.event(g, self.rc.TRACKED_EVENT_TYPE_VIEW, "")
        bad_details = self.rc.TrackedEvent(guest_id=g, type=self.rc.TRACKED_EVENT_TYPE_VIEW,
                                           item_id="tv-1", rating=self.rc.RatingDetails(rating=3))
        r = self.track(good[0], bad_item, good[1], bad_details, good[2])
        self.assertEqual((r.accepted_count, r.duplicate_count), (3, 0))
        self.assertEqual([(x.index, x.field) for x in r.rejected], [(1, "item_id"),
                                                                   (3, "details")])
        dl = self.dlq()[before:]
        self.assertEqual(len(dl), 2)
        fields = dict(zip(dl[0][1][::2], dl[0][1][1::2]))
        self.assertIn(b"item_id", fields[b"error"])
        # the same batch again: all duplicates, nothing stored twice
        r = self.track(*good)
        self.assertEqual((r.accepted_count, r.duplicate_count), (0, 3))
        self.assertEqual(self.sql("SELECT count(*) FROM rc_events WHERE guest_id = '%s'" % g), "4")
        e = self.rpc_error("TrackEvents", self.rc.TrackEventsRequest(
            events=[self.event(g, 1, "tv-1") for _ in range(501)]), self.staff)
        self.assertEqual(e.code().name, "INVALID_ARGUMENT")

    def test_concurrent_batches_on_shared_items(self):
        # 6 batches at once, each of other guests, all on the same 15 items in random orders:
        # row locks are taken in a fixed order, so no batch fails on a deadlock
        import concurrent.futures as cf
        import random as rnd_mod
        p = "cc" + uuid.uuid4().hex[:4]
        ids = ["%s-%d" % (p, i) for i in range(15)]
        self.items(*[self.item(i, p + "_c", tags=["t1", "t2"]) for i in ids])
        rnd = rnd_mod.Random(5)
        batches = []
        for b in range(6):
            guests = [str(uuid.uuid4()) for _ in range(10)]
            evs = [self.event(g, self.rc.TRACKED_EVENT_TYPE_PURCHASE, rnd.choice(ids))
                   for g in guests for _ in range(15)]
            rnd.shuffle(evs)
            batches.append(evs)
        with cf.ThreadPoolExecutor(max_workers=6) as pool:
            res = list(pool.map(lambda evs: self.track(*evs), batches))
        self.assertEqual([r.accepted_count for r in res], [150] * 6)
        self.assertEqual(self.sql("SELECT sum(events) FROM rc_popularity WHERE item_id LIKE '%s-%%'"
                                  % p), "900")

    def test_bus_events_stored_exactly_once(self):
        g = str(uuid.uuid4())
        b = self.bev.BookingSummary(booking_id=str(uuid.uuid4()), guest_id=g,
                                    venue_id="venue-x", inventory_item_id="room-x")
        for _ in range(3):
            env = self.publish("booking.confirmed", self.bev.BookingConfirmed(booking=b), g)
        # the same envelope redelivered, and the completion of the same booking
        redis_cmd("XADD", "hm:events:booking", "*", "id", env.id, "type", env.type, "env",
                  env.SerializeToString())
        self.publish("booking.completed", self.bev.BookingCompleted(booking=b), g)
        order = self.xev.OrderCreated(order_id="o-1", guest_id=g, venue_id="v", items=[
            self.xev.LineItem(item_id="dish-a", quantity=1),
            self.xev.LineItem(item_id="dish-b", quantity=2)])
        oenv = self.publish("order.created", order, g)
        self.publish("order.created", order, g, event_id=oenv.id)
        before = len(self.dlq())
        self.publish("order.created", self.xev.OrderCreated(order_id="o-2", guest_id="bad",
                                                            items=[self.xev.LineItem(
                                                                item_id="x", quantity=1)]), "bad")
        q = "SELECT type || ':' || item_id FROM rc_events WHERE guest_id = '%s' ORDER BY 1" % g
        self.wait(lambda: self.sql(q).split() == ["7:room-x", "8:dish-a", "8:dish-b"],
                  "one booking and two order lines")
        self.wait(lambda: len(self.dlq()) > before, "the bad order dead-lettered")
        time.sleep(0.5)
        self.assertEqual(self.sql(q).split(), ["7:room-x", "8:dish-a", "8:dish-b"])

    # -- features

    def test_features_incremental_and_refresh(self):
        g = str(uuid.uuid4())
        self.items(self.item("f-spa1", "spa", tags=["calm"]), self.item("f-spa2", "spa"),
                   self.item("f-it1", "italian", attrs={"price_band": "2"}))
        self.track(self.event(g, self.rc.TRACKED_EVENT_TYPE_RATING, "f-spa1", rating=5),
                   self.event(g, self.rc.TRACKED_EVENT_TYPE_RATING, "f-it1", rating=3),
                   self.event(g, self.rc.TRACKED_EVENT_TYPE_PURCHASE, "f-spa2"),
                   self.event(g, self.rc.TRACKED_EVENT_TYPE_VIEW, "f-it1"))
        f = self.rpc("GetFeatures", self.rc.GetFeaturesRequest(guest_id=g),
                     hmtest.auth_md(g, roles=("guest",))).features
        counts = {c.type: c.count for c in f.event_counts}
        self.assertEqual(counts, {4: 2, 6: 1, 1: 1})
        self.assertAlmostEqual(f.average_rating, 4.0)
        self.assertEqual(f.rating_count, 2)
        self.assertEqual(f.category_affinities[0].key, "spa")
        self.assertAlmostEqual(f.category_affinities[0].score, 1.0)
        self.assertLess(f.category_affinities[1].score, 1.0)
        self.assertIn("tag:calm", [a.key for a in f.attribute_affinities])
        self.assertIn("price_band:2", [a.key for a in f.attribute_affinities])
        self.assertLess(f.recency_days, 0.01)
        r = self.rpc("RefreshFeatures", self.rc.RefreshFeaturesRequest(guest_id=g), self.staff)
        self.assertEqual(r.features.version, f.version + 1)
        self.assertEqual({c.type: c.count for c in r.features.event_counts}, counts)
        self.assertEqual(r.features.category_affinities[0].key, "spa")
        self.assertEqual(self.sql("SELECT count(*) FROM outbox WHERE event_type = "
                                  "'recommender.features.computed' AND subject = '%s'" % g), "1")
        # a new event is seen at once (the cached features are dropped)
        self.track(self.event(g, self.rc.TRACKED_EVENT_TYPE_VIEW, "f-it1"))
        f2 = self.rpc("GetFeatures", self.rc.GetFeaturesRequest(guest_id=g)).features
        self.assertEqual({c.type: c.count for c in f2.event_counts}[1], 2)

    # -- strategies

    def catalogue(self, prefix):
        """Four categories of five items (category "<prefix>_<name>", so that tests do not see
        each other's items); returns the ids by category name."""
        cats = {}
        its = []
        for c, app in (("spa", 3), ("italian", 3), ("wine", 2), ("books", 2)):
            for i in range(5):
                iid = "%s-%s%d" % (prefix, c, i)
                cats.setdefault(c, []).append(iid)
                its.append(self.item(iid, prefix + "_" + c, name="%s %s %d" % (prefix, c.title(), i),
                                     price=1000 * (i + 1), app=app, tags=[prefix + "_" + c + "-tag"]))
        self.items(*its)
        return cats

    def test_popularity_and_non_personalized_fallback(self):
        p = "pop" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        crowd = [str(uuid.uuid4()) for _ in range(6)]
        # wine-0 bought by everybody, books-1 by three, spa-2 by one
        for i, g in enumerate(crowd):
            self.buy(g, cats["wine"][0])
            if i < 3:
                self.buy(g, cats["books"][1])
        self.buy(crowd[0], cats["spa"][2])
        g = str(uuid.uuid4())  # no consent
        C = lambda *n: [p + "_" + x for x in n]
        r = self.recommend(g, limit=3, categories=C("wine", "books", "spa"))
        self.assertFalse(r.personalized)
        self.assertEqual(r.non_personalized_reason, self.rc.NON_PERSONALIZED_REASON_NO_CONSENT)
        self.assertEqual(r.strategy, self.dm.RECOMMENDATION_STRATEGY_POPULARITY)
        ids = [i.item_id for i in r.items]
        self.assertEqual(ids[:2], [cats["wine"][0], cats["books"][1]])
        self.assertEqual(r.items[0].reason, "popular in %s_wine" % p)
        # granted but no history: cold start
        cold = str(uuid.uuid4())
        self.standin.granted.add(cold)
        r = self.recommend(cold, limit=3, categories=C("wine", "books"))
        self.assertFalse(r.personalized)
        self.assertEqual(r.non_personalized_reason, self.rc.NON_PERSONALIZED_REASON_NO_HISTORY)
        # privacyd down: unknown consent is never consent
        down = str(uuid.uuid4())
        self.standin.down.add(down)
        self.buy(down, cats["wine"][1])
        r = self.recommend(down, limit=3)
        self.assertFalse(r.personalized)
        self.assertEqual(r.non_personalized_reason,
                         self.rc.NON_PERSONALIZED_REASON_DEPENDENCY_UNAVAILABLE)

    def test_content_graph_item_strategies_and_reasons(self):
        p = "st" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        S = self.dm
        # item-item without a model: the catalogue's SIMILAR_TO edges
        self.items(self.item(cats["spa"][0], p + "_spa", name="Spa Zero", tags=[p + "_spa-tag"], app=3,
                             price=1000, rel=[(2, cats["spa"][3], 0.9), (1, cats["wine"][4], 0.8)]))
        g = self.personal_guest()
        self.buy(g, cats["spa"][0])
        r = self.recommend(g, strategy=S.RECOMMENDATION_STRATEGY_ITEM_ITEM, limit=5)
        self.assertTrue(r.personalized)
        self.assertEqual(r.items[0].item_id, cats["spa"][3])
        self.assertEqual(r.items[0].reason, "because you bought Spa Zero")
        # content: the bought item's category (and tag) first; the bought item itself never
        r = self.recommend(g, strategy=S.RECOMMENDATION_STRATEGY_CONTENT, limit=4)
        got = [i.item_id for i in r.items]
        self.assertEqual(set(got), set(cats["spa"][1:]), got)
        self.assertIn(r.items[0].reason, ("matches your interest in %s_spa" % p,
                                          "matches your interest in %s_spa-tag" % p))
        # graph: co-purchasers' items, and the COMPLEMENTS edge
        peer = str(uuid.uuid4())
        self.buy(peer, cats["spa"][0], cats["books"][2])
        r = self.recommend(g, strategy=S.RECOMMENDATION_STRATEGY_GRAPH, limit=5)
        got = [i.item_id for i in r.items]
        self.assertIn(cats["books"][2], got)
        self.assertIn(cats["wine"][4], got)
        self.assertTrue(all(i.strategy == S.RECOMMENDATION_STRATEGY_GRAPH for i in r.items))
        self.assertIn("also chose this", r.items[0].reason)
        # interests from IngestUserData feed content
        g2 = self.personal_guest()
        self.rpc("IngestUserData", self.rc.IngestUserDataRequest(guest_id=g2, interests=[
            self.rc.UserInterest(interest_category="cuisine", interest_value=p + "_italian",
                                 confidence_score=0.9)]), self.staff)
        r = self.recommend(g2, strategy=S.RECOMMENDATION_STRATEGY_CONTENT, limit=5)
        self.assertTrue(r.personalized)
        self.assertEqual({i.item_id for i in r.items}, set(cats["italian"]))
        # hybrid: every strategy present, the blend's strongest named per item
        r = self.recommend(g, limit=8)
        self.assertEqual(r.strategy, S.RECOMMENDATION_STRATEGY_HYBRID)
        self.assertGreaterEqual(len({i.strategy for i in r.items}), 2)
        self.assertEqual([i.position for i in r.items], list(range(len(r.items))))
        self.assertEqual(sorted((i.score for i in r.items), reverse=True),
                         [i.score for i in r.items])

    def test_filters_dietary_and_diversity(self):
        p = "fl" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        g = self.personal_guest()
        self.buy(g, cats["wine"][0])
        crowd = [str(uuid.uuid4()) for _ in range(3)]
        for c in crowd:
            self.buy(c, *cats["wine"], *cats["books"][:2])
        S = self.dm.RECOMMENDATION_STRATEGY_POPULARITY
        C = lambda *n: [p + "_" + x for x in n]
        base = dict(strategy=S, limit=20, categories=C("wine", "books"))
        ids = [i.item_id for i in self.recommend(g, **base).items]
        self.assertNotIn(cats["wine"][0], ids)  # consumed
        ids = [i.item_id for i in self.recommend(g, include_consumed=True, **base).items]
        self.assertIn(cats["wine"][0], ids)
        r = self.recommend(g, exclude_item_ids=[cats["wine"][1]], **base)
        self.assertNotIn(cats["wine"][1], [i.item_id for i in r.items])
        r = self.recommend(g, min_price=self.cm.Money(amount_minor=2000, currency="EUR"),
                           max_price=self.cm.Money(amount_minor=3000, currency="EUR"), **base)
        self.assertTrue(r.items)
        self.assertTrue(all(i.item_id[-1] in "12" for i in r.items), [i.item_id for i in r.items])
        r = self.recommend(g, app=2, strategy=S, limit=30)
        self.assertTrue(r.items)
        self.assertTrue(all(i.category.split("_")[-1] in ("wine", "books") for i in r.items))
        e = self.rpc_error("Recommend", self.rc.RecommendRequest(guest_id=g, limit=101))
        self.assertEqual(e.code().name, "INVALID_ARGUMENT")
        # hidden items are never recommended
        self.items(self.item(cats["wine"][2], p + "_wine", hidden=True, app=2))
        ids = [i.item_id for i in self.recommend(g, **base).items]
        self.assertNotIn(cats["wine"][2], ids)
        # a dismissed item is gone from later lists
        r = self.recommend(g, **base)
        victim = r.items[0].item_id
        self.rpc("SubmitFeedback", self.rc.SubmitFeedbackRequest(feedback=self.rc.Feedback(
            recommendation_id=r.recommendation_id, guest_id=g, item_id=victim,
            type=self.dm.RECOMMENDATION_FEEDBACK_TYPE_DISMISS)), hmtest.auth_md(g, roles=("guest",)))
        ids = [i.item_id for i in self.recommend(g, **base).items]
        self.assertNotIn(victim, ids)
        # dietary restrictions exclude food lacking the label; favourite categories boost
        self.items(self.item(p + "-dish-v", p + "_food", kind=4, diet=["vegan"]),
                   self.item(p + "-dish-m", p + "_food", kind=4),
                   self.item(p + "-dish-g", p + "_food", kind=4, diet=["vegan", "gluten_free"]))
        for c in crowd:
            self.buy(c, p + "-dish-m", p + "-dish-m", p + "-dish-v", p + "-dish-g")
        self.standin.prefs[g] = (["vegan"], C("books"))
        redis_cmd("DEL", "hm:recommenderd:gen:" + g)
        ids = [i.item_id for i in self.recommend(g, strategy=S, categories=C("food"), limit=5).items]
        self.assertEqual(set(ids), {p + "-dish-v", p + "-dish-g"})
        r = self.recommend(g, strategy=S, categories=C("wine", "books"), limit=3)
        self.assertEqual(r.items[0].category, p + "_books")
        # MMR: with full diversity, the top 2 differ in category
        r = self.recommend(g, strategy=S, categories=C("wine", "books"), limit=2,
                           diversity=self.wr.DoubleValue(value=1.0))
        self.assertNotEqual(r.items[0].category, r.items[1].category)

    # -- consent, cache, history

    def test_cache_history_and_consent_withdrawal(self):
        p = "ca" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        g = self.personal_guest()
        self.buy(g, cats["spa"][0])
        r1 = self.recommend(g, limit=4)
        r2 = self.recommend(g, limit=4)
        self.assertTrue(r1.personalized)
        self.assertNotEqual(r1.recommendation_id, r2.recommendation_id)
        self.assertEqual([i.item_id for i in r1.items], [i.item_id for i in r2.items])
        self.assertEqual(r1.generated_at, r2.generated_at)  # served from the cache
        # the served lists are written in batches: the history-flush task writes them without
        # any read asking for them
        self.wait(lambda: self.sql("SELECT count(*) FROM rc_recommendations WHERE guest_id = "
                                   "'%s'" % g) == "2", "the queued lists written", timeout=3)
        h = self.rpc("ListRecommendationHistory", self.rc.ListRecommendationHistoryRequest(
            guest_id=g), hmtest.auth_md(g, roles=("guest",)))
        self.assertEqual([x.recommendation_id for x in h.records][:2],
                         [r2.recommendation_id, r1.recommendation_id])
        self.assertEqual(self.sql("SELECT count(*) FROM outbox WHERE event_type = "
                                  "'recommendation.generated' AND subject = '%s'" % g), "2")
        h = self.rpc("ListRecommendationHistory", self.rc.ListRecommendationHistoryRequest(
            guest_id=g, page=self.cm.PageRequest(page_size=1)))
        self.assertEqual(len(h.records), 1)
        self.assertTrue(h.page.next_page_token)
        # consent withdrawn: the event drops the cached consent and lists within a second
        self.standin.granted.discard(g)
        calls = self.standin.consent_calls
        self.publish("guest.consent.updated", self.pev.GuestConsentUpdated(guest_id=g, version=2), g)
        t0 = time.time()
        r = self.wait(lambda: (lambda x: x if not x.personalized else None)(
            self.recommend(g, limit=4)), "a non-personalized list", timeout=5)
        self.assertLess(time.time() - t0, 1.5)
        self.assertEqual(r.non_personalized_reason, self.rc.NON_PERSONALIZED_REASON_NO_CONSENT)
        self.assertGreater(self.standin.consent_calls, calls)
        # preferences changed: cached lists dropped (a new generation time)
        self.standin.granted.add(g)
        self.publish("guest.preferences.updated",
                     self.gev.GuestPreferencesUpdated(guest_id=g, version=3), g)
        r3 = self.wait(lambda: (lambda x: x if x.personalized else None)(
            self.recommend(g, limit=4)), "personalized again", timeout=5)
        self.assertNotEqual(r3.generated_at, r1.generated_at)
        # a new event drops the cache too
        self.buy(g, r3.items[0].item_id)
        r4 = self.recommend(g, limit=4)
        self.assertNotIn(r3.items[0].item_id, [i.item_id for i in r4.items])

    # -- feedback

    def test_feedback_accounting(self):
        p = "fb" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        g = self.personal_guest()
        self.buy(g, cats["spa"][0])
        r = self.recommend(g, strategy=self.dm.RECOMMENDATION_STRATEGY_CONTENT, limit=3)
        md = hmtest.auth_md(g, roles=("guest",))
        FT = self.dm
        fid = str(uuid.uuid4())
        for it in r.items:
            self.rpc("SubmitFeedback", self.rc.SubmitFeedbackRequest(feedback=self.rc.Feedback(
                recommendation_id=r.recommendation_id, guest_id=g, item_id=it.item_id,
                type=FT.RECOMMENDATION_FEEDBACK_TYPE_IMPRESSION, position=it.position)), md)
        first = self.rpc("SubmitFeedback", self.rc.SubmitFeedbackRequest(feedback=self.rc.Feedback(
            feedback_id=fid, recommendation_id=r.recommendation_id, guest_id=g,
            item_id=r.items[0].item_id, type=FT.RECOMMENDATION_FEEDBACK_TYPE_CLICK)), md).feedback
        again = self.rpc("SubmitFeedback", self.rc.SubmitFeedbackRequest(feedback=self.rc.Feedback(
            feedback_id=fid, recommendation_id=r.recommendation_id, guest_id=g,
            item_id=r.items[1].item_id, type=FT.RECOMMENDATION_FEEDBACK_TYPE_CONVERSION)),
            md).feedback
        self.assertEqual(again.item_id, first.item_id)  # the earlier one
        self.assertEqual(again.type, FT.RECOMMENDATION_FEEDBACK_TYPE_CLICK)
        self.rpc("SubmitFeedback", self.rc.SubmitFeedbackRequest(feedback=self.rc.Feedback(
            recommendation_id=r.recommendation_id, guest_id=g, item_id=r.items[0].item_id,
            type=FT.RECOMMENDATION_FEEDBACK_TYPE_CONVERSION)), md)
        e = self.rpc_error("SubmitFeedback", self.rc.SubmitFeedbackRequest(
            feedback=self.rc.Feedback(recommendation_id=r.recommendation_id, guest_id=g,
                                      item_id="not-in-list", type=1)), md)
        self.assertEqual(e.code().name, "INVALID_ARGUMENT")
        e = self.rpc_error("SubmitFeedback", self.rc.SubmitFeedbackRequest(
            feedback=self.rc.Feedback(recommendation_id=r.recommendation_id, guest_id=g,
                                      item_id=r.items[0].item_id, type=1)),
            hmtest.auth_md(str(uuid.uuid4()), roles=("guest",)))
        self.assertEqual(e.code().name, "PERMISSION_DENIED")
        mi = self.rpc("GetModelInfo", self.rc.GetModelInfoRequest(), self.staff).model
        st = [s for s in mi.online_stats
              if s.strategy == self.dm.RECOMMENDATION_STRATEGY_CONTENT]
        self.assertEqual(len(st), 1)
        # impressions, clicks, conversions over the whole database: at least ours
        self.assertGreaterEqual(st[0].stats.impressions, 3)
        mine = self.sql("SELECT count(*) FILTER (WHERE type = 1) || ',' || count(*) FILTER (WHERE "
                        "type = 2) || ',' || count(*) FILTER (WHERE type = 4) FROM rc_feedback "
                        "WHERE strategy = 4")
        self.assertEqual(mine, "%d,%d,%d" % (st[0].stats.impressions, st[0].stats.clicks,
                                             st[0].stats.conversions))
        self.assertAlmostEqual(st[0].click_through_rate, st[0].stats.clicks / st[0].stats.impressions)
        self.assertEqual(self.sql("SELECT count(*) FROM outbox WHERE event_type = "
                                  "'recommendation.clicked' AND subject = '%s'" % g), "1")
        self.assertEqual(self.sql("SELECT count(*) FROM outbox WHERE event_type = "
                                  "'recommender.feedback.recorded' AND subject = '%s'" % g), "5")

    # -- cross-sell

    def test_cross_sell_offers_and_conversion(self):
        p = "xs" + uuid.uuid4().hex[:4]
        room = p + "-room"
        self.items(self.item(room, "rooms", app=3, rel=[(1, p + "-wine", 0.9)]),
                   self.item(p + "-wine", "wine", app=2, name="Red Wine"),
                   self.item(p + "-book", "books", app=2),
                   self.item(p + "-spa", "spa", app=3))
        g = self.personal_guest()
        now = int(time.time())
        mk = lambda **kw: self.rpc("UpsertOffer", self.rc.UpsertOfferRequest(offer=self.rc.Offer(
            title=kw.pop("title"), source_app=3, target_app=2, active=True, **kw)), self.staff).offer
        low = mk(title="10% off wine", categories=["wine"], priority=1,
                 discount=self.rc.Discount(percent_off_bps=1000))
        high = mk(title="20% off wine", categories=["wine"], priority=5,
                  discount=self.rc.Discount(percent_off_bps=2000))
        expired = mk(title="old", item_ids=[p + "-book"], priority=9,
                     discount=self.rc.Discount(bonus_points=50),
                     valid_until=self.ts.Timestamp(seconds=now - 60))
        self.assertEqual(high.version, 1)
        r = self.rpc("RecommendCrossSell", self.rc.RecommendCrossSellRequest(
            guest_id=g, source_app=3, context_item_id=room, limit=5),
            hmtest.auth_md(g, roles=("guest",)))
        self.assertEqual(r.suggestions[0].item.item_id, p + "-wine")
        self.assertEqual(r.suggestions[0].item.reason, "goes well with %s" % room)
        self.assertEqual(r.suggestions[0].rule_id, "booking-to-marketplace")
        self.assertEqual(r.suggestions[0].offer.offer_id, high.offer_id)
        book = [s for s in r.suggestions if s.item.item_id == p + "-book"]
        self.assertFalse(book and book[0].HasField("offer"))  # the expired offer is not served
        self.assertTrue(all(s.target_app == 2 for s in r.suggestions))
        self.assertEqual(self.sql("SELECT count(*) FROM outbox WHERE event_type = "
                                  "'recommendation.cross_sell.suggested' AND subject = '%s'" % g),
                         "1")
        md = hmtest.auth_md(g, roles=("guest",))
        for t in (1, 1, 2, 4):
            self.rpc("SubmitFeedback", self.rc.SubmitFeedbackRequest(feedback=self.rc.Feedback(
                recommendation_id=r.recommendation_id, guest_id=g, item_id=p + "-wine", type=t,
                offer_id=high.offer_id)), md)
        offers = self.rpc("ListOffers", self.rc.ListOffersRequest(source_app=3), self.staff).offers
        ids = [o.offer_id for o in offers]
        self.assertNotIn(expired.offer_id, ids)
        self.assertLess(ids.index(high.offer_id), ids.index(low.offer_id))
        h = [o for o in offers if o.offer_id == high.offer_id][0]
        self.assertEqual((h.stats.impressions, h.stats.clicks, h.stats.conversions), (2, 1, 1))
        self.assertAlmostEqual(h.stats.conversion_rate, 0.5)
        self.assertEqual(self.sql("SELECT rule_id FROM rc_feedback WHERE offer_id = '%s' LIMIT 1"
                                  % high.offer_id), "booking-to-marketplace")
        all_ = self.rpc("ListOffers", self.rc.ListOffersRequest(include_inactive=True),
                        self.staff).offers
        self.assertIn(expired.offer_id, [o.offer_id for o in all_])
        e = self.rpc_error("UpsertOffer", self.rc.UpsertOfferRequest(
            offer=self.rc.Offer(offer_id=high.offer_id, title="x", source_app=3, target_app=2,
                                discount=self.rc.Discount(percent_off_bps=5)),
            expected_version=7), self.staff)
        self.assertEqual(e.code().name, "ABORTED")
        e = self.rpc_error("UpsertOffer", self.rc.UpsertOfferRequest(
            offer=self.rc.Offer(title="x", source_app=3, target_app=3,
                                discount=self.rc.Discount(percent_off_bps=5))), self.staff)
        self.assertEqual(e.code().name, "INVALID_ARGUMENT")

    # -- graph

    def test_user_graph_and_similar_users(self):
        p = "gr" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        a, b, c = (str(uuid.uuid4()) for _ in range(3))
        self.buy(a, cats["spa"][0], cats["wine"][0])
        self.buy(b, cats["spa"][0], cats["wine"][0])
        self.buy(c, cats["spa"][0])
        interest = self.rc.UserInterest(interest_category="cuisine", interest_value="thai",
                                        confidence_score=0.7)
        for g in (a, b):
            self.rpc("IngestUserData", self.rc.IngestUserDataRequest(
                guest_id=g, interests=[interest]), self.staff)
        r = self.rpc("GetUserGraph", self.rc.GetUserGraphRequest(guest_id=a, depth=2), self.staff)
        self.assertEqual(r.nodes[0].node_id, a)
        kinds = {(e.source_id, e.target_id, e.type) for e in r.edges}
        self.assertIn((a, cats["spa"][0], self.rc.GRAPH_EDGE_TYPE_PURCHASED), kinds)
        self.assertIn((a, "interest:cuisine:thai", self.rc.GRAPH_EDGE_TYPE_INTERESTED_IN), kinds)
        self.assertIn((cats["spa"][0], "category:%s_spa" % p, self.rc.GRAPH_EDGE_TYPE_BELONGS_TO),
                      kinds)
        labels = {n.node_id: n.label for n in r.nodes}
        self.assertEqual(labels[cats["spa"][0]], "%s Spa 0" % p)
        self.assertEqual([u.guest_id for u in r.similar_users][:2], [b, c])
        self.assertAlmostEqual(r.similar_users[0].similarity, 1.0)
        self.assertEqual(list(r.similar_users[0].common_interests), ["cuisine:thai"])
        e = self.rpc_error("GetUserGraph", self.rc.GetUserGraphRequest(guest_id=a),
                           hmtest.auth_md(a, roles=("guest",)))
        self.assertEqual(e.code().name, "PERMISSION_DENIED")

    def test_similar_items_and_ingest(self):
        p = "si" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        self.items(self.item(cats["wine"][0], p + "_wine", name="Wine Zero", app=2, price=1000,
                             rel=[(2, cats["wine"][3], 0.9), (1, cats["books"][1], 0.7)]))
        r = self.rpc("RecommendSimilarItems", self.rc.RecommendSimilarItemsRequest(
            item_id=cats["wine"][0], limit=3))
        self.assertEqual(r.items[0].item_id, cats["wine"][3])
        self.assertEqual(r.items[0].reason, "similar to Wine Zero")
        self.assertTrue(all(i.category == p + "_wine" for i in r.items))
        r = self.rpc("RecommendSimilarItems", self.rc.RecommendSimilarItemsRequest(
            item_id=cats["wine"][0], relation=self.rc.ITEM_RELATION_TYPE_COMPLEMENTS))
        self.assertEqual(r.items[0].item_id, cats["books"][1])
        e = self.rpc_error("RecommendSimilarItems", self.rc.RecommendSimilarItemsRequest(
            item_id="nope-" + p))
        self.assertEqual(e.code().name, "NOT_FOUND")
        g = str(uuid.uuid4())
        req = self.rc.IngestUserDataRequest(guest_id=g, purchases=[
            self.rc.Purchase(purchase_id="p1", item_id=p + "-new", category="gadgets"),
            self.rc.Purchase(purchase_id="p2", item_id=cats["wine"][1])])
        r = self.rpc("IngestUserData", req, self.staff)
        self.assertEqual((r.purchases_ingested, r.purchases_duplicate), (2, 0))
        r = self.rpc("IngestUserData", req, self.staff)
        self.assertEqual((r.purchases_ingested, r.purchases_duplicate), (0, 2))
        it = self.rpc("GetItem", self.rc.GetItemRequest(item_id=p + "-new")).item
        self.assertEqual(it.category, "gadgets")
        it = self.rpc("GetItem", self.rc.GetItemRequest(item_id=cats["wine"][0])).item
        self.assertEqual(it.name, "Wine Zero")
        self.assertEqual([(x.type, x.item_id) for x in it.relations],
                         [(1, cats["books"][1]), (2, cats["wine"][3])])
        self.assertEqual((it.price.amount_minor, it.price.currency), (1000, "EUR"))

    # -- data subject

    def test_export_and_erase(self):
        p = "ds" + uuid.uuid4().hex[:4]
        cats = self.catalogue(p)
        g = self.personal_guest()
        self.buy(g, cats["spa"][0])
        self.rpc("IngestUserData", self.rc.IngestUserDataRequest(guest_id=g, interests=[
            self.rc.UserInterest(interest_category="c", interest_value="v",
                                 confidence_score=0.5)]), self.staff)
        r = self.recommend(g, limit=3)
        self.rpc("SubmitFeedback", self.rc.SubmitFeedbackRequest(feedback=self.rc.Feedback(
            recommendation_id=r.recommendation_id, guest_id=g, item_id=r.items[0].item_id,
            type=1)), self.staff)
        self.rpc("GetFeatures", self.rc.GetFeaturesRequest(guest_id=g))
        ch = self.d.channel()
        exp = ch.unary_unary("/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
                             request_serializer=self.pv.ExportSubjectDataRequest.SerializeToString,
                             response_deserializer=self.pv.ExportSubjectDataResponse.FromString)
        era = ch.unary_unary("/hospitality.privacy.v1.DataSubjectService/EraseSubjectData",
                             request_serializer=self.pv.EraseSubjectDataRequest.SerializeToString,
                             response_deserializer=self.pv.EraseSubjectDataResponse.FromString)
        x = exp(self.pv.ExportSubjectDataRequest(request_id="e1", guest_id=g), metadata=self.svc,
                timeout=10)
        sec = {s.section: s.record_count for s in x.sections}
        self.assertEqual(sec["tracked_events"], 1)
        self.assertEqual(sec["interests"], 1)
        self.assertEqual(sec["recommendation_history"], 1)
        self.assertEqual(sec["feedback"], 1)
        self.assertEqual(sec["features"], 1)
        self.assertIn(cats["spa"][0], [s for s in x.sections
                                       if s.section == "tracked_events"][0].records_json)
        keys = lambda: [k for k in (redis_cmd("KEYS", "hm:recommenderd:*") or [])
                        if g.encode() in k]
        self.assertTrue(keys())
        rc = era(self.pv.EraseSubjectDataRequest(request_id="e1", guest_id=g), metadata=self.svc,
                 timeout=10).receipt
        self.assertEqual({c.section: c.count for c in rc.deleted}, {
            "tracked_events": 1, "interests": 1, "features": 1, "affinities":
            int(rc.deleted[3].count), "recommendation_history": 1, "feedback": 1})
        self.assertGreater(rc.deleted[3].count, 0)
        for t in ("rc_events", "rc_interests", "rc_features", "rc_affinity", "rc_recommendations",
                  "rc_feedback"):
            self.assertEqual(self.sql("SELECT count(*) FROM %s WHERE guest_id = '%s'" % (t, g)),
                             "0", t)
        self.assertEqual(keys(), [])
        self.assertEqual(self.sql("SELECT count(*) FROM rc_erased_guests WHERE guest_hash = "
                                  "encode(sha256('%s'::bytea), 'hex')" % g), "1")
        # no table names the guest any more (receipts and the erased list hold the hash)
        for t in ("rc_erasures", "rc_erased_guests"):
            self.assertEqual(self.sql("SELECT count(*) FROM %s t WHERE t::text LIKE '%%%s%%'"
                                      % (t, g)), "0", t)
        self.assertEqual(self.sql("SELECT count(*) FROM rc_erasures WHERE "
                                  "encode(receipt, 'escape') LIKE '%%%s%%'" % g), "0")
        again = era(self.pv.EraseSubjectDataRequest(request_id="e1", guest_id=g),
                    metadata=self.svc, timeout=10).receipt
        self.assertEqual(again.receipt_id, rc.receipt_id)
        x = exp(self.pv.ExportSubjectDataRequest(request_id="e2", guest_id=g), metadata=self.svc,
                timeout=10)
        self.assertEqual(sum(s.record_count for s in x.sections), 0)
        grpc = hmtest.grpc_mod()
        with self.assertRaises(grpc.RpcError) as cm:
            era(self.pv.EraseSubjectDataRequest(request_id="z", guest_id=g),
                metadata=hmtest.auth_md(g, roles=("guest",)), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)


if __name__ == "__main__":
    hmtest.main()
