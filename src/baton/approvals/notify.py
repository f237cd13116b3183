"""Telling approvers that a request is waiting: a pluggable notifier, and the built-in
webhook one.

Delivery is at least once. Each request is notified right after it is committed; the
approvals index records when a notification got through, and workers send again the ones
that did not (the process died first, the receiver was down). Receivers tell repeats apart
by ``approval_id``."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from ..journal import events as ev
from ..sensitive.seal import masked

log = logging.getLogger("baton.approvals")


class Notifier(Protocol):
    """Told when a run starts waiting for an approval. Must not block for long. Returning
    normally (``None`` or ``True``) means delivered; ``False`` or an exception means not
    (it will be sent again); a ``Future`` of a bool says so later. The request comes as
    stored, its sensitive values sealed: ``baton.sensitive.masked`` shows them as masks."""

    def notify(self, run_id: str, request: ev.ApprovalRequested) -> bool | Future[bool] | None: ...


def notice(run_id: str, request: ev.ApprovalRequested) -> dict[str, Any]:
    return {"event": "approval_requested", "run_id": run_id, **masked(request.to_json())}


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

    def notify(self, run_id: str, request: ev.ApprovalRequested) -> Future[bool]:
        body = json.dumps(notice(run_id, request)).encode()
        outcome: Future[bool] = Future()

        def deliver() -> None:
            try:
                outcome.set_result(self._deliver(body, request.approval_id))
            except BaseException as exc:  # noqa: BLE001 - reported through the future
                outcome.set_exception(exc)

        thread = threading.Thread(target=deliver, name="baton-webhook", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return outcome

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


class DeliveryLog(Protocol):
    def mark_notified(self, approval_id: str, now: float) -> None: ...


def send(notifier: Notifier, run_id: str, request: ev.ApprovalRequested, store: DeliveryLog,
         now: Callable[[], float]) -> None:
    """Notify, and record in ``store`` once the notification got through. Never raises: the
    request is durable whatever happens here, and undelivered ones are sent again."""
    try:
        outcome = notifier.notify(run_id, request)
    except Exception:
        log.exception("approval %s: notifier failed", request.approval_id)
        return

    def record(ok: bool | None) -> None:
        if ok is not False:
            try:
                store.mark_notified(request.approval_id, now())
            except Exception:
                log.exception("approval %s: could not record the notification", request.approval_id)

    if isinstance(outcome, Future):
        outcome.add_done_callback(lambda done: record(done.result() if done.exception() is None else False))
    else:
        record(outcome)
