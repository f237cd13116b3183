"""Who holds a run, and whether that process is still alive.

An owner id is ``host:pid:start:nonce``. On the same host, a dead owner is noticed at once
(its pid is gone, or now belongs to a process that started at another time), so SQLite
users never wait for a lease to run out after a crash. Elsewhere, the lease decides.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path


def _machine() -> str:
    """This host as liveness checks must see it: two containers may share a hostname but not
    a boot id and pid namespace, and only within one of those does a pid name a process."""
    host = socket.gethostname().replace(":", "_")
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return host
    return f"{host}/{boot}/{pidns}"


_HOST = _machine()


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot, from ``/proc`` (Linux); ``None`` if
    the process is gone or is a zombie (dead, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def new_owner_id() -> str:
    pid = os.getpid()
    return f"{_HOST}:{pid}:{_start_ticks(pid) or '-'}:{secrets.token_hex(3)}"


def owner_alive(owner: str) -> bool | None:
    """``True``/``False`` when we can tell (same host), ``None`` when only the lease can."""
    try:
        host, pid_text, start, _nonce = owner.split(":")
        pid = int(pid_text)
    except ValueError:
        return None
    if host != _HOST:
        return None
    if start != "-":
        return _start_ticks(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_owner(owner: str | None) -> str:
    if not owner:
        return "nobody"
    parts = owner.split(":")
    return f"pid {parts[1]} on {parts[0].split('/')[0]}" if len(parts) == 4 else owner
