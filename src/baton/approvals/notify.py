"""Telling approvers that a request is waiting: a pluggable notifier, and the built-in
webhook one."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Protocol

from ..journal import events as ev

log = logging.getLogger("baton.approvals")


class Notifier(Protocol):
    """Told when a run starts waiting for an approval. Must not raise or block for long."""

    def notify(self, run_id: str, request: ev.ApprovalRequested) -> None: ...


def notice(run_id: str, request: ev.ApprovalRequested) -> dict[str, Any]:
    return {"event": "approval_requested", "run_id": run_id, **request.to_json()}


class WebhookNotifier:
    """POSTs each new request as JSON to ``url``, retrying with backoff in the background.

    The request is already durable when this is called; a notification that cannot be
    delivered is logged, and ``baton approvals list`` shows the request either way.
    """

    def __init__(self, url: str, *, retries: int = 3, backoff: float = 0.5, timeout: float = 5.0,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.headers = headers or {}
        self._threads: list[threading.Thread] = []

    def notify(self, run_id: str, request: ev.ApprovalRequested) -> None:
        body = json.dumps(notice(run_id, request)).encode()
        thread = threading.Thread(target=self._deliver, args=(body, request.approval_id),
                                  name="baton-webhook", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for deliveries under way (tests, and processes about to exit)."""
        for thread in list(self._threads):
            thread.join(timeout)

    def close(self) -> None:
        """Give deliveries under way a chance to finish before the process exits (a short
        ``baton run`` that asked for an approval would otherwise drop its notification)."""
        self.wait(timeout=self.timeout * (self.retries + 1))

    def _deliver(self, body: bytes, approval_id: str) -> bool:
        headers = {"Content-Type": "application/json", "User-Agent": "baton", **self.headers}
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if response.status < 300:
                        return True
                    problem = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:
                    break  # the receiver refuses it: retrying will not help
            except (urllib.error.URLError, OSError) as exc:
                problem = str(getattr(exc, "reason", exc))
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        log.warning("approval %s: webhook %s not delivered: %s", approval_id, self.url, problem)
        return False
