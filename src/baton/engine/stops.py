"""How an execution unwinds the workflow function.

Each is a ``BaseException`` so that ``except Exception`` in workflow code cannot swallow
it: a suspended, fenced or aborted run must stop, whatever the workflow catches.
"""

from __future__ import annotations

from ..errors import BatonError


class Stop(BaseException):
    """Unwinds the workflow function."""


class Suspend(Stop):
    """The run has to wait (a timer, a signal, a person); its state is in the journal."""


class Fenced(Stop):
    """Another worker owns the run now: stop without writing anything."""


class StoreFailed(Stop):
    """The journal could not be written. Unwinds like a crash: nothing may happen after a
    step whose record was lost, and the workflow must not carry on with a hole in it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Abort(Stop):
    """The run must fail (a crash loop) or stop for a person (non-determinism)."""

    def __init__(self, error: BatonError) -> None:
        super().__init__(error.message)
        self.error = error
