"""An export verifies by the documented procedure (docs/audit.md), implemented here from
the document with nothing but hashlib, json and cryptography; tampered exports fail it, and
``baton audit verify --export`` agrees."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from baton import Baton, Context, tool, workflow
from baton.audit import write_checkpoint
from baton.audit.keys import generate, load_private
from engine_support import make_settings

# -- the procedure of docs/audit.md, written from the document ----------------------------


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def merkle(heads: list[list[Any]]) -> str:
    level = [hashlib.sha256(b"\x00" + canonical(h).encode()).digest() for h in heads]
    if not level:
        return sha(b"")
    while len(level) > 1:
        level += level[-1:] if len(level) % 2 else []
        level = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0].hex()


def blobs_sound(value: Any, blobs: dict[str, str]) -> bool:
    """Every reference in ``value`` (and in what it refers to) has a blob with that hash."""
    if isinstance(value, dict):
        if list(value) == ["\u0000blob"]:
            text = blobs.get(value["\u0000blob"])
            return text is not None and sha(text) == value["\u0000blob"] and blobs_sound(json.loads(text), blobs)
        return all(blobs_sound(v, blobs) for v in value.values())
    if isinstance(value, list):
        return all(blobs_sound(v, blobs) for v in value)
    return True


def independent_check(lines: list[str], public_pem: bytes) -> str | None:
    """The first problem the documented procedure finds, or None."""
    public = serialization.load_pem_public_key(public_pem)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    items = [json.loads(line) for line in lines[1:]]
    runs: dict[str, list[dict[str, Any]]] = {}
    for e in (i for i in items if i["kind"] == "event"):
        runs.setdefault(e["run_id"], []).append(e)
    blobs = {b["hash"]: b["data"] for b in items if b["kind"] == "blob"}
    for run_id, events in runs.items():
        prev = "0" * 64
        for n, e in enumerate(events, start=1):
            codec = f'"codec":{canonical(e["codec"])},' if "codec" in e else ""
            envelope = (f'{{"at":{canonical(e["at"])},{codec}"data":{e["data"]},"run_id":{canonical(run_id)},'
                        f'"seq":{e["seq"]},"type":{canonical(e["type"])}}}')
            if e["seq"] != n or e["hash"] != sha(prev + envelope):
                return f"run {run_id} event {n}"
            if "codec" in e and not blobs_sound(json.loads(e["data"]), blobs):
                return f"run {run_id} event {n} blob"
            prev = e["hash"]
    prev = "0" * 64
    for n, c in enumerate((i for i in items if i["kind"] == "checkpoint"), start=1):
        body = json.loads(c["body"])
        if c["seq"] != n or c["hash"] != sha(c["body"]) or body["seq"] != n or body["prev"] != prev:
            return f"checkpoint {n}"
        if body["root"] != merkle(body["heads"]) or body["key"] != sha(raw)[:16]:
            return f"checkpoint {n}"
        try:
            public.verify(base64.b64decode(c["signature"]), c["body"].encode())  # type: ignore[union-attr]
        except InvalidSignature:
            return f"checkpoint {n} signature"
        for run_id, seq, head in body["heads"]:
            if run_id in runs and (seq > len(runs[run_id]) or runs[run_id][seq - 1]["hash"] != head):
                return f"run {run_id} behind checkpoint {n}"
        prev = c["hash"]
    return None


# -- a record to check ----------------------------------------------------------------------


@tool(idempotent=True)
def echo(text: str) -> str:
    return text


@workflow
def greet(ctx: Context, name: str) -> str:
    return ctx.call(echo, text=f"héllo {name} ✓")


@workflow
def read_aloud(ctx: Context, book: str) -> str:
    """Large values: the book is stored once, apart from the events that carry it."""
    ctx.call(echo, text=book)
    return ctx.call(echo, text=book)[:10]


@pytest.fixture
def exported(tmp_path: Path) -> tuple[list[str], bytes, Path]:
    private, public = generate(tmp_path / "keys")
    key = load_private(str(private))
    assert key is not None
    settings = make_settings(tmp_path)
    with Baton(settings) as baton:
        for name in ("ana", "bo"):
            baton.drive(baton.start(greet, name=name))
        write_checkpoint(baton.store, key, baton.clock.time())
        baton.drive(baton.start(greet, name="cy"))
        baton.drive(baton.start(read_aloud, book="Il était une fois… " * 2000))
        write_checkpoint(baton.store, key, baton.clock.time())
    out = tmp_path / "record.jsonl"
    cli = subprocess.run([sys.executable, "-m", "baton", "audit", "export", "--out", str(out)], cwd=tmp_path,
                         env={"BATON_DATABASE_URL": settings.database_url, "PATH": ""}, capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    return out.read_text().splitlines(), public.read_bytes(), public


def verify_cli(tmp_path: Path, lines: list[str], public: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run([sys.executable, "-m", "baton", "audit", "verify", "--export", str(path), "--public-key",
                           str(public)], capture_output=True, text=True, timeout=60)


def test_an_export_verifies_by_the_documented_procedure(exported: tuple[list[str], bytes, Path],
                                                        tmp_path: Path) -> None:
    lines, public_pem, public = exported
    assert json.loads(lines[0])["kind"] == "baton-audit-export"
    assert sum('"kind":"checkpoint"' in line for line in lines) == 2
    assert independent_check(lines, public_pem) is None
    checked = verify_cli(tmp_path, lines, public)
    assert sum('"kind":"blob"' in line for line in lines) >= 1
    assert sum('"codec":"json/c14n-v1+blobs"' in line for line in lines) >= 2
    assert checked.returncode == 0 and "4 runs" in checked.stdout and "signatures verified" in checked.stdout


def tamper_data(lines: list[str]) -> list[str]:
    i = next(i for i, line in enumerate(lines) if "héllo bo" in line)
    return [*lines[:i], lines[i].replace("héllo bo", "héllo BO"), *lines[i + 1:]]


def drop_last_event_of_first_run(lines: list[str]) -> list[str]:
    first = json.loads(lines[-1])["run_id"]
    events = [i for i, line in enumerate(lines) if json.loads(line).get("run_id") == first]
    return [line for i, line in enumerate(lines) if i != events[-1]]


def forge_checkpoint(lines: list[str]) -> list[str]:
    i = next(i for i, line in enumerate(lines) if '"kind":"checkpoint"' in line)
    item = json.loads(lines[i])
    item["signature"] = base64.b64encode(b"\0" * 64).decode()
    return [*lines[:i], canonical(item), *lines[i + 1:]]


def drop_first_checkpoint(lines: list[str]) -> list[str]:
    i = next(i for i, line in enumerate(lines) if '"kind":"checkpoint"' in line)
    return lines[:i] + lines[i + 1:]


def tamper_blob(lines: list[str]) -> list[str]:
    return [line.replace("une fois", "une foix", 1) if '"kind":"blob"' in line else line for line in lines]


@pytest.mark.parametrize("tamper", [tamper_data, drop_last_event_of_first_run, forge_checkpoint,
                                    drop_first_checkpoint, tamper_blob])
def test_a_tampered_export_fails_both_checks(exported: tuple[list[str], bytes, Path], tmp_path: Path,
                                             tamper: Any) -> None:
    lines, public_pem, public = exported
    changed = tamper(lines)
    assert changed != lines
    assert independent_check(changed, public_pem) is not None
    checked = verify_cli(tmp_path, changed, public)
    assert checked.returncode == 1 and "tampering detected" in checked.stderr, checked.stdout + checked.stderr
