"""
The main job end to end (issue 12, item 1): tools/demo/hm-demo run against a whole mesh
(tests/lib/hmmesh.py: its own Postgres and Redis, partnersim, the five daemons wired to each
other), as `tools/dev up --demo` runs it. The demo exits non-zero at the first failed step; this
test also checks that every step of the journey was printed and that what the transcript claims
is true in the daemons' databases (one booking and its settled saga, the points, the erasure).
The marketing step must have written the email (HTML) and the vision board (a PNG of the
size asked for).
"""
import os
import re
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import hmmesh  # noqa: E402
import hmtest  # noqa: E402

DEMO = os.path.join(HERE, "..", "..", "tools", "demo", "hm-demo")
STEPS = ["the catalogue", "an anonymous visitor browses and searches", "sign-up with an email",
         "consent: personalization and marketing email granted", "preferences:",
         "recommendations, with reasons", "a table for two", "someone else tries the same table",
         "check the guest in and complete", "points, an achievement, a leaderboard place",
         "a personalized email and a vision board", "personalization consent withdrawn",
         "data export", "erasure: every daemon confirms"]


class DemoJourney(hmtest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.m = hmmesh.MeshStack().start()

    @classmethod
    def tearDownClass(cls):
        cls.m.close()

    def run_demo(self, *args, timeout=150):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
        env.update({"HM_%s_ADDR" % n.upper(): d.addr for n, d in self.m.daemons.items()})
        env["HM_JWT_HS256_SECRET"] = hmtest.JWT_SECRET
        with tempfile.TemporaryDirectory() as out:
            r = subprocess.run([sys.executable, DEMO, "--out", out] + list(args), env=env,
                               capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
            files = {}
            for name in sorted(os.listdir(out)):
                with open(os.path.join(out, name), "rb") as f:
                    files[name] = f.read()
        sys.stdout.write(r.stdout)
        sys.stdout.write(r.stderr)
        return r, files

    def test_journey(self):
        r, files = self.run_demo()
        self.assertEqual(r.returncode, 0, "hm-demo failed:\n" + r.stderr[-2000:])
        out = r.stdout
        titles = re.findall(r"^\s*\d+\. (.*)$", out, re.M)
        for s in STEPS:
            self.assertTrue(any(t.startswith(s) or s in t for t in titles),
                            "step %r missing from the transcript" % s)
        self.assertIn("The journey completed: %d steps, all OK." % len(titles), out)
        self.assertIn("ALREADY_EXISTS (as expected)", out)
        self.assertIn("personalized no, reason NO_CONSENT", out)
        # The marketing step wrote both files, and they are what they claim to be.
        html = [b for f, b in files.items() if f.endswith(".html")]
        png = [b for f, b in files.items() if f.endswith(".png")]
        self.assertTrue(html and png, list(files))
        self.assertIn(b"unsubscribe", html[0].lower())
        head = png[0][:24]
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(struct.unpack(">II", head[16:24]), (1200, 800))

        # What the transcript claims, checked in the databases.
        ref = re.search(r"booking (BR-[0-9A-Z-]+): ", out).group(1)
        guest = re.search(r"signed in on the web: guest ([0-9a-f-]{36})", out).group(1)
        # one booking for the reference (anonymized by the erasure, kept for the accounts),
        # its saga settled, and none left under the guest's id
        self.assertEqual(self.m.psql("bookingd", "SELECT count(*) FROM bk_bookings WHERE "
                                     "reference = '%s'" % ref), "1")
        self.assertEqual(self.m.psql("bookingd", "SELECT count(*) FROM bk_sagas s JOIN "
                                     "bk_bookings b USING (booking_id) WHERE b.reference = "
                                     "'%s' AND s.state = 'running'" % ref), "0")
        self.assertEqual(self.m.psql("bookingd", "SELECT count(*) FROM bk_bookings WHERE "
                                     "guest_id = '%s'" % guest), "0")
        self.assertEqual(self.m.psql("guestd", "SELECT count(*) FROM guests WHERE guest_id = "
                                     "'%s'" % guest), "0")
        self.assertEqual(self.m.psql("gamificationd", "SELECT count(*) FROM gm_accounts WHERE "
                                     "guest_id = '%s'" % guest), "0")

    def test_seed_data(self):
        r, _ = self.run_demo("--seed-data", "--guests", "60", "--no-journey")
        self.assertEqual(r.returncode, 0, "hm-demo --seed-data failed:\n" + r.stderr[-2000:])
        self.assertIn("seeded", r.stdout)


if __name__ == "__main__":
    hmtest.main()
