"""
Integration: gamificationd against real Postgres and Redis (issue 9).

- the ledger invariant holds over random sequences of awards, redemptions, reversals, pending
  releases and expiries (property test driving the ledger's SQL functions directly, seeded);
- 32 concurrent redemptions against a balance covering 10 of them: exactly 10 succeed, no
  overdraft;
- the same booking.completed delivered 3 times awards once; completed then cancelled nets zero
  (the booking's points are reversed; the achievement it unlocked stays, as documented);
- leaderboards: ties ranked by who reached the score first; after Redis lost every board key
  they are rebuilt identical from Postgres;
- streaks in the guest's local day (time-zone edges, grace); weekly windows in the guest's
  time zone;
- awards idempotent by key, validation, authorization, export and erasure.
"""
import concurrent.futures
import os
import random
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

SVC = "/hospitality.gamification.v1.GamificationService/"


uuid7 = hmtest.uuid7
redis_cmd = hmtest.redis_cmd


class Gamification(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        hmtest.project_protos()
        from google.protobuf import timestamp_pb2
        from hospitality.events.v1 import booking_events_pb2, events_pb2
        from hospitality.gamification.v1 import gamification_pb2 as gm
        from hospitality.privacy.v1 import privacy_pb2

        cls.gm, cls.ev, cls.bev, cls.pv, cls.ts = (gm, events_pb2, booking_events_pb2,
                                                   privacy_pb2, timestamp_pb2)
        name, exe = hmtest.daemon_under_test()
        cls.d = hmtest.Daemon(name, exe, workers=4).start()
        cls.staff = hmtest.auth_md("staff-1", roles=("staff",))
        cls.admin = hmtest.auth_md()

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
        finally:
            cls.d.close()

    # -- helpers

    def rpc(self, method, req, resp_name, md=None):
        fn = self.d.channel().unary_unary(
            SVC + method, request_serializer=type(req).SerializeToString,
            response_deserializer=getattr(self.gm, resp_name).FromString)
        return fn(req, metadata=md if md is not None else self.admin, timeout=10)

    def award(self, guest, points, key=None, md=None, **kw):
        return self.rpc("AwardPoints", self.gm.AwardPointsRequest(
            guest_id=guest, points=points, source=self.gm.POINT_SOURCE_MANUAL,
            idempotency_key=key or uuid.uuid4().hex, reason="test", **kw), "AwardPointsResponse",
            md if md is not None else self.staff)

    def redeem(self, guest, points, key=None, md=None):
        return self.rpc("RedeemPoints", self.gm.RedeemPointsRequest(
            guest_id=guest, points=points, idempotency_key=key or uuid.uuid4().hex),
            "RedeemPointsResponse", md)

    def stats(self, guest):
        return self.rpc("GetStats", self.gm.GetStatsRequest(guest_id=guest),
                        "GetStatsResponse").stats

    def sql(self, q):
        return hmtest.psql(q, dbname=self.d.db).strip()

    def assert_ledger_balanced(self):
        # every transaction's entries sum to zero
        self.assertEqual(self.sql(
            "SELECT count(*) FROM (SELECT txn_id FROM gm_entries GROUP BY txn_id "
            "HAVING sum(amount) <> 0) x"), "0")
        # balances equal the sums of entries, per guest
        bad = self.sql("""
            SELECT count(*) FROM gm_accounts a LEFT JOIN LATERAL (
              SELECT coalesce(sum(amount) FILTER (WHERE account = 'available'), 0) av,
                     coalesce(sum(amount) FILTER (WHERE account = 'pending'), 0) pe,
                     coalesce(sum(amount) FILTER (WHERE account = 'redeemed'), 0) re,
                     coalesce(sum(amount) FILTER (WHERE account = 'expired'), 0) ex,
                     coalesce(sum(amount) FILTER (WHERE account = 'issuance'), 0) iss
                FROM gm_entries e WHERE e.guest_id = a.guest_id) s ON true
             WHERE a.available <> s.av OR a.pending <> s.pe OR a.redeemed <> s.re
                OR a.expired <> s.ex OR a.earned - a.reversed <> -s.iss""")
        self.assertEqual(bad, "0", "balances disagree with the ledger entries")

    def publish(self, etype, msg, guest, times=1):
        t = self.ts.Timestamp()
        t.GetCurrentTime()
        env = self.ev.Event(id=uuid7(), type=etype, source="bookingd", subject=guest, time=t,
                            schema_version=1, payload=msg.SerializeToString())
        stream = "hm:events:" + etype.split(".")[0]
        for _ in range(times):
            redis_cmd("XADD", stream, "*", "id", env.id, "type", etype, "env",
                      env.SerializeToString())
        return env

    def booking(self, guest, booking_id=None):
        return self.bev.BookingSummary(booking_id=booking_id or str(uuid.uuid4()),
                                       guest_id=guest, venue_id="venue-" + uuid.uuid4().hex[:6])

    def wait(self, pred, what, timeout=15):
        until = time.time() + timeout
        while time.time() < until:
            v = pred()
            if v:
                return v
            time.sleep(0.1)
        self.fail("timed out waiting for " + what)

    # -- the ledger

    def test_ledger_invariant_random_sequences(self):
        rnd = random.Random(int(os.environ.get("HM_TEST_SEED", "20261125")))
        guests = [str(uuid.uuid4()) for _ in range(5)]
        ops = []
        for i in range(400):
            g = rnd.choice(guests)
            k = rnd.random()
            if k < 0.4:
                pend = "now() + interval '1 hour'" if rnd.random() < 0.2 else "NULL"
                exp = "now() - interval '1 second'" if rnd.random() < 0.15 else "NULL"
                ops.append("SELECT gm_award('%s', %d, 12::smallint, 'p%d', '', '', 0, %s, %s, "
                           "'ref%d', NULL, 100);" % (g, rnd.randint(1, 500), i, pend, exp, i % 37))
            elif k < 0.7:
                # may be refused for want of points: that transaction then rolls back whole
                ops.append("SELECT gm_redeem('%s', %d, 'r%d', '', '');" % (
                    g, rnd.randint(1, 400), i))
            elif k < 0.85:
                ops.append("SELECT gm_reverse(txn_id, 'x') FROM gm_transactions WHERE type = 1 "
                           "AND ref = 'ref%d' LIMIT 1;" % rnd.randint(0, 36))
            elif k < 0.95:
                ops.append("SELECT gm_expire_due(100);")
            else:
                ops.append("UPDATE gm_lots SET available_at = now() WHERE state = 0 AND "
                           "guest_id = '%s'; SELECT gm_release_due(100);" % g)
        # each operation in its own transaction, as the daemon runs them; a refused one rolls
        # back alone (psql goes on after errors without ON_ERROR_STOP)
        env = hmtest.require_env()
        script = "\n".join("BEGIN;\n%s\nCOMMIT;" % o for o in ops)
        subprocess.run(["psql", "-X", "-q", "-h", env.pg_host, "-p", str(env.pg_port), "-U",
                        env.pg_user, "-d", self.d.db], input=script, capture_output=True,
                       text=True, timeout=120)
        self.assert_ledger_balanced()
        self.assertEqual(self.sql("SELECT count(*) FROM gm_accounts WHERE available < 0 AND "
                                  "reversed = 0"), "0", "overdraft without a reversal")
        self.assertEqual(self.sql("SELECT count(*) FROM gm_lots WHERE remaining < 0 OR "
                                  "remaining > points"), "0")
        n = int(self.sql("SELECT count(*) FROM gm_transactions"))
        self.assertGreater(n, 150, "the random sequence did too little")

    def test_concurrent_redemptions_never_overdraw(self):
        grpc = hmtest.grpc_mod()
        g = str(uuid.uuid4())
        self.award(g, 100)
        me = hmtest.auth_md(g, roles=("guest",))

        def one(i):
            try:
                self.redeem(g, 10, key="c%d" % i, md=me)
                return "ok"
            except grpc.RpcError as e:
                return e.code().name

        with concurrent.futures.ThreadPoolExecutor(32) as ex:
            results = list(ex.map(one, range(32)))
        self.assertEqual(results.count("ok"), 10, results)
        self.assertEqual(results.count("FAILED_PRECONDITION"), 22, results)
        b = self.stats(g).points
        self.assertEqual((b.available, b.redeemed, b.total_earned), (0, 100, 100))
        self.assert_ledger_balanced()

    def test_award_idempotent_and_validated(self):
        grpc = hmtest.grpc_mod()
        g = str(uuid.uuid4())
        a = self.award(g, 40, key="same")
        b = self.award(g, 40, key="same")
        self.assertEqual(a.transaction.transaction_id, b.transaction.transaction_id)
        self.assertEqual(self.stats(g).points.available, 40)
        self.assertEqual(sorted((e.account, e.amount) for e in a.transaction.entries),
                         [("available", 40), ("issuance", -40)])
        for kw, field in (({"points": 0}, "points"), ({"guest_id": "nope"}, "guest_id")):
            req = dict(guest=g, points=5)
            req.update({"guest" if k == "guest_id" else k: v for k, v in kw.items()})
            with self.assertRaises(grpc.RpcError) as cm:
                self.award(req["guest"], req["points"])
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(field, cm.exception.details())
        # guests do not award themselves, nor read another guest's stats
        with self.assertRaises(grpc.RpcError) as cm:
            self.award(g, 5, md=hmtest.auth_md(g, roles=("guest",)))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        with self.assertRaises(grpc.RpcError) as cm:
            self.rpc("GetStats", self.gm.GetStatsRequest(guest_id=g), "GetStatsResponse",
                     hmtest.auth_md(str(uuid.uuid4()), roles=("guest",)))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        with self.assertRaises(grpc.RpcError) as cm:
            self.redeem(g, 41)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("insufficient points", cm.exception.details())

    def test_pending_points_are_released(self):
        from google.protobuf import duration_pb2

        g = str(uuid.uuid4())
        self.award(g, 30, pending_period=duration_pb2.Duration(seconds=1))
        b = self.stats(g).points
        self.assertEqual((b.pending, b.available), (30, 0))
        self.wait(lambda: self.stats(g).points.available == 30, "the pending lot's release")
        self.assert_ledger_balanced()

    # -- events

    def test_event_three_times_awards_once_and_cancel_nets_zero(self):
        g = str(uuid.uuid4())
        bk = self.booking(g)
        self.publish("booking.completed", self.bev.BookingCompleted(booking=bk), g, times=3)
        ref = "booking:" + bk.booking_id
        self.wait(lambda: self.sql("SELECT count(*) FROM gm_transactions WHERE ref = '%s'" % ref)
                  == "1", "the booking's award")
        # first booking achievement (50) and the booking rule (100)
        self.wait(lambda: self.stats(g).points.available == 150, "150 points")
        time.sleep(0.5)  # the two duplicates are in the stream too
        self.assertEqual(self.sql("SELECT count(*) FROM gm_transactions WHERE ref = '%s'" % ref),
                         "1")
        self.assertEqual(self.sql("SELECT count(*) FROM gm_unlocks WHERE guest_id = '%s'" % g), "1")
        self.publish("booking.cancelled", self.bev.BookingCancelled(booking=bk), g)
        self.wait(lambda: self.stats(g).points.reversed == 100, "the reversal")
        net = self.sql("SELECT sum(CASE type WHEN 1 THEN points WHEN 3 THEN -points END) "
                       "FROM gm_transactions WHERE ref = '%s'" % ref)
        self.assertEqual(net, "0")
        st = self.stats(g)
        self.assertEqual(st.points.available, 50)  # the achievement's points stay
        self.assertEqual(st.achievements_unlocked, 1)
        self.assert_ledger_balanced()

    # -- leaderboards

    def board(self, window=None):
        req = self.gm.GetLeaderboardRequest(type=self.gm.LEADERBOARD_TYPE_POINTS,
                                            window=window or self.gm.LEADERBOARD_WINDOW_ALL_TIME)
        req.page.page_size = 100
        r = self.rpc("GetLeaderboard", req, "GetLeaderboardResponse")
        return [(e.rank, e.guest_id, e.score) for e in r.entries]

    def test_leaderboard_ties_and_rebuild(self):
        tag = 900000 + random.randint(0, 90000)
        gs = [str(uuid.uuid4()) for _ in range(4)]
        for g in gs:  # equal scores, reached in this order
            self.award(g, tag)
            time.sleep(0.01)
        # boards follow awards within the board task's period
        self.wait(lambda: len([e for e in self.board() if e[1] in gs]) == 4, "the board")
        top = [e for e in self.board() if e[1] in gs]
        self.assertEqual([e[1] for e in top], gs, "ties must rank who reached the score first")
        self.assertEqual(len({e[0] for e in top}), 4)
        r = self.rpc("GetRank", self.gm.GetRankRequest(
            guest_id=gs[2], type=self.gm.LEADERBOARD_TYPE_POINTS), "GetRankResponse")
        self.assertEqual(r.entry.rank, top[2][0])
        before = self.board()
        weekly = self.board(self.gm.LEADERBOARD_WINDOW_WEEKLY)
        # Redis loses everything of ours (FLUSHALL of this daemon's keys)
        cursor = b"0"
        while True:
            cursor, keys = redis_cmd("SCAN", cursor, "MATCH", "hm:gamificationd:lb:*", "COUNT",
                                     1000)
            if keys:
                redis_cmd("DEL", *keys)
            if cursor in (b"0", "0"):
                break
        self.assertEqual(self.board(), before)
        self.assertEqual(self.board(self.gm.LEADERBOARD_WINDOW_WEEKLY), weekly)

    def test_weekly_window_in_guest_time_zone(self):
        g = str(uuid.uuid4())
        tz = "Pacific/Kiritimati"  # UTC+14: its week starts 14 h before UTC's
        self.rpc("RecordActivity", self.gm.RecordActivityRequest(
            guest_id=g, activity=self.gm.ACTIVITY_TYPE_BOOKING, time_zone=tz),
            "RecordActivityResponse", self.admin)
        a = self.award(g, 70).transaction.transaction_id
        b = self.award(g, 30).transaction.transaction_id
        # move one award to a minute before the guest's local week began, the other just after
        start = "(date_trunc('week', now() AT TIME ZONE '%s') AT TIME ZONE '%s')" % (tz, tz)
        self.sql("UPDATE gm_transactions SET created_at = %s - interval '1 minute' "
                 "WHERE txn_id = '%s'" % (start, a))
        self.sql("UPDATE gm_transactions SET created_at = %s + interval '1 minute' "
                 "WHERE txn_id = '%s'" % (start, b))
        rows = dict(line.split("|") for line in self.sql(
            "SELECT board, score FROM gm_board_rows('%s')" % g).split("\n"))
        week = [k for k in rows if k.startswith("points:w:")][0]
        self.assertEqual(rows[week], "30")
        self.assertEqual(rows["points:all"], "100")
        # the label is the guest's local ISO week
        self.assertEqual(week, "points:w:" + self.sql(
            "SELECT to_char(now() AT TIME ZONE '%s', 'IYYY-\"W\"IW')" % tz))

    # -- streaks

    def activity(self, g, iso, tz):
        t = self.ts.Timestamp()
        t.FromJsonString(iso)
        return self.rpc("RecordActivity", self.gm.RecordActivityRequest(
            guest_id=g, activity=self.gm.ACTIVITY_TYPE_LOGIN, occurred_at=t, time_zone=tz),
            "RecordActivityResponse").streak

    def test_streaks_follow_the_local_day(self):
        g = str(uuid.uuid4())
        tz = "Pacific/Auckland"  # UTC+13 in November
        s = self.activity(g, "2026-11-01T11:30:00Z", tz)  # Nov 2, 00:30 local
        self.assertTrue(s.started)
        self.assertEqual((s.current_days, s.last_active_day.day), (1, 2))
        s = self.activity(g, "2026-11-02T10:00:00Z", tz)  # Nov 2, 23:00 local: same day
        self.assertEqual(s.current_days, 1)
        s = self.activity(g, "2026-11-02T11:30:00Z", tz)  # Nov 3, 00:30 local: next day
        self.assertEqual(s.current_days, 2)
        s = self.activity(g, "2026-11-04T12:00:00Z", tz)  # Nov 5: one day missed, grace
        self.assertEqual((s.current_days, s.grace_used), (3, True))
        s = self.activity(g, "2026-11-06T12:00:00Z", tz)  # Nov 7: missed again, restarts
        self.assertTrue(s.started)
        self.assertEqual((s.current_days, s.longest_days), (1, 3))
        # the daily login rule: 5 points per local day, capped at one award a day
        self.assertEqual(self.sql("SELECT count(*) FROM gm_transactions WHERE guest_id = '%s' "
                                  "AND rule_id = 'daily-login'" % g), "4")
        # a New York evening is the next UTC day but the same local day
        h = str(uuid.uuid4())
        self.activity(h, "2026-03-07T23:00:00Z", "America/New_York")  # Mar 7, 18:00 local
        s = self.activity(h, "2026-03-08T04:30:00Z", "America/New_York")  # Mar 7, 23:30 (EST)
        self.assertEqual((s.current_days, s.last_active_day.day), (1, 7))
        s = self.activity(h, "2026-03-08T06:30:00Z", "America/New_York")  # Mar 8, 01:30
        self.assertEqual((s.current_days, s.last_active_day.day), (2, 8))

    # -- rules, achievements, challenges

    def test_rules_versioned_and_capped(self):
        grpc = hmtest.grpc_mod()
        r = self.rpc("ListRules", self.gm.ListRulesRequest(event_type="order.created"),
                     "ListRulesResponse", self.staff)
        self.assertEqual([x.rule_id for x in r.rules], ["order-created"])
        rule = r.rules[0]
        rule.points, rule.daily_cap = 30, 40
        up = self.rpc("UpsertRule", self.gm.UpsertRuleRequest(
            rule=rule, expected_version=rule.version), "UpsertRuleResponse", self.staff).rule
        self.assertEqual((up.points, up.version), (30, rule.version + 1))
        with self.assertRaises(grpc.RpcError) as cm:  # stale version
            self.rpc("UpsertRule", self.gm.UpsertRuleRequest(
                rule=rule, expected_version=rule.version), "UpsertRuleResponse", self.staff)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.ABORTED)
        with self.assertRaises(grpc.RpcError) as cm:  # guests do not edit rules
            self.rpc("UpsertRule", self.gm.UpsertRuleRequest(rule=up, expected_version=2),
                     "UpsertRuleResponse", hmtest.auth_md(str(uuid.uuid4()), roles=("guest",)))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.sql("SELECT count(*) FROM gm_rule_versions WHERE rule_id = "
                                  "'order-created'"), str(up.version))
        # three orders on one local day: 30 + 10 (cap 40) + 0
        from hospitality.events.v1 import external_events_pb2 as ext

        g = str(uuid.uuid4())
        for i in range(3):
            self.publish("order.created", ext.OrderCreated(
                order_id="o%d-%s" % (i, g[:8]), guest_id=g, venue_id="v%d" % i), g)
        self.wait(lambda: self.sql("SELECT value FROM gm_counters WHERE guest_id = '%s' AND "
                                   "counter = 'orders'" % g) == "3", "three orders counted")
        self.assertEqual(self.sql("SELECT coalesce(sum(points), 0) FROM gm_transactions WHERE "
                                  "guest_id = '%s' AND rule_id = 'order-created'" % g), "40")
        up.points, up.daily_cap = 10, 50  # restore the defaults for the other tests
        self.rpc("UpsertRule", self.gm.UpsertRuleRequest(rule=up, expected_version=up.version),
                 "UpsertRuleResponse", self.staff)

    def test_challenge_winners_and_achievement_progress(self):
        cid = "weekly-test-" + uuid.uuid4().hex[:6]
        self.sql("INSERT INTO gm_challenges (challenge_id, name, period, starts_at, ends_at, "
                 "counter, target, reward_points, max_winners) VALUES ('%s', 'Two bookings', 1, "
                 "now() - interval '1 hour', now() + interval '1 day', 'bookings_completed', 2, "
                 "75, 1)" % cid)
        gs = [str(uuid.uuid4()) for _ in range(2)]
        for g in gs:
            p = self.rpc("JoinChallenge", self.gm.JoinChallengeRequest(
                challenge_id=cid, guest_id=g), "JoinChallengeResponse",
                hmtest.auth_md(g, roles=("guest",))).progress
            self.assertEqual((p.current, p.target, p.completed), (0, 2, False))
        for g in gs:  # the first guest completes first
            for _ in range(2):
                self.publish("booking.completed",
                             self.bev.BookingCompleted(booking=self.booking(g)), g)
            self.wait(lambda: self.rpc("GetChallengeProgress", self.gm.GetChallengeProgressRequest(
                guest_id=g, challenge_id=cid), "GetChallengeProgressResponse").progress.completed,
                "completion")
        p = [self.rpc("GetChallengeProgress", self.gm.GetChallengeProgressRequest(
            guest_id=g, challenge_id=cid), "GetChallengeProgressResponse").progress for g in gs]
        self.assertEqual([(x.rank, x.winner) for x in p], [(1, True), (2, False)])
        self.assertEqual(self.sql("SELECT count(*) FROM gm_transactions WHERE ref = "
                                  "'challenge:%s'" % cid), "1", "only the winner is rewarded")
        req = self.gm.GetLeaderboardRequest(type=self.gm.LEADERBOARD_TYPE_CHALLENGE,
                                            challenge_id=cid)
        board = self.rpc("GetLeaderboard", req, "GetLeaderboardResponse").entries
        self.assertEqual([e.guest_id for e in board], gs)
        # achievements: first booking unlocked, "regular" progressing towards 5
        r = self.rpc("GetAchievementProgress", self.gm.GetAchievementProgressRequest(
            guest_id=gs[0]), "GetAchievementProgressResponse")
        prog = {x.achievement_id: x for x in r.progress}
        self.assertEqual(len(prog["first-booking"].unlocked), 1)
        self.assertEqual((prog["regular"].current_value, prog["regular"].next_threshold), (2, 5))
        r = self.rpc("ListAchievements", self.gm.ListAchievementsRequest(), "ListAchievementsResponse")
        self.assertGreaterEqual(len(r.achievements), 10)
        self.assertTrue(all(a.tiers for a in r.achievements))

    # -- privacy

    def test_export_and_erase(self):
        g = str(uuid.uuid4())
        self.award(g, 25)
        svc = hmtest.auth_md("privacyd", roles=("service",))
        ch = self.d.channel()
        exp = ch.unary_unary("/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
                             request_serializer=self.pv.ExportSubjectDataRequest.SerializeToString,
                             response_deserializer=self.pv.ExportSubjectDataResponse.FromString)
        era = ch.unary_unary("/hospitality.privacy.v1.DataSubjectService/EraseSubjectData",
                             request_serializer=self.pv.EraseSubjectDataRequest.SerializeToString,
                             response_deserializer=self.pv.EraseSubjectDataResponse.FromString)
        r = exp(self.pv.ExportSubjectDataRequest(request_id="x", guest_id=g), metadata=svc,
                timeout=10)
        sec = {s.section: s.record_count for s in r.sections}
        self.assertEqual(sec["points_transactions"], 1)
        self.assertIn(g, [s for s in r.sections if s.section == "points_account"][0].records_json)
        self.wait(lambda: g in [e[1] for e in self.board()], "the board entry")
        rc = era(self.pv.EraseSubjectDataRequest(request_id="x", guest_id=g), metadata=svc,
                 timeout=10).receipt
        self.assertEqual({c.section: c.count for c in rc.deleted}["points_transactions"], 1)
        for t in ("gm_accounts", "gm_transactions", "gm_entries", "gm_lots", "gm_counters"):
            self.assertEqual(self.sql("SELECT count(*) FROM %s WHERE guest_id = '%s'" % (t, g)),
                             "0", t)
        self.assertNotIn(g, [e[1] for e in self.board()])
        r = exp(self.pv.ExportSubjectDataRequest(request_id="y", guest_id=g), metadata=svc,
                timeout=10)
        self.assertEqual(sum(s.record_count for s in r.sections), 0)
        grpc = hmtest.grpc_mod()
        with self.assertRaises(grpc.RpcError) as cm:
            era(self.pv.EraseSubjectDataRequest(request_id="z", guest_id=g),
                metadata=hmtest.auth_md(g, roles=("guest",)), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)


if __name__ == "__main__":
    hmtest.main()
