"""
hmmesh.py - the whole mesh in one test: its own Postgres cluster and Redis (so a test may stop,
restart or kill them without disturbing the other tests of the run), partnersim and the five
daemons wired to each other, plus a steady mixed load that records every call's outcome.

    m = MeshStack().start()          # Postgres, Redis, partnersim, the daemons (SERVING)
    m.rpc.call("guestd", ...)        # tools/lib/hmrpc.py Rpc bound to the mesh's addresses
    m.kill_restart("bookingd")       # SIGKILL and start again on the same ports
    m.pg.stop(); m.pg.start()        # Postgres restart
    m.redis.stop(); m.redis.start()  # Redis outage
    m.close()

Executables come from HM_TEST_<DAEMON>_EXE and HM_TEST_PARTNERSIM_EXE (set by meson).
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "lib"))
import hmrpc  # noqa: E402
import hmtest  # noqa: E402

PG_BIN = os.environ.get("HM_PG_BIN") or "/usr/lib/postgresql/15/bin"
DAEMON_NAMES = ["guestd", "bookingd", "recommenderd", "gamificationd", "privacyd"]


class PostgresCluster:
    """A small throwaway Postgres cluster of its own (unix socket only), stoppable at will."""

    def __init__(self):
        base = os.environ.get("HM_TEST_TMPDIR") or tempfile.gettempdir()
        self.dir = tempfile.mkdtemp(prefix="hm-fault-pg-", dir=base)
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.sock = self.dir
        self.port = hmtest.alloc_ports(1, hmtest.test_name() + "-pg")[0]
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, args, timeout=60):
        cmd = (["runuser", "-u", "postgres", "--"] if self.root else []) + args
        r = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (" ".join(args), r.stdout, r.stderr))

    def init(self):
        self._run([PG_BIN + "/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-N",
                   "--no-instructions"])

    def start(self):
        opts = ("-k %s -p %d -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c shared_buffers=16MB -c max_connections=100"
                % (self.sock, self.port))
        self._run([PG_BIN + "/pg_ctl", "-D", self.data, "-o", opts, "-l",
                   os.path.join(self.dir, "log"), "-w", "-t", "30", "start"])

    def stop(self):
        self._run([PG_BIN + "/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop"])

    def createdb(self, name):
        r = subprocess.run(["psql", "-X", "-q", "-h", self.sock, "-p", str(self.port), "-U",
                            "postgres", "-d", "postgres", "-c", 'CREATE DATABASE "%s"' % name],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)

    def conninfo(self, db):
        return "host=%s port=%d dbname=%s user=postgres connect_timeout=2" % (
            self.sock, self.port, db)

    def destroy(self):
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run([PG_BIN + "/pg_ctl", "-D", self.data, "-m", "immediate", "-w",
                           "stop"])
        except Exception as e:
            hmtest.log("could not stop the test cluster: %s" % e)
        shutil.rmtree(self.dir, ignore_errors=True)
        hmtest.release_port(self.port)


class RedisServer:
    """A redis-server of its own on a TCP port, stoppable (SIGKILL: a crash) and restartable,
    persisted as the deployment's Redis is (deploy/k8s/components/redis: append-only file,
    fsync every second), since its streams are the event bus: a restart keeps the events the
    consumers have not read yet and their pending entries."""

    def __init__(self):
        self.port = hmtest.alloc_ports(1, hmtest.test_name() + "-redis")[0]
        self.addr = "127.0.0.1:%d" % self.port
        self.proc = None
        base = os.environ.get("HM_TEST_TMPDIR") or tempfile.gettempdir()
        self.dir = tempfile.mkdtemp(prefix="hm-mesh-redis-", dir=base)

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", self.dir,
             "--daemonize", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        until = time.monotonic() + 10
        while time.monotonic() < until:
            if self.cli("PING") == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start on %s" % self.addr)

    def command(self, *args):
        """One command over RESP (a minimal client: replies as str, int, list or None;
        errors raise)."""
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            out = "*%d\r\n" % len(args) + "".join(
                "$%d\r\n%s\r\n" % (len(str(a).encode()), a) for a in args)
            sock.sendall(out.encode())
            f = sock.makefile("rb")

            def read():
                line = f.readline().rstrip(b"\r\n")
                kind, rest = line[:1], line[1:]
                if kind == b"+":
                    return rest.decode()
                if kind == b"-":
                    raise RuntimeError("redis: " + rest.decode())
                if kind == b":":
                    return int(rest)
                if kind == b"$":
                    n = int(rest)
                    return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
                if kind == b"*":
                    n = int(rest)
                    return None if n < 0 else [read() for _ in range(n)]
                raise RuntimeError("redis: bad reply %r" % line)

            return read()

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port)] + list(args),
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        hmtest.release_port(self.port)


class MeshStack:
    """Postgres, Redis, partnersim and the daemons of `daemons`, wired as tools/dev wires them."""

    def __init__(self, daemons=DAEMON_NAMES, extra_env=None, workers=2):
        self.names = list(daemons)
        self.pg = PostgresCluster()
        self.redis = RedisServer()
        self.extra_env = dict(extra_env or {})
        self.partnersim = None
        self.daemons = {}
        self.workers = workers
        self.rpc = None

    def _exe(self, name):
        exe = os.environ.get("HM_TEST_%s_EXE" % name.upper())
        if not exe:
            raise unittest.SkipTest("HM_TEST_%s_EXE is not set" % name.upper())
        return exe

    def start(self):
        self.pg.init()
        self.pg.start()
        self.redis.start()
        exe = os.environ.get("HM_TEST_PARTNERSIM_EXE")
        if exe:
            self.pg.createdb("partnersim")
            self.partnersim = hmtest.Daemon("partnersim", exe, conninfo=self.pg.conninfo(
                "partnersim"), workers=self.workers, env={"HM_REDIS_ADDR": self.redis.addr})
        for n in self.names:
            self.pg.createdb(n)
            self.daemons[n] = hmtest.Daemon(n, self._exe(n), conninfo=self.pg.conninfo(n),
                                            workers=self.workers)
        peers = {"HM_%s_ADDR" % n.upper(): d.addr for n, d in self.daemons.items()}
        if self.partnersim is not None:
            for p in ("INVENTORY", "PRICING", "PAYMENT", "PARTNERS"):
                peers["HM_%s_ADDR" % p] = self.partnersim.addr
            self.partnersim.start()
        for n, d in self.daemons.items():
            d.extra_env.update(peers)
            # PII keys fixed for the stack's life: a restarted daemon must read what it wrote
            # (Daemon.environment() would draw new random keys at every start)
            d.extra_env.update({"HM_PII_KEYS": "k1:" + hmtest.random_hex(),
                                "HM_PII_INDEX_KEY": hmtest.random_hex()})
            if n == "recommenderd":  # signs marketing email's unsubscribe links (as tools/dev)
                d.extra_env["HM_MKT_UNSUBSCRIBE_KEY"] = hmtest.random_hex()
            d.extra_env.update({"HM_REDIS_ADDR": self.redis.addr,
                                "HM_SERVICE_TOKEN": hmtest.token(n, roles=("service",),
                                                                 ttl=24 * 3600),
                                "HM_DATA_SUBJECT_PEERS": ",".join(self.names)})
            d.extra_env.update(self.extra_env)
        for d in self.daemons.values():
            d.start()
        self.rpc = hmrpc.Rpc({n: d.addr for n, d in self.daemons.items()}, hmtest.JWT_SECRET)
        return self

    def kill_restart(self, name):
        d = self.daemons[name]
        d.kill()
        d.start()
        # The channel is kept: the daemon is back on the same port and grpc reconnects by
        # itself (closing it here would fail the load's calls in flight with CANCELLED
        # "Channel closed!", a client-side artefact).

    def unary(self, daemon, method, req, resp_cls, md, timeout=10):
        """One unary call to a daemon of the stack: METHOD is the full path, REQ a message,
        RESP_CLS the response class, MD the call's metadata (hmtest.auth_md(...))."""
        fn = self.daemons[daemon].channel().unary_unary(
            method, request_serializer=type(req).SerializeToString,
            response_deserializer=resp_cls.FromString)
        return fn(req, metadata=md, timeout=timeout)

    def psql(self, db, sql):
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-h", self.pg.sock, "-p",
                            str(self.pg.port), "-U", "postgres", "-d", db, "-c", sql],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("psql %s: %s" % (db, r.stderr))
        return r.stdout.strip()

    def close(self):
        for d in list(self.daemons.values()) + ([self.partnersim] if self.partnersim else []):
            try:
                d.close()
            except Exception as e:  # keep tearing down
                hmtest.log("close %s: %s" % (d.name, e))
        self.redis.destroy()
        self.pg.destroy()


