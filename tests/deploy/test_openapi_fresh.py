"""
docs/openapi/*.swagger.json are the OpenAPI (Swagger 2.0) documents protoc-gen-swagger emits
from our protos (tools/gateway/build.sh); this test fails when the committed copies differ from
what the build generated, naming the command that refreshes them, or when a document has no
operations (a service whose bindings the generator dropped).
"""
import glob
import json
import os
import sys

SRC = os.environ["HM_TEST_SRC_ROOT"]
GEN = os.environ["HM_TEST_GATEWAY_DIR"]
AREAS = os.environ["HM_TEST_GATEWAY_AREAS"].split(",")


def main():
    bad = []
    total = 0
    for area in AREAS:
        name = area + ".swagger.json"
        with open(os.path.join(GEN, name), encoding="utf-8") as f:
            gen = json.load(f)
        committed = os.path.join(SRC, "docs", "openapi", name)
        if not os.path.exists(committed):
            bad.append("docs/openapi/%s missing" % name)
            continue
        with open(committed, encoding="utf-8") as f:
            doc = json.load(f)
        if doc != gen:
            bad.append("docs/openapi/%s differs from the generated one" % name)
        ops = sum(len(v) for v in gen.get("paths", {}).values())
        if ops == 0:
            bad.append("%s: no paths" % name)
        total += ops
        print("%-28s %3d operations" % (name, ops))
    extra = sorted(set(os.path.basename(p) for p in glob.glob(
        os.path.join(SRC, "docs", "openapi", "*.swagger.json"))) - {a + ".swagger.json" for a in AREAS})
    bad += ["docs/openapi/%s is not generated any more" % e for e in extra]
    print("%d operations in %d documents" % (total, len(AREAS)))
    for b in bad:
        print("FAIL  " + b)
    if bad:
        print("refresh: cp %s/*.swagger.json docs/openapi/" % GEN)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
