"""A Kubernetes API server for development and tests: KMock's emulator with what Kopf and kubectl need.

:mod:`.api` is the emulator (objects, watches, status, deletion and garbage collection),
:mod:`.selectors` and :mod:`.tables` what it reads from queries and writes for ``kubectl get``,
:mod:`.server` serves it on a port and writes a kubeconfig for it.
"""

from facepipe.sim.emulator.api import FacePipeEmulator
from facepipe.sim.emulator.selectors import field_selector_matches, label_selector_matches
from facepipe.sim.emulator.server import EmulatorServer, write_kubeconfig

__all__ = [
    "EmulatorServer",
    "FacePipeEmulator",
    "field_selector_matches",
    "label_selector_matches",
    "write_kubeconfig",
]
