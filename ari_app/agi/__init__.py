"""FastAGI entry point: the same digit collection for dialplans that use ``AGI()``."""

from ari_app.agi.server import (
    AgiConfig,
    AgiServer,
    AgiSettings,
    running_agi_server,
)

__all__ = ["AgiConfig", "AgiServer", "AgiSettings", "running_agi_server"]
