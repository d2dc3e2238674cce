"""Limits of the Neural DSL that the server shares: one number each, importable without lark.

The DSL uses them as its defaults; `server.config.ServerConfig` takes its `max_layers` default
from here, so the two can never disagree again (they were 10,000 and 2,000).
"""

from __future__ import annotations

__all__ = ["MAX_LAYERS", "MAX_NESTING"]

# A file may not expand into more layers (blocks' included) than this: ``Dense(1) * 10**9`` is
# refused while expanding, not run.
MAX_LAYERS = 2_000
# Bodies (`ResidualConnection { ... }`) may nest this deep: building a model recurses per level.
MAX_NESTING = 64
