#!/usr/bin/python3
"""Writes the seed corpora of fuzz_jwt, fuzz_traceparent and fuzz_identity into
tests/fuzz/corpus/<target>/ as seed-* files (replacing earlier seed-* files, leaving any other
file alone). Deterministic. The input layouts are described at the head of each target's .c.

  /usr/bin/python3 tests/fuzz/make-corpus-extra.py
"""
import base64
import glob
import hashlib
import hmac
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"fuzz-secret-0123456789abcdef0123456789abcdef"  # fuzz_jwt.c's SECRET
EXP = 4102444800  # 2100-01-01


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def signed(header, claims):
    h = json.dumps(header, separators=(",", ":")).encode()
    c = json.dumps(claims, separators=(",", ":")).encode()
    s = b64(h) + b"." + b64(c)
    return s + b"." + b64(hmac.new(SECRET, s, hashlib.sha256).digest())


def jwt_seeds():
    hs = {"alg": "HS256", "typ": "JWT"}
    good = {"sub": "guest-1", "roles": ["guest"], "iat": 1700000000, "exp": EXP}
    staff = {"sub": "staff-1", "roles": ["staff"], "venues": ["v1", "v2"], "exp": EXP}
    out = {
        "bearer-valid": b"\x00" + signed(hs, good),
        "bearer-expired": b"\x00" + signed(hs, dict(good, exp=1000)),
        "bearer-none-alg": b"\x00" + b64(b'{"alg":"none"}') + b"." + b64(b'{"sub":"x"}') + b".",
        "bearer-two-parts": b"\x00abc.def",
        "bearer-bad-b64": b"\x00a$b.c!d.e*f",
        "raw-basic": b"\x01Basic dXNlcjpwYXNz",
        "raw-bearer-spaces": b"\x01bearer   " + signed(hs, good),
        "raw-empty": b"\x01",
        "apikey-valid": b"\x02fuzz-key",
        "apikey-wrong": b"\x02not-the-key",
    }
    parts = {
        "signed-guest": (hs, good),
        "signed-staff": (hs, staff),
        "signed-service": (hs, {"sub": "bookingd", "roles": ["service", "admin"], "exp": EXP}),
        "signed-nbf-future": (hs, dict(good, nbf=EXP - 10)),
        "signed-no-exp": (hs, {"sub": "guest-1", "roles": ["guest"]}),
        "signed-exp-string": (hs, dict(good, exp="soon")),
        "signed-roles-string": (hs, dict(good, roles="guest")),
        "signed-empty-sub": (hs, dict(good, sub="")),
        "signed-aud-list": (hs, dict(good, aud=["a", "b"], iss="issuer")),
        "signed-kid": (dict(hs, kid="k1"), good),
        "signed-rs256-header": ({"alg": "RS256", "typ": "JWT"}, good),
        "signed-unknown-role": (hs, dict(good, roles=["wizard", 7, None])),
    }
    for name, (h, c) in parts.items():
        text = json.dumps(h).encode() + b"\n" + json.dumps(c).encode()
        out[name] = b"\x03" + text
        if name in ("signed-guest", "signed-staff"):
            out[name + "-cached"] = b"\x04" + text
    out["signed-not-json"] = b"\x03{\"alg\":\"HS256\"\n[1,2"
    return out


def traceparent_seeds():
    t, p = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    return {
        "v00-sampled": "00-%s-%s-01" % (t, p),
        "v00-unsampled": "00-%s-%s-00" % (t, p),
        "v00-flags-ff": "00-%s-%s-ff" % (t, p),
        "v00-upper": "00-%s-%s-01" % (t.upper(), p),
        "v00-zero-trace": "00-%s-%s-01" % ("0" * 32, p),
        "v00-zero-parent": "00-%s-%s-01" % (t, "0" * 16),
        "v00-long": "00-%s-%s-01-extra" % (t, p),
        "v00-short": "00-%s-%s-1" % (t, p),
        "v01-extra": "01-%s-%s-01-what-ever" % (t, p),
        "v01-exact": "cc-%s-%s-01" % (t, p),
        "vff": "ff-%s-%s-01" % (t, p),
        "bad-dashes": "00_%s_%s_01" % (t, p),
        "empty": "",
    }


def identity_seeds():
    # byte 0: type (1 email, 2 phone, 3 device, 4 session, 5 app user), byte 1: app (0..5)
    s = [
        (1, 0, " Ada.Lovelace@Example.ORG "), (1, 0, "test@test.com"), (1, 0, "a@b@c"),
        (1, 0, "no-at-sign"), (1, 2, "ada@example.org"), (2, 0, "+44 20 7946 0000"),
        (2, 0, "(020) 7946-0000"), (2, 0, "+1 (555) 010-9999"), (2, 0, "0000"),
        (3, 1, "device-7f3a.ios_17"), (3, 0, "  dev-1  "), (4, 1, "sess-e177f631"),
        (4, 0, "anonymous"), (4, 0, "null"), (5, 3, "user_42"), (5, 0, "user_42"),
        (5, 1, "x" * 129), (0, 0, "zero type"), (6, 0, "bad type"), (7, 5, ""),
        (4, 0, "00000000-0000-0000-0000-000000000000"), (3, 2, "dev ice"),
    ]
    return {"%d-%d-%02d" % (t, a, i): bytes([t, a]) + v.encode()
            for i, (t, a, v) in enumerate(s)}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for f in glob.glob(os.path.join(d, "seed-*")):
        os.remove(f)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


if __name__ == "__main__":
    write("fuzz_jwt", jwt_seeds())
    write("fuzz_traceparent", traceparent_seeds())
    write("fuzz_identity", identity_seeds())
