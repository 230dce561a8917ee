"""
Integration: recommenderd's model (issue 7): tools/rectrain trains from the daemon's own
database into an hmrec/1 file; ReloadModel maps it and swaps it in atomically.

- rectrain on clustered synthetic purchases: GetModelInfo reports the version, data sizes and
  the held-out metrics rectrain embedded; item-item (EASE) and matrix factorization (iALS,
  folded in at query time) recommend from the guest's own cluster, with reasons;
- ReloadModel under load: 8 threads calling Recommend while the model is swapped 12 times,
  no call fails and every list names one of the two versions;
- a corrupt or truncated file is refused (FAILED_PRECONDITION) and the serving model stays;
  reloading the same version changes nothing.
"""
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402
from test_recommenderd import RecommenderBase  # noqa: E402


class RecommenderModel(RecommenderBase):
    # no bus consumer: test_recommenderd's daemon runs beside this one on the same Redis, in
    # the same consumer group, and its events must not land in this daemon's database
    extra_env = {"HM_CONSUMERS": "off"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rectrain = os.environ["HM_TEST_RECTRAIN_EXE"]
        cls.tmp = os.path.join(os.environ.get("HM_TEST_TMPDIR", "/tmp"),
                               "rec-model-" + uuid.uuid4().hex[:6])
        os.makedirs(cls.tmp, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def train(self, name, version, *extra):
        path = os.path.join(self.tmp, name)
        conninfo = hmtest.require_env().conninfo(self.d.db)
        r = subprocess.run([self.rectrain, "--db", conninfo, "--out", path, "--version", version,
                            "--factors", "16", "--iterations", "6", "--k", "50", *extra],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return path

    def reload(self, path):
        return self.rpc("ReloadModel", self.rc.ReloadModelRequest(model_path=path))

    def test_train_reload_and_serve_under_load(self):
        rnd = random.Random(20261125)
        # four clusters of 25 items; 80 guests each buying 6 items of one cluster
        clusters = {c: ["m-%s-%02d" % (c, i) for i in range(25)] for c in "abcd"}
        self.items(*[self.item(i, "cl_" + c) for c, ids in clusters.items() for i in ids])
        events = []
        for n in range(80):
            c = "abcd"[n % 4]
            g = str(uuid.uuid4())
            for i in rnd.sample(clusters[c], 6):
                events.append(self.event(g, self.rc.TRACKED_EVENT_TYPE_PURCHASE, i))
        for k in range(0, len(events), 400):
            self.track(*events[k:k + 400])
        p1 = self.train("m1.hmrec", "test-v1", "--evaluate")
        r = self.reload(p1)
        self.assertTrue(r.changed)
        self.assertEqual(r.current.model_version, "test-v1")
        mi = self.rpc("GetModelInfo", self.rc.GetModelInfoRequest(), self.staff).model
        self.assertEqual(mi.model_version, "test-v1")
        self.assertEqual(mi.format, "hmrec/1")
        self.assertEqual(mi.model_path, p1)
        self.assertGreaterEqual(mi.training_items, 100)
        self.assertEqual(mi.training_users, 80)
        self.assertEqual(mi.training_interactions, 480)
        ndcg = [m for m in mi.offline_metrics if m.name == "ndcg@10"]
        self.assertEqual(ndcg[0].protocol, "random_80_20")
        self.assertGreater(ndcg[0].value, 0.1)  # clusters are easy; random would be ~0.05
        self.assertLessEqual(ndcg[0].ci_low, ndcg[0].value)
        self.assertLessEqual(ndcg[0].value, ndcg[0].ci_high)
        self.assertTrue(mi.blend_weights)

        # a guest of cluster b: item-item and MF recommend from b
        g = self.personal_guest()
        self.buy(g, clusters["b"][0], clusters["b"][1], clusters["b"][2])
        S = self.dm
        for strat in (S.RECOMMENDATION_STRATEGY_ITEM_ITEM,
                      S.RECOMMENDATION_STRATEGY_MATRIX_FACTORIZATION):
            rec = self.recommend(g, strategy=strat, limit=10)
            self.assertEqual(rec.model_version, "test-v1")
            cats = [i.category for i in rec.items]
            self.assertEqual(len(cats), 10, strat)
            self.assertGreaterEqual(cats.count("cl_b"), 9, (strat, cats))
            self.assertTrue(all(i.strategy == strat for i in rec.items))
        rec = self.recommend(g, strategy=S.RECOMMENDATION_STRATEGY_ITEM_ITEM, limit=3)
        self.assertRegex(rec.items[0].reason, r"^because you bought m-b-0[012]$")

        # same version again: nothing swapped
        self.assertFalse(self.reload(p1).changed)
        # corrupt and truncated files are refused; the model serving stays
        bad = os.path.join(self.tmp, "bad.hmrec")
        with open(p1, "rb") as f:
            blob = bytearray(f.read())
        blob[-5] ^= 0xFF
        with open(bad, "wb") as f:
            f.write(blob)
        for path, why in ((bad, "checksum"), (bad + ".none", "cannot open")):
            e = self.rpc_error("ReloadModel", self.rc.ReloadModelRequest(model_path=path))
            self.assertEqual(e.code().name, "FAILED_PRECONDITION")
            self.assertIn(why, e.details())
        with open(bad, "wb") as f:
            f.write(blob[:len(blob) // 2])
        e = self.rpc_error("ReloadModel", self.rc.ReloadModelRequest(model_path=bad))
        self.assertIn("truncated", e.details())
        self.assertEqual(self.rpc("GetModelInfo", self.rc.GetModelInfoRequest()).model
                         .model_version, "test-v1")
        e = self.rpc_error("ReloadModel", self.rc.ReloadModelRequest(model_path=p1),
                           self.staff)
        self.assertEqual(e.code().name, "PERMISSION_DENIED")

        # reload under load
        p2 = self.train("m2.hmrec", "test-v2")
        guests = []
        for n in range(8):
            gg = self.personal_guest()
            self.buy(gg, clusters["abcd"[n % 4]][3])
            guests.append(gg)
        stop = threading.Event()
        errors, versions, calls = [], set(), [0]
        lock = threading.Lock()

        def hammer(gg):
            grpc = hmtest.grpc_mod()
            while not stop.is_set():
                for strat in (S.RECOMMENDATION_STRATEGY_ITEM_ITEM,
                              S.RECOMMENDATION_STRATEGY_MATRIX_FACTORIZATION,
                              S.RECOMMENDATION_STRATEGY_HYBRID):
                    try:
                        # a new request each time (exclusions vary): no cache hit
                        rr = self.recommend(gg, strategy=strat, limit=5,
                                            exclude_item_ids=["x-%d" % rnd.randint(0, 10 ** 9)])
                        with lock:
                            versions.add(rr.model_version)
                            calls[0] += 1
                            if len(rr.items) != 5:
                                errors.append("short list %d" % len(rr.items))
                    except grpc.RpcError as ex:
                        with lock:
                            errors.append("%s %s" % (ex.code(), ex.details()))

        threads = [threading.Thread(target=hammer, args=(gg,)) for gg in guests]
        for t in threads:
            t.start()
        try:
            for n in range(12):
                time.sleep(0.15)
                r = self.reload(p2 if n % 2 == 0 else p1)
                self.assertTrue(r.changed)
        finally:
            time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(errors, [])
        self.assertGreater(calls[0], 50)
        self.assertEqual(versions, {"test-v1", "test-v2"})
        self.assertEqual(self.rpc("GetModelInfo", self.rc.GetModelInfoRequest()).model
                         .model_version, "test-v1")
        self.assertEqual(self.d.log_text().count("model test-v2 loaded"), 6)


if __name__ == "__main__":
    hmtest.main()
