"""
hmtest - the Python harness of the interop, fault and valgrind tests.

Runs under Debian's /usr/bin/python3 with its python3-grpcio and python3-protobuf (stdlib
otherwise). It gives a test:

- the test environment of tests/run-all.sh (HM_TEST_PG_HOST, HM_TEST_PG_PORT,
  HM_TEST_REDIS_ADDR, HM_TEST_PORT_BASE[, HM_TEST_PORT_COUNT]); without it a test exits 77
  (meson's "skipped"): see require_env() and main();
- ports from the test block, safe under parallel `meson test`: the scan starts at an offset
  derived from the test's name, and a port is taken only when its lock file
  (/tmp/hm-test-ports/<port>.lock, flock held until the process exits) is free and 127.0.0.1:port
  can be bound;
- a fresh Postgres database per daemon (CREATE DATABASE through psql), dropped afterwards;
- Daemon: starts a daemon binary with its HM_* environment, captures its stdout and stderr in a
  log file (its tail is printed when a test fails), waits for grpc.health.v1 Check "" to say
  SERVING, stops it with SIGTERM and returns the exit status;
- Python modules for the protos, generated at test time with Debian's protoc 3.21 (matches
  python3-protobuf 4.21) into a cache folder put on sys.path: grpc.health.v1 (as the top-level
  module `health_pb2`, generated from inside its folder so that it does not clash with the
  `grpc` package), google.rpc status/error_details, google.api, and on request the project's
  proto/ tree (project_protos());
- generic gRPC calls without generated _grpc modules (Health), rich error decoding
  (grpc-status-details-bin -> google.rpc.Status, ErrorInfo, RequestInfo) and the admin port's
  Prometheus text (metrics()).

Environment knobs besides the test contract: HM_TEST_LOG_DIR (daemon logs; default
<build root>/meson-logs/hmtest with HM_TEST_BUILD_ROOT set, else a temporary folder),
HM_TEST_PYGEN_DIR (generated modules cache; default <build root>/tests/pygen, else under the
log dir),
HM_TEST_SRC_ROOT / HM_TEST_BUILD_ROOT (set by meson), HM_TEST_START_TIMEOUT (seconds a daemon
may take to become SERVING, default 30), HM_TEST_KEEP_DB=1 (keep databases for debugging).
"""

import contextlib
import errno
import fcntl
import hashlib
import importlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
import uuid

SKIP = 77  # meson's exit code for a skipped test
# HS256 secret of every daemon this process starts (tests mint their tokens with it).
JWT_SECRET = os.urandom(32).hex()

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.environ.get("HM_TEST_SRC_ROOT") or os.path.dirname(os.path.dirname(HERE))
BUILD_ROOT = os.environ.get("HM_TEST_BUILD_ROOT") or os.path.join(SRC_ROOT, "build")

GRPC_PROTO_DIR = "/usr/share/grpc-proto"
GOOGLEAPIS_DIR = "/usr/share/gocode/src/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis"
# google/rpc from gogo's newer copy: grpc-gateway 1.6's error_details.proto predates ErrorInfo.
GOOGLERPC_DIR = "/usr/share/gocode/src/github.com/gogo/googleapis"
WKT_DIR = "/usr/include"

# Each daemon, the gRPC services it registers (each is also a health service name).
DAEMONS = {
    "guestd": ["hospitality.guest.v1.GuestService"],
    "bookingd": ["hospitality.booking.v1.BookingService"],
    "recommenderd": ["hospitality.recommender.v1.RecommenderService"],
    "gamificationd": ["hospitality.gamification.v1.GamificationService"],
    "privacyd": ["hospitality.privacy.v1.PrivacyService"],
}

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
ERROR_DOMAIN = "hospitality.mesh"

# HealthCheckResponse.ServingStatus
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3


