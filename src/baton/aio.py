"""Running a coroutine to completion from synchronous code, wherever that code runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def run_coroutine(awaitable: Awaitable[T]) -> T:
    """``asyncio.run`` it, or, where this thread already runs an event loop (an ``async``
    application calling Baton, a hook called from an ``async`` workflow), run it on a loop
    of its own in a helper thread; the caller is blocked on the answer either way."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-loop") as pool:
        return pool.submit(asyncio.run, _await(awaitable)).result()


def run_blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` (which may itself call ``asyncio.run``) where no event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-loop") as pool:
        return pool.submit(fn, *args, **kwargs).result()
