"""
The container image's contract, checked without a Docker engine (issue 11).

1. `meson install --destdir` of the build under test into a fresh folder outside the source and
   build trees (the Dockerfile's build stage does the same with --prefix=/usr).
2. ldd of every installed executable: no library "not found", and the Debian package owning
   each library (dpkg -S) is one the Dockerfile's runtime stage installs, a package those depend
   on (Depends/Pre-Depends, followed recursively as dpkg records them here), or part of
   bookworm-slim itself (Essential or Priority: required). Sanitizer runtimes (libasan,
   libubsan) are skipped when the build under test is sanitized: the image is built without.
3. The Dockerfile: a bookworm build stage, a bookworm-slim runtime stage that runs as a non-root
   USER, a stage per daemon whose ENTRYPOINT is the installed binary, --prefix=/usr (the path the
   Envoy component copies the descriptor set from), and the installed descriptor set.
4. The five daemons start from the install tree with the build folder and the source tree
   hidden (a private mount namespace with empty tmpfs over both), each with the environment the
   dev overlay gives it (deploy/k8s/overlays/dev rendered by kubectl kustomize: the hm-mesh and
   daemon ConfigMaps, the generated Secrets, the JWT key file), so every value the manifests set
   is one the daemon accepts. Only what points at the cluster is replaced: listen addresses,
   database, Redis, the OTLP collector (dropped), the pod IP. Each answers SERVING on its
   liveness and readiness names, then drains on SIGTERM and exits 0.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import hmtest  # noqa: E402

SRC = hmtest.SRC_ROOT
BUILD = os.path.realpath(hmtest.BUILD_ROOT)
DAEMONS = ["guestd", "bookingd", "recommenderd", "gamificationd", "privacyd"]
problems = []


def fail(msg):
    problems.append(msg)


def dockerfile():
    with open(os.path.join(SRC, "Dockerfile"), encoding="utf-8") as f:
        text = f.read()
    # join continuation lines, drop comments
    lines = []
    for line in text.replace("\\\n", " ").splitlines():
        if not line.lstrip().startswith("#"):
            lines.append(line)
    stages = []  # (base, name, [instructions])
    for line in lines:
        m = re.match(r"\s*FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            stages.append((m.group(1), m.group(2), []))
        elif stages and line.strip():
            stages[-1][2].append(line.strip())
    return stages


def apt_packages(instructions):
    pkgs = []
    for ins in instructions:
        for m in re.finditer(r"apt-get install ([^&]*)", ins):
            pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    return pkgs


def dpkg_db():
    out = subprocess.run(["dpkg-query", "-W", "-f",
                          "${Package}\t${Essential}\t${Priority}\t${Depends}\t${Pre-Depends}\t${Provides}\n"],
                         capture_output=True, text=True, check=True).stdout
    deps, base, provides = {}, set(), {}
    for line in out.splitlines():
        name, ess, prio, dep, pre, prov = (line.split("\t") + [""] * 6)[:6]
        alts = []
        for group in filter(None, (dep + ("," if dep and pre else "") + pre).split(",")):
            alts.append([re.sub(r"[\s:(].*", "", a.strip()) for a in group.split("|")])
        deps[name] = alts
        if ess == "yes" or prio == "required":
            base.add(name)
        for p in filter(None, prov.split(",")):
            provides.setdefault(re.sub(r"[\s:(].*", "", p.strip()), []).append(name)
    return deps, base, provides


def closure(roots, deps, provides):
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for alts in deps.get(p, []):
            for a in alts:  # every alternative that is installed here may be the one used
                for real in [a] + provides.get(a, []):
                    if real in deps and real not in seen:
                        todo.append(real)
    return seen


_owners = None


def owner(path):
    """The package that installed `path` (dpkg's file lists, read once: `dpkg -S` per file is
    slow), trying the /lib <-> /usr/lib aliases of the merged /usr."""
    global _owners
    if _owners is None:
        _owners = {}
        for lst in glob.glob("/var/lib/dpkg/info/*.list"):
            pkg = os.path.basename(lst)[:-5].split(":")[0]
            with open(lst, encoding="utf-8", errors="replace") as f:
                for line in f:
                    _owners.setdefault(line.rstrip("\n"), pkg)
    cands = [path, os.path.realpath(path)]
    for c in list(cands):
        if c.startswith("/usr/lib/"):
            cands.append(c[4:])
        elif c.startswith("/lib/"):
            cands.append("/usr" + c)
    for c in cands:
        if c in _owners:
            return _owners[c]
    return None


def overlay_env(overlay, scratch):
    """{daemon: {NAME: value}} as the rendered overlay sets them, cluster endpoints replaced."""
    import base64

    import yaml

    r = subprocess.run([os.environ.get("KUBECTL") or "kubectl", "kustomize", overlay],
                       capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    cms = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "Secret"}
    out = {}
    for d in docs:
        if d["kind"] != "Deployment" or d["metadata"]["name"] not in DAEMONS:
            continue
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {}
        for ef in c.get("envFrom", []):
            env.update(cms[ef["configMapRef"]["name"]])
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if "value" in e:
                env[e["name"]] = e["value"]
            elif ref and ref["name"] in secrets:
                env[e["name"]] = base64.b64decode("".join(secrets[ref["name"]][ref["key"]].split())).decode()
        # the JWT key files: the Secret's volume, mounted at /etc/hm/jwt in the pod
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        for v in pod.get("volumes", []):
            if "secret" in v and v["name"] in mounts and v["secret"]["secretName"] in secrets:
                keydir = tempfile.mkdtemp(prefix="jwt-", dir=scratch)
                for k, val in secrets[v["secret"]["secretName"]].items():
                    with open(os.path.join(keydir, k), "wb") as f:
                        f.write(base64.b64decode("".join(val.split())))
                for k, val in list(env.items()):
                    env[k] = val.replace(mounts[v["name"]], keydir)
        for k in ("HM_GRPC_ADDR", "HM_ADMIN_ADDR", "HM_DATABASE_URL", "HM_REDIS_ADDR",
                  "HM_OTLP_ENDPOINT"):
            env.pop(k, None)
        env["HM_POD_IP"] = "127.0.0.1"
        out[d["metadata"]["name"]] = env
    return out


def sanitized():
    r = subprocess.run(["meson", "introspect", "--buildoptions", BUILD], capture_output=True, text=True)
    import json

    try:
        opts = {o["name"]: o["value"] for o in json.loads(r.stdout)}
    except ValueError:
        return False
    return opts.get("b_sanitize", "none") not in ("none", "")


def main():
    stages = dockerfile()
    named = {n: (b, ins) for b, n, ins in stages if n}
    if "build" not in named or not named["build"][0].startswith("debian:bookworm"):
        fail("Dockerfile: no build stage FROM debian:bookworm")
    if "runtime" not in named or named["runtime"][0] != "debian:bookworm-slim":
        fail("Dockerfile: no runtime stage FROM debian:bookworm-slim")
        return 1
    runtime_ins = named["runtime"][1]
    user = [i for i in runtime_ins if i.upper().startswith("USER ")]
    if not user or user[-1].split()[1].split(":")[0] in ("0", "root"):
        fail("Dockerfile: the runtime stage does not switch to a non-root USER")
    build_ins = " ".join(named["build"][1])
    if "--prefix=/usr" not in build_ins or "meson install" not in build_ins or "--destdir" not in build_ins:
        fail("Dockerfile: the build stage does not `meson install --destdir` with --prefix=/usr")
    for d in DAEMONS + ["hm-gateway"]:
        st = named.get(d)
        if not st or st[0] != "runtime" or not any(
                i.startswith("ENTRYPOINT") and '"/usr/bin/%s"' % d in i for i in st[1]):
            fail("Dockerfile: no stage %s FROM runtime with ENTRYPOINT [\"/usr/bin/%s\"]" % (d, d))
    runtime_pkgs = apt_packages(runtime_ins)
    print("runtime stage installs: %s" % " ".join(runtime_pkgs))

    deps, base, provides = dpkg_db()
    for p in runtime_pkgs:
        if p not in deps:
            fail("runtime package %s is not a package installed here (misspelled?)" % p)
    allowed = closure(set(runtime_pkgs) | base, deps, provides)

    tmp = tempfile.mkdtemp(prefix="hm-install-")
    try:
        dest = os.path.join(tmp, "root")
        r = subprocess.run(["meson", "install", "-C", BUILD, "--destdir", dest, "--no-rebuild",
                            "--quiet"], capture_output=True, text=True)
        if r.returncode != 0:
            fail("meson install failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
            return 1
        bindirs = glob.glob(os.path.join(dest, "**", "bin"), recursive=True)
        exes = sorted(p for d in bindirs for p in glob.glob(os.path.join(d, "*"))
                      if os.access(p, os.X_OK) and not os.path.isdir(p))
        names = {os.path.basename(p): p for p in exes}
        for d in DAEMONS + ["hmctl"]:
            if d not in names:
                fail("%s is not installed" % d)
        if not glob.glob(os.path.join(dest, "**", "share", "hospitality-mesh", "hm_descriptor_set.pb"),
                         recursive=True):
            fail("share/hospitality-mesh/hm_descriptor_set.pb is not installed")
        skip_sanitizers = sanitized()
        libs_checked = set()
        for exe in exes:
            out = subprocess.run(["ldd", exe], capture_output=True, text=True)
            if "not a dynamic executable" in out.stdout + out.stderr:
                print("%-14s static" % os.path.basename(exe))
                continue
            pkgs = set()
            for line in out.stdout.splitlines():
                if "not found" in line:
                    fail("%s: %s" % (os.path.basename(exe), line.strip()))
                    continue
                m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
                if not m:
                    continue  # linux-vdso
                lib = m.group(1)
                if skip_sanitizers and re.search(r"lib(asan|ubsan|lsan|tsan)\.so", lib):
                    continue
                if BUILD in os.path.realpath(lib) or SRC in os.path.realpath(lib):
                    fail("%s links %s from the build/source tree" % (os.path.basename(exe), lib))
                    continue
                pkg = owner(lib)
                libs_checked.add(lib)
                if pkg is None:
                    fail("%s: %s belongs to no Debian package" % (os.path.basename(exe), lib))
                elif pkg not in allowed:
                    fail("%s: %s (package %s) is not provided by the runtime stage" % (
                        os.path.basename(exe), lib, pkg))
                else:
                    pkgs.add(pkg)
            print("%-14s %d packages: %s" % (os.path.basename(exe), len(pkgs), " ".join(sorted(pkgs))))
        print("%d executables, %d distinct libraries checked%s" % (
            len(exes), len(libs_checked), " (sanitizer runtimes skipped)" if skip_sanitizers else ""))

        # run the installed daemons with the build and source trees hidden (needs the stack
        # of tests/run-all.sh: without it, report the checks above and skip)
        if not all(os.environ.get(v) for v in ("HM_TEST_PG_HOST", "HM_TEST_PG_PORT",
                                                  "HM_TEST_REDIS_ADDR", "HM_TEST_PORT_BASE")):
            for p in problems:
                print("FAIL  " + p)
            print("SKIP: the daemons' start needs the test environment of tests/run-all.sh")
            return 1 if problems else 77
        if os.geteuid() != 0 or not shutil.which("unshare"):
            fail("cannot hide the build folder (needs root and unshare)")
            return 1
        hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'for d in "$1" "$2"; do mount -t tmpfs -o size=1m hm-hidden "$d" || exit 97; done; '
                'shift 2; [ -z "$(ls -A "$HM_TEST_BUILD_ROOT_HIDDEN")" ] || exit 98; exec "$@"',
                "sh", BUILD, os.path.realpath(SRC)]
        envs = overlay_env(os.path.join(SRC, "deploy", "k8s", "overlays", "dev"), tmp)
        running = []
        try:
            for d in DAEMONS:
                env = dict(envs[d], HM_TEST_BUILD_ROOT_HIDDEN=BUILD)
                daemon = hmtest.Daemon(d, names[d], wrapper=hide, env=env)
                running.append(daemon)
                daemon.start()
                for svc in ("liveness", "readiness"):
                    daemon.wait_status(hmtest.SERVING, service=svc, timeout=10)
                print("%-14s SERVING from %s with the dev overlay's %d variables" % (
                    d, os.path.relpath(names[d], dest), len(envs[d])))
            for daemon in running:
                rc = daemon.stop()
                if rc != 0:
                    fail("%s exited %s after SIGTERM\n%s" % (daemon.name, rc, daemon.log_tail(20)))
        except hmtest.DaemonError as e:
            fail(str(e))
        finally:
            for daemon in running:
                daemon.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for p in problems:
        print("FAIL  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
