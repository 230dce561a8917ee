// Validates every object of every rendered overlay (issue 11):
//   1. `kubectl kustomize <overlay>` renders (kubectl 1.32 with kustomize 5.5: components);
//   2. each built-in object validates against its Kubernetes JSON schema (npm kubernetes-models
//      4.x, `new Model(obj).validate()`);
//   3. TypeScript excess-property check: every object becomes an object literal typed with its
//      model interface (IDeployment, IService, ...) and `tsc --noEmit --strict` must accept it.
//      The JSON schemas allow unknown fields, so a misspelled field (`readOnlyRootFileSystem`)
//      passes step 2 and fails here;
//   4. CloudNativePG resources (no published typed model): a structural check, cnpgCluster and
//      cnpgScheduledBackup below: known fields only at the levels we use, required fields
//      present with the right types.
// Usage: node validate.mjs OVERLAY_DIR... ; KUBECTL names kubectl (default: kubectl on PATH).
// Prints one line per overlay with counts; exits 1 listing every problem.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import yaml from "js-yaml";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const kubectl = process.env.KUBECTL || "kubectl";
const problems = [];
const fail = (where, msg) => problems.push(`${where}: ${msg}`);

function modelPath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

// ---- CloudNativePG: structural checks (fields as documented for postgresql.cnpg.io/v1) ----
const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
function onlyKeys(where, obj, allowed) {
  for (const k of Object.keys(obj)) if (!allowed.includes(k)) fail(where, `unknown field "${k}"`);
}
function cnpgCluster(where, o) {
  onlyKeys(where, o, ["apiVersion", "kind", "metadata", "spec"]);
  const s = o.spec;
  if (!isObj(s)) return fail(where, "spec missing");
  onlyKeys(`${where} spec`, s, ["instances", "imageName", "primaryUpdateStrategy", "storage",
    "postgresql", "bootstrap", "resources", "backup", "monitoring", "affinity",
    "enableSuperuserAccess", "walStorage"]);
  if (!Number.isInteger(s.instances) || s.instances < 1) fail(where, "spec.instances must be an integer >= 1");
  if (!isObj(s.storage) || typeof s.storage.size !== "string" || !/^\d+(Mi|Gi|Ti)$/.test(s.storage.size))
    fail(where, "spec.storage.size must be a quantity like 5Gi");
  if (s.imageName !== undefined && !/^[\w./-]+:[\w.-]+$/.test(s.imageName)) fail(where, "spec.imageName must be image:tag");
  if (s.primaryUpdateStrategy !== undefined && !["unsupervised", "supervised"].includes(s.primaryUpdateStrategy))
    fail(where, "spec.primaryUpdateStrategy must be unsupervised or supervised");
  const init = s.bootstrap && s.bootstrap.initdb;
  if (!isObj(init)) fail(where, "spec.bootstrap.initdb missing");
  else {
    onlyKeys(`${where} initdb`, init, ["database", "owner", "secret", "postInitApplicationSQL", "encoding", "localeCType", "localeCollate"]);
    for (const k of ["database", "owner"]) if (typeof init[k] !== "string" || !init[k]) fail(where, `initdb.${k} required`);
    if (init.postInitApplicationSQL !== undefined && !(Array.isArray(init.postInitApplicationSQL) && init.postInitApplicationSQL.every((x) => typeof x === "string")))
      fail(where, "initdb.postInitApplicationSQL must be a list of strings");
  }
  if (s.postgresql !== undefined) {
    onlyKeys(`${where} postgresql`, s.postgresql, ["parameters", "pg_hba"]);
    for (const [k, v] of Object.entries(s.postgresql.parameters || {}))
      if (typeof v !== "string") fail(where, `postgresql.parameters.${k} must be a string`);
  }
  if (s.resources !== undefined) onlyKeys(`${where} resources`, s.resources, ["requests", "limits"]);
  if (s.backup !== undefined) {
    onlyKeys(`${where} backup`, s.backup, ["retentionPolicy", "barmanObjectStore", "target"]);
    const b = s.backup.barmanObjectStore;
    if (!isObj(b) || typeof b.destinationPath !== "string" || !/^(s3|gs|https?):\/\//.test(b.destinationPath))
      fail(where, "backup.barmanObjectStore.destinationPath must be an object-store URL");
    else {
      onlyKeys(`${where} barmanObjectStore`, b, ["destinationPath", "endpointURL", "s3Credentials", "googleCredentials", "azureCredentials", "wal", "data"]);
      for (const [k, ref] of Object.entries(b.s3Credentials || {}))
        if (!isObj(ref) || !ref.name || !ref.key) fail(where, `s3Credentials.${k} must be a secret reference {name, key}`);
    }
    if (s.backup.retentionPolicy !== undefined && !/^\d+[dwm]$/.test(s.backup.retentionPolicy))
      fail(where, "backup.retentionPolicy must look like 30d");
  }
}
function cnpgScheduledBackup(where, o) {
  onlyKeys(where, o, ["apiVersion", "kind", "metadata", "spec"]);
  const s = o.spec || {};
  onlyKeys(`${where} spec`, s, ["schedule", "cluster", "backupOwnerReference", "immediate", "suspend", "method"]);
  // CloudNativePG schedules have six fields (seconds first).
  if (typeof s.schedule !== "string" || s.schedule.trim().split(/\s+/).length !== 6)
    fail(where, "spec.schedule must be a six-field cron expression");
  if (!isObj(s.cluster) || !s.cluster.name) fail(where, "spec.cluster.name required");
}
const custom = {
  "postgresql.cnpg.io/v1/Cluster": cnpgCluster,
  "postgresql.cnpg.io/v1/ScheduledBackup": cnpgScheduledBackup,
};

// ---- per overlay ----
const tsLines = [];
let typed = 0;
const overlays = process.argv.slice(2);
if (overlays.length === 0) {
  console.error("usage: node validate.mjs OVERLAY_DIR...");
  process.exit(2);
}
for (const dir of overlays) {
  const name = path.basename(dir);
  let out;
  try {
    out = execFileSync(kubectl, ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 << 20, stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    fail(name, `kubectl kustomize failed: ${e.stderr || e.message}`);
    continue;
  }
  const docs = yaml.loadAll(out).filter(Boolean);
  const kinds = {};
  let schemaOk = 0, structural = 0;
  const cnpgClusters = new Set();
  for (const o of docs) {
    const where = `${name} ${o.kind}/${o.metadata && o.metadata.name}`;
    kinds[o.kind] = (kinds[o.kind] || 0) + 1;
    const key = `${o.apiVersion}/${o.kind}`;
    if (custom[key]) {
      custom[key](where, o);
      if (o.kind === "Cluster") cnpgClusters.add(o.metadata.name);
      structural++;
      continue;
    }
    // kustomize's secretGenerator wraps base64 at 70 columns; the API server's decoder (Go's
    // encoding/base64) skips the newlines, the schema's "byte" format does not: unwrap first.
    if (o.kind === "Secret" && isObj(o.data))
      for (const k of Object.keys(o.data)) o.data[k] = String(o.data[k]).replace(/\s+/g, "");
    let mod;
    try {
      mod = await import(modelPath(o.apiVersion, o.kind));
    } catch (e) {
      fail(where, `no model for ${o.apiVersion} ${o.kind} (and no structural check)`);
      continue;
    }
    const Model = mod[o.kind];
    try {
      new Model(o).validate();
      schemaOk++;
    } catch (e) {
      fail(where, `schema: ${e.message.split("\n").slice(0, 6).join(" | ")}`);
    }
    const alias = `T${typed}`;
    tsLines.push(`import type { I${o.kind} as ${alias} } from "${modelPath(o.apiVersion, o.kind)}";`);
    tsLines.push(`// ${where}\nexport const o${typed}: ${alias} = ${JSON.stringify(o, null, 1)};`);
    typed++;
  }
  // Cross-reference: ScheduledBackups name existing Clusters.
  for (const o of docs)
    if (o.kind === "ScheduledBackup" && !cnpgClusters.has(o.spec.cluster.name))
      fail(`${name} ScheduledBackup/${o.metadata.name}`, `cluster ${o.spec.cluster.name} not in the overlay`);
  console.log(`${name}: ${docs.length} objects rendered, ${schemaOk} valid against the Kubernetes schemas, ` +
    `${structural} CloudNativePG objects checked structurally (${Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(", ")})`);
}

// ---- TypeScript excess-property check over the same objects ----
if (typed > 0) {
  const gen = fs.mkdtempSync(path.join(here, ".gen-"));
  try {
    const file = path.join(gen, "objects.ts");
    fs.writeFileSync(file, tsLines.join("\n") + "\n");
    const program = ts.createProgram([file], {
      strict: true, noEmit: true, target: ts.ScriptTarget.ES2020, module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Node10, skipLibCheck: true, types: [],
    });
    const diags = ts.getPreEmitDiagnostics(program);
    for (const d of diags) {
      let where = "typescript";
      if (d.file && d.start !== undefined) {
        const { line } = d.file.getLineAndCharacterOfPosition(d.start);
        // The comment above each literal names the object; find the nearest one.
        const lines = d.file.text.split("\n");
        for (let i = line; i >= 0; i--) if (lines[i].startsWith("// ")) { where = lines[i].slice(3); break; }
      }
      fail(where, `typescript: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`);
    }
    console.log(`typescript: ${typed} objects type-checked against their models, ${diags.length} errors`);
  } finally {
    fs.rmSync(gen, { recursive: true, force: true });
  }
}

for (const p of problems) console.log(`FAIL  ${p}`);
process.exit(problems.length ? 1 : 0);
