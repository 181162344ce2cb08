"""Generate charts/face-pipeline/values.schema.json from the FacePipeline CRD.

The tenant chart's values mirror FacePipeline.spec, so its schema is the CRD's
openAPIV3Schema for spec, translated to JSON Schema: defaults dropped (values.yaml holds
them), unknown keys refused (a typo in values must not vanish the way the API server prunes
it), and every CEL rule (x-kubernetes-validations) either translated to JSON Schema or, where
JSON Schema cannot compare two fields, named in CEL_IN_TEMPLATE (the chart's template fails
instead). A rule this file does not know stops the generator, so a new CRD rule cannot be
forgotten.

    .venv/bin/python charts/tools/tenant_values_schema.py          # write the schema
    .venv/bin/python charts/tools/tenant_values_schema.py --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "facepipelines.facepipe.io.yaml"
SCHEMA_PATH = REPO / "charts" / "face-pipeline" / "values.schema.json"

# Keys of FacePipeline.spec the chart takes verbatim from values (same names, same shapes).
SPEC_KEYS = (
    "tenantId",
    "logLevel",
    "settings",
    "redis",
    "dedup",
    "storage",
    "vectorDb",
    "models",
    "deletionPolicy",
    "restartAt",
    "components",
)

# CEL rules as JSON Schema, keyed by the rule's text.
CEL_AS_JSON_SCHEMA: dict[str, dict[str, Any]] = {
    "!self.contains('..')": {"not": {"pattern": "\\.\\."}},
    "has(self.url) != has(self.urlSecretRef)": {
        "oneOf": [{"required": ["url"]}, {"required": ["urlSecretRef"]}],
    },
    # minReplicas 0 needs keda: provider defaults to hpa, minReplicas to 1 (CRD defaults).
    "!has(self.autoscaling) || !self.autoscaling.enabled || self.autoscaling.provider == 'keda' "
    "|| self.autoscaling.minReplicas >= 1": {
        "properties": {
            "autoscaling": {
                "if": {
                    "required": ["enabled"],
                    "properties": {"enabled": {"const": True}, "provider": {"not": {"const": "keda"}}},
                },
                "then": {"properties": {"minReplicas": {"minimum": 1}}},
            }
        }
    },
    "!has(self.pack) || self.pack != 'buffalo_l' || (has(self.volume) && has(self.volume.claimName))": {
        "if": {"required": ["pack"], "properties": {"pack": {"const": "buffalo_l"}}},
        "then": {"required": ["volume"], "properties": {"volume": {"required": ["claimName"]}}},
    },
}
# CEL rules JSON Schema cannot say; templates/_helpers.tpl ("fp.validate") fails the render.
CEL_IN_TEMPLATE = {
    "!has(self.autoscaling) || !self.autoscaling.enabled || self.autoscaling.minReplicas "
    "<= self.autoscaling.maxReplicas",
}
# CEL rules with no meaning for a chart's values.
CEL_NOT_APPLICABLE = {"self == oldSelf"}  # immutability: the API server's business on update

DROPPED_KEYS = {
    "default",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "nullable",
}


def translate(node: dict[str, Any], path: str = "spec") -> dict[str, Any]:
    """One CRD (structural OpenAPI v3) schema node as a JSON Schema node."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED_KEYS or key == "x-kubernetes-validations":
            continue
        if key == "properties":
            out[key] = {name: translate(sub, f"{path}.{name}") for name, sub in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = translate(value, f"{path}.*")
        elif key == "items":
            out[key] = translate(value, f"{path}[]")
        elif key in {"anyOf", "oneOf", "allOf"}:
            out[key] = [translate(sub, path) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    extra: list[dict[str, Any]] = []
    for rule in node.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if text in CEL_AS_JSON_SCHEMA:
            extra.append(copy.deepcopy(CEL_AS_JSON_SCHEMA[text]))
        elif text in CEL_IN_TEMPLATE or text in CEL_NOT_APPLICABLE:
            continue
        else:
            raise SystemExit(f"{path}: CEL rule not translated: {text!r} (teach {Path(__file__).name})")
    if extra:
        out["allOf"] = out.get("allOf", []) + extra
    return out


def chart_schema(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    served = next(v for v in versions if v.get("storage"))
    spec = served["schema"]["openAPIV3Schema"]["properties"]["spec"]
    properties: dict[str, Any] = {key: translate(spec["properties"][key], f"spec.{key}") for key in SPEC_KEYS}
    top_rules = [r["rule"] for r in spec.get("x-kubernetes-validations", [])]
    if top_rules:
        raise SystemExit(f"spec: CEL rules at the top of spec are not translated: {top_rules}")
    image_repo = spec["properties"]["image"]["properties"]
    properties.update(
        {
            "nameOverride": {
                "description": "Name of the FacePipeline (and prefix of its children); default: the release "
                "name. A DNS-1035 label of at most 50 characters: child Services are named after it.",
                "type": "string",
                "maxLength": 50,
                "pattern": "^([a-z]([-a-z0-9]*[a-z0-9])?)?$",
            },
            "commonLabels": {
                "description": "Labels added to the FacePipeline.",
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
            "annotations": {
                "description": "Annotations added to the FacePipeline.",
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
            "image": {
                "description": "Component images are <registry>/<detector|embedder|indexer|ops-api>:<tag>.",
                "type": "object",
                "additionalProperties": False,
                "required": ["registry"],
                "properties": {
                    "registry": {
                        "type": "string",
                        "minLength": 1,
                        "pattern": "^[^:@\\s]+(:[0-9]+)?(/[^:@\\s]+)*$",
                    },
                    "tag": {"description": "Empty: the chart's appVersion.", "type": "string"},
                    "gpuTagSuffix": {
                        "description": "Appended to the detector and embedder tags when models.device=cuda.",
                        "type": "string",
                    },
                    "pullPolicy": translate(image_repo["pullPolicy"]),
                    "pullSecrets": translate(image_repo["pullSecrets"]),
                },
            },
            "global": {"type": "object"},
        }
    )
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "face-pipeline (one tenant) values",
        "description": f"Generated from {CRD_PATH.relative_to(REPO)} by "
        f"{Path(__file__).resolve().relative_to(REPO)}; do not edit.",
        "type": "object",
        "additionalProperties": False,
        "required": sorted(set(spec.get("required", [])) | {"image"}),
        "properties": properties,
    }


def render() -> str:
    crd = yaml.safe_load(CRD_PATH.read_text())
    return json.dumps(chart_schema(crd), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the schema on disk is stale")
    args = parser.parse_args(argv)
    text = render()
    current = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
    if args.check:
        if current != text:
            print(f"stale: {SCHEMA_PATH} (run: python {Path(__file__).relative_to(REPO)})", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