def log(msg):
    """A harness line on stderr (meson keeps it in the test log)."""
    sys.stderr.write("hmtest: %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# Environment


class Env:
    """The test environment of tests/run-all.sh."""

    def __init__(self):
        e = os.environ
        self.pg_host = e["HM_TEST_PG_HOST"]
        self.pg_port = int(e["HM_TEST_PG_PORT"])
        self.pg_user = e.get("HM_TEST_PG_USER") or "postgres"
        self.redis_addr = e["HM_TEST_REDIS_ADDR"]
        self.port_base = int(e["HM_TEST_PORT_BASE"])
        self.port_count = int(e.get("HM_TEST_PORT_COUNT") or 200)
        self.log_dir = e.get("HM_TEST_LOG_DIR") or (
            os.path.join(e["HM_TEST_BUILD_ROOT"], "meson-logs", "hmtest")
            if e.get("HM_TEST_BUILD_ROOT") else _tmp_log_dir())
        os.makedirs(self.log_dir, exist_ok=True)

    def conninfo(self, dbname):
        return "host=%s port=%d dbname=%s user=%s connect_timeout=3" % (
            self.pg_host, self.pg_port, dbname, self.pg_user)


_REQUIRED = ("HM_TEST_PG_HOST", "HM_TEST_PG_PORT", "HM_TEST_REDIS_ADDR", "HM_TEST_PORT_BASE")
_env = None
_tmp_dir = None


def _tmp_log_dir():
    global _tmp_dir
    if _tmp_dir is None:
        _tmp_dir = tempfile.mkdtemp(prefix="hmtest-")
    return _tmp_dir


def require_env(extra=()):
    """The Env, or exit 77 (skip) when the test environment (or a variable of `extra`) is unset."""
    global _env
    missing = [v for v in _REQUIRED + tuple(extra) if not os.environ.get(v)]
    if missing:
        print("SKIP: test environment not set (%s); run tests/run-all.sh" % ", ".join(missing))
        sys.exit(SKIP)
    if _env is None:
        _env = Env()
    return _env


def test_name():
    """This test's name: HM_TEST_NAME, else the script's name and the daemon under test."""
    n = os.environ.get("HM_TEST_NAME")
    if n:
        return n
    n = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    if os.environ.get("HM_TEST_DAEMON"):
        n += "-" + os.environ["HM_TEST_DAEMON"]
    return n


def daemon_under_test():
    """(name, executable) from HM_TEST_DAEMON and HM_TEST_DAEMON_EXE (meson sets them)."""
    name = os.environ.get("HM_TEST_DAEMON") or "guestd"
    exe = os.environ.get("HM_TEST_DAEMON_EXE") or os.path.join(BUILD_ROOT, "services", name, name)
    if name not in DAEMONS:
        raise SystemExit("HM_TEST_DAEMON: unknown daemon %r" % name)
    if not os.access(exe, os.X_OK):
        raise SystemExit("daemon executable %s missing: build first" % exe)
    return name, exe


# ---------------------------------------------------------------------------------------------
# Ports

PORT_LOCK_DIR = "/tmp/hm-test-ports"
_port_locks = {}  # port -> open file holding its flock (released when the process exits)
_port_mutex = threading.Lock()


def _bindable(port):
    for kind in (socket.SOCK_STREAM,):
        s = socket.socket(socket.AF_INET, kind)
        try:
            # The daemons listen with SO_REUSEADDR: a port in TIME_WAIT is fine for them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def alloc_ports(n=1, name=None):
    """`n` distinct free ports of the test block, held by this process until it exits."""
    env = require_env()
    name = name or test_name()
    os.makedirs(PORT_LOCK_DIR, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(PORT_LOCK_DIR, 0o1777)
    count = env.port_count
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % count
    got = []
    with _port_mutex:
        for i in range(count):
            port = env.port_base + (start + i) % count
            if port in _port_locks:
                continue
            path = os.path.join(PORT_LOCK_DIR, "%d.lock" % port)
            f = open(path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            if not _bindable(port):
                f.close()
                continue
            _port_locks[port] = f
            got.append(port)
            if len(got) == n:
                return got
    raise RuntimeError("no %d free ports in %d..%d" % (n, env.port_base, env.port_base + count - 1))


def release_port(port):
    f = _port_locks.pop(port, None)
    if f:
        f.close()


# ---------------------------------------------------------------------------------------------
# Postgres

def psql(sql, dbname="postgres", env=None, check=True, timeout=30):
    """Runs `sql` with psql as the superuser; returns stdout (tuples only, unaligned)."""
    env = env or require_env()
    r = subprocess.run(
        ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", env.pg_host, "-p",
         str(env.pg_port), "-U", env.pg_user, "-d", dbname, "-c", sql],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("psql %r failed: %s" % (sql, r.stderr.strip()))
    return r.stdout


def create_database(label):
    """A new empty database named after `label`; returns its name."""
    base = re.sub(r"[^a-z0-9_]", "_", label.lower())[:40]
    name = "t_%s_%d_%04x" % (base, os.getpid(), random.getrandbits(16))
    psql('CREATE DATABASE "%s"' % name)
    return name


def drop_database(name):
    if os.environ.get("HM_TEST_KEEP_DB") == "1":
        log("keeping database %s" % name)
        return
    psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name, check=False)


# ---------------------------------------------------------------------------------------------
# Generated protobuf modules

_gen_lock = threading.Lock()
_gen_done = set()


def _protoc(args, cwd=None):
    r = subprocess.run(["protoc"] + args, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("protoc %s failed:\n%s" % (" ".join(args), r.stderr))


def _gen_cache_root():
    e = os.environ
    d = e.get("HM_TEST_PYGEN_DIR")
    if not d and e.get("HM_TEST_BUILD_ROOT"):
        d = os.path.join(e["HM_TEST_BUILD_ROOT"], "tests", "pygen")
    if not d:
        d = os.path.join(e.get("HM_TEST_LOG_DIR") or _tmp_log_dir(), "pygen")
    os.makedirs(d, exist_ok=True)
    return d


def _generate(kind, inputs, run):
    """Generates into <cache>/<kind>-<hash of inputs>/ once (atomic rename: parallel tests may
    race, the first one wins) and puts that folder on sys.path."""
    h = hashlib.sha256()
    for p in sorted(inputs):
        h.update(p.encode())
        with open(p, "rb") as f:
            h.update(f.read())
    root = _gen_cache_root()
    final = os.path.join(root, "%s-%s" % (kind, h.hexdigest()[:16]))
    if not os.path.isdir(final):
        tmp = tempfile.mkdtemp(prefix=".%s-" % kind, dir=root)
        try:
            run(tmp)
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if final not in sys.path:
        sys.path.insert(0, final)
    importlib.invalidate_caches()
    return final


def base_protos():
    """Generates (once) and imports health, google.rpc and google.api modules. Returns a
    namespace with health_pb2, status_pb2, error_details_pb2."""
    with _gen_lock:
        if "base" not in _gen_done:
            health_dir = os.path.join(GRPC_PROTO_DIR, "grpc/health/v1")
            grpc_files = ["google/rpc/status.proto", "google/rpc/error_details.proto"]
            api_files = ["google/api/annotations.proto", "google/api/http.proto"]

            def run(out):
                # From inside its folder: the module is the top-level `health_pb2`, not
                # grpc.health.v1.health_pb2 (which the `grpc` package would shadow).
                _protoc(["--proto_path=.", "--python_out=" + out, "health.proto"], cwd=health_dir)
                _protoc(["--proto_path=" + GOOGLERPC_DIR, "--proto_path=" + WKT_DIR,
                         "--python_out=" + out] + grpc_files)
                _protoc(["--proto_path=" + GOOGLEAPIS_DIR, "--proto_path=" + WKT_DIR,
                         "--python_out=" + out] + api_files)

            _generate("base", [os.path.join(health_dir, "health.proto")] +
                      [os.path.join(GOOGLERPC_DIR, p) for p in grpc_files] +
                      [os.path.join(GOOGLEAPIS_DIR, p) for p in api_files], run)
            _gen_done.add("base")
    ns = type("Protos", (), {})()
    ns.health_pb2 = importlib.import_module("health_pb2")
    ns.status_pb2 = importlib.import_module("google.rpc.status_pb2")
    ns.error_details_pb2 = importlib.import_module("google.rpc.error_details_pb2")
    return ns


def project_protos():
    """Generates (once) the project's proto/ tree; import modules as
    `hospitality.guest.v1.guest_pb2` afterwards."""
    base_protos()
    with _gen_lock:
        if "project" not in _gen_done:
            proto_root = os.path.join(SRC_ROOT, "proto")
            files = []
            for d, _, names in os.walk(proto_root):
                files += [os.path.relpath(os.path.join(d, n), proto_root)
                          for n in names if n.endswith(".proto")]
            files.sort()

            def run(out):
                _protoc(["--proto_path=" + proto_root, "--proto_path=" + GOOGLEAPIS_DIR,
                         "--proto_path=" + WKT_DIR, "--python_out=" + out] + files)

            _generate("project", [os.path.join(proto_root, f) for f in files], run)
            _gen_done.add("project")


# ---------------------------------------------------------------------------------------------
# gRPC helpers

def grpc_mod():
    import grpc  # Debian's python3-grpcio

    return grpc


def channel(addr, **opts):
    grpc = grpc_mod()
    options = [("grpc.enable_retries", 0)] + list(opts.items())
    return grpc.insecure_channel(addr, options=options)


class Health:
    """grpc.health.v1.Health through generic calls."""

    def __init__(self, ch):
        p = base_protos()
        self.pb = p.health_pb2
        self.check_rpc = ch.unary_unary(
            HEALTH_CHECK, request_serializer=self.pb.HealthCheckRequest.SerializeToString,
            response_deserializer=self.pb.HealthCheckResponse.FromString)
        self.watch_rpc = ch.unary_stream(
            HEALTH_WATCH, request_serializer=self.pb.HealthCheckRequest.SerializeToString,
            response_deserializer=self.pb.HealthCheckResponse.FromString)

    def check(self, service="", timeout=5, metadata=None):
        """The ServingStatus; raises grpc.RpcError on errors."""
        return self.check_rpc(self.pb.HealthCheckRequest(service=service), timeout=timeout,
                              metadata=metadata).status

    def check_call(self, service="", timeout=5, metadata=None):
        """(response, call) for metadata checks."""
        return self.check_rpc.with_call(self.pb.HealthCheckRequest(service=service),
                                        timeout=timeout, metadata=metadata)

    def watch(self, service="", timeout=None, metadata=None):
        return self.watch_rpc(self.pb.HealthCheckRequest(service=service), timeout=timeout,
                              metadata=metadata)


def md_get(md, key):
    """The first value of `key` in a metadata sequence (or None)."""
    for k, v in md or ():
        if k == key:
            return v
    return None


def error_details(err):
    """Decodes grpc-status-details-bin of an RpcError: (Status, ErrorInfo|None, RequestInfo|None);
    raises AssertionError when absent."""
    p = base_protos()
    raw = md_get(err.trailing_metadata(), "grpc-status-details-bin")
    if raw is None:
        raise AssertionError("no grpc-status-details-bin in the trailers of %s" % err.code())
    st = p.status_pb2.Status.FromString(raw)
    info = req = None
    for any_ in st.details:
        if any_.Is(p.error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = p.error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.Is(p.error_details_pb2.RequestInfo.DESCRIPTOR):
            req = p.error_details_pb2.RequestInfo()
            any_.Unpack(req)
    return st, info, req


# ---------------------------------------------------------------------------------------------
# Admin HTTP

def http_get(addr, path, timeout=5):
    """(status, body) of GET http://addr/path."""
    try:
        with urllib.request.urlopen("http://%s%s" % (addr, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


_METRIC_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> {(name, frozenset(labels.items())): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_RE.match(line)
        if not m:
            raise AssertionError("malformed metrics line: %r" % line)
        labels = frozenset(_LABEL_RE.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(metrics, name, **labels):
    """The value of one series (0 when absent)."""
    return metrics.get((name, frozenset(labels.items())), 0.0)


# ---------------------------------------------------------------------------------------------
# Daemons

_daemons = []  # every Daemon started by this process (log tails on failure)


def _b64url(b):
    import base64

    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(sub, roles=("admin",), venues=(), ttl=3600, secret=None, **claims):
    """An HS256 JWT as the daemons started by this harness accept (HM_JWT_HS256_SECRET =
    JWT_SECRET): `sub`, `roles`, optional `venues`, `exp` = now + ttl (negative: expired)."""
    import hashlib
    import hmac
    import json

    now = int(time.time())
    body = {"sub": sub, "roles": list(roles), "iat": now, "exp": now + ttl}
    if venues:
        body["venues"] = list(venues)
    body.update(claims)
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(body).encode())
    key = (secret or JWT_SECRET).encode()
    sig = hmac.new(key, ("%s.%s" % (head, payload)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, payload, _b64url(sig))


def auth_md(sub="test-admin", roles=("admin",), **kw):
    """Request metadata carrying a token (for grpc: metadata=auth_md(...))."""
    return [("authorization", "Bearer " + token(sub, roles, **kw))]


def random_hex(nbytes=32):
    return os.urandom(nbytes).hex()


class DaemonError(AssertionError):
    pass


class Daemon:
    """One daemon process with its own database, ports and log.

    d = Daemon("guestd", exe); d.start()   # waits for SERVING
    d.addr, d.admin_addr, d.health()       # 127.0.0.1:port
    rc = d.stop()                          # SIGTERM, returns the exit status
    d.close()                              # kills if needed, drops the database
    """

    def __init__(self, name, exe, env=None, workers=2, grace="3s", wrapper=None, database=None,
                 conninfo=None, label=None, start_timeout=None, log_level="info"):
        self.env_ = require_env()
        self.name = name
        self.exe = exe
        self.services = DAEMONS.get(name, [])
        self.label = label or "%s-%s" % (test_name(), name)
        self.wrapper = list(wrapper or [])
        self.extra_env = dict(env or {})
        self.workers = workers
        self.grace = grace
        self.log_level = log_level
        self.start_timeout = float(start_timeout or os.environ.get("HM_TEST_START_TIMEOUT") or 30)
        self.own_db = database is None and conninfo is None
        self.db = database
        self.conninfo = conninfo
        self.proc = None
        self.port, self.admin_port = alloc_ports(2, self.label)
        self.addr = "127.0.0.1:%d" % self.port
        self.admin_addr = "127.0.0.1:%d" % self.admin_port
        self.log_path = os.path.join(
            self.env_.log_dir, "%s.%d.%d.log" % (re.sub(r"[^A-Za-z0-9_.-]", "_", self.label),
                                                os.getpid(), len(_daemons)))
        self.exit_status = None
        self.stop_seconds = None
        self._channel = None
        _daemons.append(self)

    # -- life cycle

    def environment(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
        env.update({
            "HM_GRPC_ADDR": self.addr,
            "HM_ADMIN_ADDR": self.admin_addr,
            "HM_DATABASE_URL": self.conninfo,
            "HM_REDIS_ADDR": self.env_.redis_addr,
            "HM_WORKERS": str(self.workers),
            "HM_LOG_LEVEL": self.log_level,
            "HM_SHUTDOWN_GRACE": self.grace,
            "HM_PII_KEYS": "k1:" + random_hex(),
            "HM_PII_INDEX_KEY": random_hex(),
            "HM_JWT_HS256_SECRET": JWT_SECRET,
        })
        env.update(self.extra_env)
        return env

    def spawn(self):
        """Starts the process without waiting for it to serve."""
        if self.own_db and self.db is None:
            self.db = create_database(self.label)
        if self.conninfo is None:
            self.conninfo = self.env_.conninfo(self.db)
        logf = open(self.log_path, "ab")
        logf.write(("=== %s %s\n" % (" ".join(self.wrapper + [self.exe]), time.strftime("%T"))).encode())
        logf.flush()
        self.proc = subprocess.Popen(self.wrapper + [self.exe], env=self.environment(),
                                     stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.exit_status = None
        return self

    def start(self):
        """Starts the process and waits until Health/Check "" answers SERVING."""
        self.spawn()
        self.wait_status(SERVING, timeout=self.start_timeout)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def channel(self):
        if self._channel is None:
            self._channel = channel(self.addr)
        return self._channel

    def health(self, ch=None):
        return Health(ch or self.channel())

    def wait_status(self, want, service="", timeout=30):
        """Polls Check(service) until it returns `want`; raises with the log tail otherwise."""
        grpc = grpc_mod()
        h = self.health()
        until = time.monotonic() + timeout
        last = None
        while True:
            if not self.alive():
                raise DaemonError("%s exited with %s while waiting for %s\n%s" % (
                    self.name, self.proc.returncode if self.proc else None,
                    status_name(want), self.log_tail()))
            try:
                last = h.check(service, timeout=1)
                if last == want:
                    return
            except grpc.RpcError as e:
                last = e.code()
            if time.monotonic() > until:
                raise DaemonError("%s: Check(%r) still %s after %.0f s, want %s\n%s" % (
                    self.name, service, last, timeout, status_name(want), self.log_tail()))
            time.sleep(0.1)

    def send_signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, timeout=None, sig=signal.SIGTERM):
        """Sends `sig` and waits; returns the exit status (negative: killed by a signal), or
        None when it did not exit within `timeout` (it is then killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(sig)
            timeout = timeout if timeout is not None else _duration_s(self.grace) + 10
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log("%s did not exit within %.1f s of %s: killing it" % (
                    self.name, timeout, signal.Signals(sig).name))
                self.kill()
                return None
            self.stop_seconds = time.monotonic() - t0
        self.exit_status = self.proc.returncode
        return self.exit_status

    def wait(self, timeout):
        """Waits for the process to exit by itself; its status, or None after `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self):
        """Kills the process if still running, closes the channel, drops the database."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.kill()
        if self.own_db and self.db:
            drop_database(self.db)
            self.db = None
        release_port(self.port)
        release_port(self.admin_port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- observation

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=60):
        lines = self.log_text().splitlines()
        return "--- %s log (%s), last %d of %d lines:\n%s\n---" % (
            self.name, self.log_path, min(n, len(lines)), len(lines), "\n".join(lines[-n:]))

    def metrics(self):
        status, body = http_get(self.admin_addr, "/metrics")
        if status != 200:
            raise AssertionError("GET /metrics: %d" % status)
        return parse_metrics(body)


def status_name(st):
    return {UNKNOWN: "UNKNOWN", SERVING: "SERVING", NOT_SERVING: "NOT_SERVING",
            SERVICE_UNKNOWN: "SERVICE_UNKNOWN"}.get(st, str(st))


def _duration_s(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(s))
    if not m:
        return 10.0
    n = int(m.group(1))
    return {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600, None: n / 1000}[m.group(2)]


def dump_logs(stream=sys.stderr, n=80):
    """Prints the log tail of every daemon this process started."""
    for d in _daemons:
        stream.write(d.log_tail(n) + "\n")
    stream.flush()


# ---------------------------------------------------------------------------------------------
# Running tests

class TestCase(unittest.TestCase):
    """Base class of the harness' tests (main() prints the daemons' logs on failure); notes
    tests that take more than a second."""

    maxDiff = None

    def run(self, result=None):
        t0 = time.monotonic()
        try:
            return super().run(result)
        finally:
            dt = time.monotonic() - t0
            if dt > 1:
                log("%s took %.1f s" % (self.id(), dt))


def main(extra_env=()):
    """unittest.main() for a test script: skips (77) without the test environment, prints the
    daemons' logs when something failed (including setUpClass), and exits 0/1."""
    require_env(extra_env)
    prog = unittest.main(exit=False, verbosity=2)
    ok = prog.result.wasSuccessful()
    if not ok:
        dump_logs(n=40)
    for d in _daemons:
        with contextlib.suppress(Exception):
            d.close()
    if prog.result.testsRun == 0:
        print("no test ran")
        sys.exit(1)
    if prog.result.skipped and len(prog.result.skipped) == prog.result.testsRun:
        sys.exit(SKIP)
    sys.exit(0 if ok else 1)


def uuid7():
    """A UUIDv7 (time-ordered), as event ids must be."""
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))


def redis_cmd(*args):
    """One command to the test Redis with binary-safe arguments (bytes or str); the raw reply
    (bytes, int, str for status replies, lists), AssertionError on an error reply."""
    host, port = require_env().redis_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        f = s.makefile("rb")

        def read():
            line = f.readline().rstrip(b"\r\n")
            k, rest = line[:1], line[1:]
            if k == b"+":
                return rest.decode()
            if k == b"-":
                raise AssertionError("redis: " + rest.decode())
            if k == b":":
                return int(rest)
            if k == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2]
            if k == b"*":
                n = int(rest)
                return None if n < 0 else [read() for _ in range(n)]
            raise AssertionError("bad reply %r" % line)

        return read()


def publish_event(etype, msg, subject, source="test", times=1, event_id=None):
    """Puts an event on its bus stream as the outbox relay would (XADD id/type/env), `times`
    times with the same id; returns the envelope."""
    project_protos()
    from google.protobuf import timestamp_pb2
    from hospitality.events.v1 import events_pb2

    t = timestamp_pb2.Timestamp()
    t.GetCurrentTime()
    env = events_pb2.Event(id=event_id or uuid7(), type=etype, source=source, subject=subject,
                           time=t, schema_version=1, payload=msg.SerializeToString())
    for _ in range(times):
        redis_cmd("XADD", "hm:events:" + etype.split(".")[0], "*", "id", env.id, "type", etype,
                  "env", env.SerializeToString())
    return env
