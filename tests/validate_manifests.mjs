// Validates Kubernetes manifest documents against the OpenAPI schemas of the real APIs
// (tests/schema/README.md: which npm packages, which upstream versions). Called by
// tests/deploy_check.py as `node tests/validate_manifests.mjs <folder>`, the folder the
// pinned packages are installed in (tests/.schema-cache, the default).
//
// stdin: JSON [{label, doc, freeForm: ["spec.wasm[].config", ...]}, ...]
// stdout: JSON [{label, schema, errors: ["spec.x: message", ...]}, ...], one per input.
//
// Two checks per document:
// - the package's compiled validator (types, enums, required fields, patterns, formats:
//   everything the API server's OpenAPI validation checks, CEL rules excepted);
// - unknown fields. The CRD schemas do not set additionalProperties: false (the API
//   server prunes unknown fields, and `kubectl apply` refuses them: strict field
//   validation), so the validator ignores them. Each field of the document is probed
//   instead: its value is replaced by a BigInt, which no schema type accepts, and a
//   field the schema knows then fails validation at its own path; one that raises no
//   error there is unknown. Fields the schema leaves free-form (an Envoy config inside
//   an EnvoyFilter patch, the plugin JSON) must be declared by the caller (freeForm);
//   their contents are not probed, and a declared free-form field the schema does type
//   is reported (the declaration would hide typos).

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const prefix = path.resolve(process.argv[2] ?? path.join(path.dirname(new URL(import.meta.url).pathname), ".schema-cache"));
const require = createRequire(path.join(prefix, "package.json"));

// apiVersion group -> package (and the folder of its models).
const PACKAGES = [
  [/^(networking|security|extensions|telemetry)\.istio\.io$/, "@kubernetes-models/istio"],
  [/^gateway\.networking\.k8s\.io$/, "@kubernetes-models/gateway-api"],
  [/^gateway\.envoyproxy\.io$/, "@kubernetes-models/envoy-gateway"],
  [/^(|apps|batch|policy|autoscaling|networking\.k8s\.io|rbac\.authorization\.k8s\.io)$/, "kubernetes-models"],
];

function modelPath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const hit = PACKAGES.find(([re]) => re.test(group));
  if (!hit) return null;
  const pkg = hit[1];
  // kubernetes-models: core kinds under v1/, others under <group>/<version>/.
  const folder = group === "" ? version : `${group}/${version}`;
  return { pkg, file: `${pkg}/${folder}/${kind}.js` };
}

async function loadModel(apiVersion, kind) {
  const where = modelPath(apiVersion, kind);
  if (!where) return { error: `no schema package for apiVersion ${apiVersion}` };
  let pkgJson;
  try {
    pkgJson = require.resolve(`${where.pkg}/package.json`);
  } catch {
    return { error: `${where.pkg} is not installed in ${prefix}` };
  }
  // The model file, by path: a kind the package lacks is then a clear error.
  const file = path.join(path.dirname(pkgJson), where.file.slice(where.pkg.length + 1));
  let mod;
  try {
    mod = await import(pathToFileURL(file).href);
  } catch (e) {
    if (e.code === "ERR_MODULE_NOT_FOUND") return { error: `${where.pkg} has no ${apiVersion} ${kind}` };
    throw e;
  }
  const Model = mod[kind];
  if (!Model || Model.apiVersion !== apiVersion || Model.kind !== kind) {
    return { error: `${where.file} does not define ${apiVersion} ${kind}` };
  }
  const { version } = JSON.parse(readFileSync(pkgJson, "utf8"));
  return { Model, schema: `${where.pkg}@${version}` };
}

// The validator's errors for `doc` ([] when valid).
function errorsOf(Model, doc) {
  try {
    new Model(doc).validate();
    return [];
  } catch (e) {
    if (!Array.isArray(e.errors)) throw e;
    return e.errors;
  }
}

