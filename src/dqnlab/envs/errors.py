"""The env part's one exception type: an env configuration that cannot work, with the fix in its message."""

from __future__ import annotations

from dqnlab.errors import ConfigError


class EnvConfigError(ConfigError):
    """The env configuration cannot work; the message names the fix."""
