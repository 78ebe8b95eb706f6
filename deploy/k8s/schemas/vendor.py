#!/usr/bin/env python3
"""Writes the JSON schemas that tests/deploy.rs validates deploy/k8s against.

    pip download --no-deps kubernetes-validate==1.37.0   # a wheel: a zip file
    python3 deploy/k8s/schemas/vendor.py \
        --kubernetes-validate kubernetes_validate-1.37.0-py3-none-any.whl \
        --kubernetes 1.32.0 \
        --keda-crds DIR --keda v2.20.2   # DIR: config/crd/bases of kedacore/keda at that tag

Kubernetes: the strict schema of each kind (`additionalProperties: false`
on every object) from kubernetes-validate's `v<version>-local-strict`
folder, made self-contained: only the definitions the kind reaches are
copied from `_definitions.json` into the schema's own `$defs`.

KEDA: the `openAPIV3Schema` of each CRD, made strict the way the API
server's strict field validation (kubectl's default) treats unknown
fields: `additionalProperties: false` on every object that lists its
properties and neither allows other keys nor preserves unknown fields.
`apiVersion` and `kind` are pinned, and `metadata` gets Kubernetes'
ObjectMeta. CEL rules (`x-kubernetes-validations`) are left as they are
(annotations here): tests/deploy.rs checks the one the ScaledObject has.

Needs PyYAML. Only the Python standard library otherwise.
"""

import argparse
import copy
import json
import pathlib
import zipfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
DRAFT = "https://json-schema.org/draft/2020-12/schema"
K8S_REF = "/api/_definitions.json#/$defs/"

# (file in kubernetes-validate, kind, apiVersion)
K8S_KINDS = [
    ("deployment-apps-v1.json", "Deployment", "apps/v1"),
    ("networkpolicy-networking-v1.json", "NetworkPolicy", "networking.k8s.io/v1"),
]
# (CRD file, version, kind, group)
KEDA_KINDS = [
    ("keda.sh_scaledobjects.yaml", "v1alpha1", "ScaledObject", "keda.sh"),
    ("keda.sh_triggerauthentications.yaml", "v1alpha1", "TriggerAuthentication", "keda.sh"),
]


def k8s_file(wheel, version, name):
    path = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/{name}"
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read(path))


def refs(node):
    """Every `$ref` under `node`."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def local(node):
    """`node` with references to `_definitions.json` made local (`#/$defs/...`)."""
    if isinstance(node, dict):
        return {
            k: (("#/$defs/" + v[len(K8S_REF):]) if k == "$ref" and v.startswith(K8S_REF) else local(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [local(v) for v in node]
    return node


def closure(defs, start):
    """The names of the definitions reachable from `start`."""
    seen, todo = set(), [start]
    while todo:
        for r in refs(local(todo.pop())):
            assert r.startswith("#/$defs/"), r
            name = r[len("#/$defs/"):]
            if name not in seen:
                seen.add(name)
                todo.append(defs[name])
    return seen


def with_defs(schema, defs, comment):
    names = closure(defs, schema)
    out = {"$schema": DRAFT, "$comment": comment}
    out.update({k: v for k, v in local(schema).items() if k not in ("$schema", "$id")})
    out["$defs"] = {n: local(defs[n]) for n in sorted(names)}
    return out


def strict(node):
    """KEDA's CRD schema with unknown fields refused."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: ({name: strict(s) for name, s in v.items()} if k == "properties" else strict(v))
        for k, v in node.items()
    }
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def write(path, schema):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"{path.relative_to(HERE)}: {path.stat().st_size} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubernetes-validate", required=True, help="the kubernetes-validate wheel")
    ap.add_argument("--kubernetes", required=True, help="Kubernetes version, e.g. 1.32.0")
    ap.add_argument("--keda-crds", help="KEDA's config/crd/bases folder (without it, Kubernetes' kinds only)")
    ap.add_argument("--keda", help="the KEDA release those CRDs are from, e.g. v2.20.2")
    a = ap.parse_args()
    wheel = pathlib.Path(a.kubernetes_validate)
    defs = k8s_file(wheel, a.kubernetes, "_definitions.json")["$defs"]
    source = f"{wheel.name}, kubernetes-json-schema/v{a.kubernetes}-local-strict"
    for name, kind, api in K8S_KINDS:
        schema = k8s_file(wheel, a.kubernetes, name)
        assert schema["properties"]["kind"]["enum"] == [kind], name
        assert schema["properties"]["apiVersion"]["enum"] == [api], name
        comment = f"Kubernetes {a.kubernetes} {kind} ({api}), strict: {source}/{name} with its definitions inlined (deploy/k8s/schemas/vendor.py)"
        write(HERE / f"kubernetes-v{a.kubernetes}-strict" / name, with_defs(schema, defs, comment))
    meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    for file, version, kind, group in KEDA_KINDS if a.keda_crds else []:
        crd = yaml.safe_load((pathlib.Path(a.keda_crds) / file).read_text())
        assert crd["spec"]["names"]["kind"] == kind, file
        (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
        api = f"{group}/{version}"
        schema["properties"]["apiVersion"]["enum"] = [api]
        schema["properties"]["kind"]["enum"] = [kind]
        schema["properties"]["metadata"] = {"$ref": K8S_REF + meta}
        schema["required"] = ["apiVersion", "kind", "metadata"] + schema.get("required", [])
        comment = f"KEDA {a.keda} {kind} ({api}): openAPIV3Schema of kedacore/keda config/crd/bases/{file}, strict, metadata from Kubernetes {a.kubernetes} (deploy/k8s/schemas/vendor.py)"
        write(HERE / f"keda-{a.keda}" / f"{kind.lower()}-{group.split('.')[0]}-{version}.json", with_defs(schema, defs, comment))


if __name__ == "__main__":
    main()
