"""Runtime settings: one frozen object, read from ``BATON_*`` environment variables."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .errors import UsageError

DEFAULT_DATABASE = Path(".baton") / "baton.db"


@dataclass(frozen=True, slots=True)
class Settings:
    """How a :class:`~baton.Baton` runtime behaves.

    ``database_url``: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``
    (default ``.baton/baton.db`` in the working directory).
    ``durability``: ``full`` fsyncs every append; ``normal`` survives process crashes but
    may lose the last steps on power loss.
    ``lease_seconds``: how long a worker's claim on a run lasts without a heartbeat.
    ``max_recoveries``: takeovers of a run without progress before it is failed as a crash loop.
    ``short_sleep``: timers shorter than this are waited out in-process instead of suspending.
    ``retry_wait``: retry backoffs up to this long are waited out by the worker; longer ones
    suspend the run until the next attempt is due.
    ``checkpoint_seconds``: how often a worker with an audit key (``BATON_AUDIT_KEY``) signs a
    checkpoint of the run heads that changed.
    """

    database_url: str = field(default_factory=lambda: f"sqlite:///{DEFAULT_DATABASE}")
    durability: Literal["full", "normal"] = "full"
    lease_seconds: float = 10.0
    heartbeat_seconds: float = 2.0
    max_recoveries: int = 3
    short_sleep: float = 2.0
    retry_wait: float = 30.0
    poll_seconds: float = 0.2
    checkpoint_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name in ("lease_seconds", "heartbeat_seconds", "short_sleep", "retry_wait", "poll_seconds",
                     "checkpoint_seconds"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"{name} must be a finite number of seconds, not {value}")
        if self.heartbeat_seconds <= 0 or self.lease_seconds < 3 * self.heartbeat_seconds:
            raise UsageError(
                f"the lease ({self.lease_seconds}s) must be at least three heartbeats "
                f"({self.heartbeat_seconds}s each), or live runs would be taken over"
            )
        if self.max_recoveries < 0:
            raise UsageError(f"max_recoveries must be 0 or more, not {self.max_recoveries}")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        settings = cls()
        values: dict[str, object] = {}
        if url := env.get("BATON_DATABASE_URL"):
            values["database_url"] = url
        if durability := env.get("BATON_DURABILITY"):
            if durability not in ("full", "normal"):
                raise UsageError(f"BATON_DURABILITY must be 'full' or 'normal', not {durability!r}")
            values["durability"] = durability
        for name, key in (
            ("lease_seconds", "BATON_LEASE_SECONDS"),
            ("max_recoveries", "BATON_MAX_RECOVERIES"),
            ("checkpoint_seconds", "BATON_CHECKPOINT_SECONDS"),
        ):
            if raw := env.get(key):
                try:
                    values[name] = int(raw) if name == "max_recoveries" else float(raw)
                except ValueError:
                    raise UsageError(f"{key} must be a number, not {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(settings, **values)  # type: ignore[arg-type]