class Load:
    """Steady load from `threads` threads, each calling ops (callables taking the Rpc and a
    random.Random, returning nothing or raising grpc.RpcError) with `deadline` seconds per call.
    Records (op name, status code name, seconds) for every call; never waits on a call longer
    than its deadline, so a hang shows as DEADLINE_EXCEEDED with its duration."""

    def __init__(self, rpc, ops, threads=4, deadline=3.0, pause=0.005):
        import random

        self.rpc, self.ops, self.deadline, self.pause = rpc, ops, deadline, pause
        self.results = []
        self.details = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(random.Random(i),),
                                         daemon=True) for i in range(threads)]

    def _run(self, rnd):
        grpc = self.rpc.grpc
        while not self.stopping.is_set():
            name, fn = rnd.choice(self.ops)
            t0 = time.monotonic()
            try:
                fn(self.rpc, rnd, self.deadline)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                if code not in self.details:  # the first of each status, for diagnosis
                    self.details[code] = (time.time(), name, e.details())
            except Exception as e:  # a bug in the op itself: recorded, never hidden
                code = "CLIENT_ERROR:%s" % type(e).__name__
            with self.lock:
                self.results.append((name, code, time.monotonic() - t0))
            time.sleep(self.pause)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.deadline + 5)
        return self.results
