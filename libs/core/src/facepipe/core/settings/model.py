"""The settings of every process: the pipeline's sections and the services' sections in one object."""

from __future__ import annotations

from facepipe.core.settings.pipeline import PipelineSettings
from facepipe.core.settings.services import ServiceSettings


# pydantic orders fields from the last base to the first: the pipeline's sections come first, as
# in the Phase 3 runbook.
class Settings(ServiceSettings, PipelineSettings):
    """Typed view of the environment. Field order follows the Phase 3 runbook's sections."""