const pointer = (parts) => parts.map((p) => "/" + String(p).replaceAll("~", "~0").replaceAll("/", "~1")).join("");
const dotted = (parts) => parts.reduce((s, p) => (typeof p === "number" ? `${s}[${p}]` : s ? `${s}.${p}` : p), "");
// The freeForm spelling of a path: list indices as [].
const pattern = (parts) => parts.reduce((s, p) => (typeof p === "number" ? `${s}[]` : s ? `${s}.${p}` : p), "");

function describe(error) {
  const where = error.instancePath.split("/").slice(1).map((p) => p.replaceAll("~1", "/").replaceAll("~0", "~"));
  const at = dotted(where.map((p) => (/^\d+$/.test(p) ? Number(p) : p))) || "(document)";
  const { params } = error;
  let detail = error.message ?? error.keyword;
  if (error.keyword === "enum") detail = `must be one of ${JSON.stringify(params.allowedValues)}`;
  else if (error.keyword === "required") detail = `missing required field ${JSON.stringify(params.missingProperty)}`;
  else if (error.keyword === "type") detail = `must be ${params.type}`;
  else if (error.keyword === "pattern") detail = `must match ${params.pattern}`;
  else if (!error.message) detail = `${error.keyword} ${JSON.stringify(params)}`;
  return `${at}: ${detail}`;
}

function setAt(doc, parts, value) {
  const copy = structuredClone(doc);
  let node = copy;
  for (const p of parts.slice(0, -1)) node = node[p];
  node[parts.at(-1)] = value;
  return copy;
}

// Paths (lists of keys and indices) of every object field in `doc`, skipping the
// contents of free-form fields; and the free-form fields found.
function fieldPaths(doc, freeForm) {
  const fields = [];
  const free = [];
  const walk = (node, parts) => {
    if (Array.isArray(node)) node.forEach((v, i) => walk(v, [...parts, i]));
    else if (node !== null && typeof node === "object") {
      for (const [k, v] of Object.entries(node)) {
        const here = [...parts, k];
        if (freeForm.has(pattern(here))) free.push(here);
        else {
          fields.push(here);
          walk(v, here);
        }
      }
    }
  };
  walk(doc, []);
  return { fields, free };
}

const PROBE = 0n; // no JSON schema type admits a BigInt

function knownField(Model, doc, parts) {
  const at = pointer(parts);
  return errorsOf(Model, setAt(doc, parts, PROBE)).some((e) => e.instancePath === at || e.instancePath.startsWith(at + "/"));
}

async function check({ label, doc, freeForm = [] }) {
  if (doc === null || typeof doc !== "object" || typeof doc.apiVersion !== "string" || typeof doc.kind !== "string") {
    return { label, schema: null, errors: ["(document): no apiVersion/kind"] };
  }
  const loaded = await loadModel(doc.apiVersion, doc.kind);
  if (loaded.error) return { label, schema: null, errors: [loaded.error] };
  const { Model, schema } = loaded;
  const errors = errorsOf(Model, doc).map(describe);
  const { fields, free } = fieldPaths(doc, new Set(freeForm));
  // apiVersion/kind are checked by the validator's enums; probing them is pointless.
  for (const parts of fields) {
    if (parts.length === 1 && (parts[0] === "apiVersion" || parts[0] === "kind")) continue;
    if (!knownField(Model, doc, parts)) errors.push(`${dotted(parts)}: unknown field`);
  }
  for (const parts of free) {
    const value = parts.reduce((node, p) => node[p], doc);
    if (value === null || typeof value !== "object" || Array.isArray(value)) continue;
    const typed = Object.keys(value).filter((k) => knownField(Model, doc, [...parts, k]));
    if (typed.length) errors.push(`${dotted(parts)}: declared free-form, but the schema types ${typed.join(", ")}`);
  }
  return { label, schema, errors };
}

const input = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const item of input) out.push(await check(item));
process.stdout.write(JSON.stringify(out));
