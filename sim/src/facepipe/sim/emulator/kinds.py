"""Which kinds the emulator serves: the built-in ones (newest version each), CRDs, add-ons' kinds.

A mixin of :class:`facepipe.sim.emulator.api.FacePipeEmulator`; registering a CRD also stores
it as an object, with its printer columns for ``kubectl get``.
"""

from __future__ import annotations

import copy
import datetime
import gzip
import importlib.resources
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kmock
import yaml

Resource = kmock.resource
_VERSION_ORDER = re.compile(r"v(\d+)(?:(alpha|beta)(\d+))?$")


def _version_rank(version: str) -> tuple[int, int, int]:
    """Kubernetes' version priority: GA > beta > alpha, then by numbers."""
    match = _VERSION_ORDER.match(version)
    if not match:
        return (0, 0, 0)
    stage = {"alpha": 1, "beta": 2, None: 3}[match.group(2)]
    return (stage, int(match.group(1)), int(match.group(3) or 0))


def now_timestamp() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Custom kinds of the add-ons a cluster would have: (group/version, plural, kind, subresources).
_KEDA_KINDS = (
    ("keda.sh/v1alpha1", "scaledobjects", "ScaledObject", ("status",)),
    ("keda.sh/v1alpha1", "triggerauthentications", "TriggerAuthentication", ()),
)
_MONITORING_KINDS = (
    ("monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor", ()),
    ("monitoring.coreos.com/v1", "podmonitors", "PodMonitor", ()),
    ("monitoring.coreos.com/v1", "prometheusrules", "PrometheusRule", ()),
)


class EmulatorKinds:
    """Registration of the served kinds (mixed in; the state is the emulator's)."""

    _revision: int
    _printer_columns: dict[Resource, list[dict[str, Any]]]

    def register_defaults(
        self, crd_paths: Iterable[Path] = (), *, keda: bool = True, monitoring: bool = True
    ) -> None:
        """Built-in kinds (the newest version of each), the given CRDs, KEDA's kinds and
        prometheus-operator's (ServiceMonitor, PodMonitor, PrometheusRule)."""
        # = self.resources.load_bundled(), without its deprecated importlib.resources call.
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        self.resources.load_data(gzip.decompress(bundled))
        newest: dict[tuple[str, str], str] = {}
        for res in list(self.resources):
            key = (res.group, res.plural)
            if key not in newest or _version_rank(res.version) > _version_rank(newest[key]):
                newest[key] = res.version
        for res in list(self.resources):
            if newest[(res.group, res.plural)] != res.version:
                del self.resources[res]
        for path in crd_paths:
            for doc in yaml.safe_load_all(Path(path).read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.register_crd(doc)
        extra = (_KEDA_KINDS if keda else ()) + (_MONITORING_KINDS if monitoring else ())
        for api, plural, kind, subresources in extra:
            self.resources[f"{api}/{plural}"] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=True,
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                subresources=set(subresources),
            )

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            res = Resource(spec["group"], version["name"], names["plural"])
            self.resources[res] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {}) or {}),
            )
            self._printer_columns[res] = list(version.get("additionalPrinterColumns", []))
        stored = copy.deepcopy(dict(crd))
        meta = stored.setdefault("metadata", {})
        self._revision += 1
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=now_timestamp(),
            generation=1,
            resourceVersion=str(self._revision),
        )
        self.objects[
            Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None, meta["name"]
        ] = stored
