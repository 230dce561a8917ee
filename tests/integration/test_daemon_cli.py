"""
Integration: what an operator meets before the first RPC. --help and --version; invalid
configuration stops start-up with exit 2 and a message naming the variable (never echoing a
secret); `hmctl migrate status|down|up` on a daemon's real database, including that the
previous release keeps running on a schema newer than it knows (expand/contract).
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402


def exe(name):
    return os.path.join(hmtest.BUILD_ROOT, "services", name, name)


def hmctl():
    return os.environ.get("HM_TEST_HMCTL_EXE") or os.path.join(hmtest.BUILD_ROOT, "tools", "hmctl",
                                                              "hmctl")


def run(argv, env=None, timeout=30):
    base = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
    base.update(env or {})
    return subprocess.run(argv, env=base, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def latest_guestd_migration():
    """The newest version among guestd's migration files (NNN_name.up.sql)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "services",
                          "guestd", "migrations")
    return max(int(f.split("_", 1)[0]) for f in os.listdir(folder) if f.endswith(".up.sql"))


class DaemonCliTest(hmtest.TestCase):
    def test_help_lists_every_variable_with_defaults(self):
        r = run([exe("bookingd"), "--help"])
        self.assertEqual(r.returncode, 0)
        for var in ("HM_GRPC_ADDR", "HM_WORKERS", "HM_DATABASE_URL", "HM_SHUTDOWN_GRACE",
                    "HM_MAX_MESSAGE_BYTES", "HM_CONSUMERS", "HM_PII_KEYS"):
            self.assertIn(var, r.stdout)
        self.assertIn("0.0.0.0:50052", r.stdout)  # bookingd's own default port

    def test_version(self):
        r = run([exe("guestd"), "--version"])
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^guestd \d+\.\d+\.\d+")

    def test_invalid_values_stop_startup_naming_the_variable(self):
        env = hmtest.require_env()
        good = {"HM_DATABASE_URL": env.conninfo("postgres"), "HM_PII_KEYS": "k1:" + "ab" * 32,
                "HM_PII_INDEX_KEY": "cd" * 32, "HM_GRPC_ADDR": "127.0.0.1:1",
                "HM_ADMIN_ADDR": "127.0.0.1:1"}
        cases = [
            ({"HM_WORKERS": "0"}, "HM_WORKERS"),
            ({"HM_WORKERS": "many"}, "HM_WORKERS"),
            ({"HM_SHUTDOWN_GRACE": "soon"}, "HM_SHUTDOWN_GRACE"),
            ({"HM_LOG_LEVEL": "chatty"}, "HM_LOG_LEVEL"),
            ({"HM_GRPC_ADDR": "nowhere"}, "HM_GRPC_ADDR"),
            ({"HM_DATABASE_URL": ""}, "HM_DATABASE_URL"),
            ({"HM_PII_KEYS": "k1:not-hex-at-all"}, "HM_PII_KEYS"),
        ]
        for bad, var in cases:
            with self.subTest(var=var, value=list(bad.values())[0]):
                r = run([exe("guestd")], env={**good, **bad}, timeout=20)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(var, r.stderr)
        # A secret's value never appears in the message.
        r = run([exe("guestd")], env={**good, "HM_PII_KEYS": "k1:zz-secret-zz"}, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertNotIn("zz-secret-zz", r.stderr)

    def test_guestd_refuses_to_start_without_pii_keys(self):
        env = hmtest.require_env()
        r = run([exe("guestd")], env={"HM_DATABASE_URL": env.conninfo("postgres")}, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("HM_PII_KEYS", r.stderr)

    def test_hmctl_migrate_status_down_up(self):
        env = hmtest.require_env()
        db = hmtest.create_database("cli-migrate")
        try:
            menv = {"HM_DATABASE_URL": env.conninfo(db)}
            r = run([hmctl(), "migrate", "up", "--service", "guestd"], env=menv)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run([hmctl(), "migrate", "status", "--service", "guestd"], env=menv)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("guests", r.stdout)
            self.assertEqual(hmtest.psql("SELECT to_regclass('guests') IS NOT NULL", dbname=db).strip(), "t")
            r = run([hmctl(), "migrate", "down", "1", "--service", "guestd"], env=menv)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(hmtest.psql("SELECT to_regclass('guests') IS NULL", dbname=db).strip(), "t")
            self.assertEqual(hmtest.psql("SELECT to_regclass('outbox') IS NOT NULL", dbname=db).strip(), "t")
            # The daemon brings it back up at start.
            d = hmtest.Daemon("guestd", exe("guestd"), database=db).start()
            try:
                self.assertEqual(hmtest.psql("SELECT max(version) FROM hm_schema_migrations",
                                             dbname=db).strip(), str(latest_guestd_migration()))
            finally:
                self.assertEqual(d.stop(), 0)
            # Expand/contract: a schema newer than the binary (a later release migrated it)
            # does not stop the older binary from serving.
            hmtest.psql("INSERT INTO hm_schema_migrations (version, name, checksum) "
                        "VALUES (99, 'from_a_newer_release', 'x')", dbname=db)
            d = hmtest.Daemon("guestd", exe("guestd"), database=db).start()
            try:
                self.assertEqual(d.health().check(), hmtest.SERVING)
            finally:
                self.assertEqual(d.stop(), 0)
        finally:
            hmtest.drop_database(db)

    def test_erasure_receipts_lose_the_plain_guest_id_on_upgrade(self):
        """guestd's migration 004: receipts written before it (guest_id column, the id inside
        the packed receipt) keep only the id's SHA-256, and the receipt stays decodable."""
        import hashlib
        hmtest.project_protos()
        from hospitality.privacy.v1 import privacy_pb2
        env = hmtest.require_env()
        db = hmtest.create_database("cli-erasure-hash")
        try:
            menv = {"HM_DATABASE_URL": env.conninfo(db)}
            r = run([hmctl(), "migrate", "up", "--service", "guestd"], env=menv)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run([hmctl(), "migrate", "down", "3", "--service", "guestd"], env=menv)
            self.assertEqual(r.returncode, 0, r.stderr)
            guest = "0190f1c2-6b4e-7c3a-9d2e-5f8a1b2c3d4e"
            old = privacy_pb2.ErasureReceipt(receipt_id="0190f1c2-7000-7abc-8def-0123456789ab",
                                             request_id="req-1", guest_id=guest,
                                             participant="guestd")
            old.deleted.add(section="interactions", count=3)
            hmtest.psql("INSERT INTO guest_erasures (request_id, guest_id, receipt) VALUES "
                        "('req-1', '%s', '\\x%s')" % (guest, old.SerializeToString().hex()),
                        dbname=db)
            r = run([hmctl(), "migrate", "up", "--service", "guestd"], env=menv)
            self.assertEqual(r.returncode, 0, r.stderr)
            row = hmtest.psql("SELECT guest_hash, encode(receipt, 'hex') FROM guest_erasures "
                              "WHERE request_id = 'req-1'", dbname=db).strip().split("|")
            self.assertEqual(row[0], hashlib.sha256(guest.encode()).hexdigest())
            kept = privacy_pb2.ErasureReceipt.FromString(bytes.fromhex(row[1]))
            self.assertEqual(kept.guest_id, "")
            old.guest_id = ""
            self.assertEqual(kept, old)
            self.assertNotIn(guest.encode(), bytes.fromhex(row[1]))
            self.assertEqual(hmtest.psql("SELECT count(*) FROM information_schema.columns "
                                         "WHERE table_name = 'guest_erasures' AND column_name "
                                         "= 'guest_id'", dbname=db).strip(), "0")
        finally:
            hmtest.drop_database(db)


if __name__ == "__main__":
    hmtest.main()
