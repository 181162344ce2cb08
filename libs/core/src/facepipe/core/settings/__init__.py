"""Every setting of the pipeline, read from the environment.

Names are the Phase 3 primary names (docs/compatibility.md); its legacy aliases are accepted
too (``FACE_STREAM``, ``GLOBAL_DEDUP_TTL_SEC``, ...). ``AliasChoices`` tries the
names in order, so when both are set the primary name wins.

An invalid value stops start-up with one line that names the variable and what
it accepts (see :func:`load_settings`), never a pydantic traceback.
"""

from facepipe.core.settings.common import STREAM_ROLES, StreamRole, default_models_dir, dlq_stream, env_names
from facepipe.core.settings.loading import ConfigError, get_settings, load_settings
from facepipe.core.settings.model import Settings

__all__ = [
    "STREAM_ROLES",
    "ConfigError",
    "Settings",
    "StreamRole",
    "default_models_dir",
    "dlq_stream",
    "env_names",
    "get_settings",
    "load_settings",
]
