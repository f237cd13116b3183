"""Sensitive values never reach the bytes of anything Baton writes or shows: the database
files (only as ciphertext), the logs, the exported spans, the CLI's text and JSON output,
and the audit export. Each check greps raw bytes for values planted in a real run driven
by real CLI processes. Then ``baton runs forget`` leaves a verifiable chain and unreadable
values, with no copy of the data key left in the database files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from baton import Baton, DataErased, Settings
from baton.journal import events as ev

APP = Path(__file__).parent / "privacyapp" / "onboarding.py"
sys.path.insert(0, str(APP.parent))
import onboarding  # noqa: E402


@dataclass
class Journey:
    folder: Path
    db: Path
    env: dict[str, str]
    run_id: str
    outputs: dict[str, bytes]
    """Every command's stdout and stderr, by command."""
    export: Path


def database_files(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))
                    if not p.name.endswith(".master-key"))


def leaks(data: bytes) -> list[str]:
    return [value for value in onboarding.PLANTED if value.encode() in data]


def cli(journey_env: dict[str, str], folder: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([sys.executable, "-m", "baton", *args], cwd=folder, env=journey_env,
                          capture_output=True, timeout=120)
    if ok:
        assert done.returncode == 0, (args, done.stdout.decode(), done.stderr.decode())
    return done


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Journey:
    folder = tmp_path_factory.mktemp("privacy")
    db = folder / "baton.db"
    env = {**os.environ, "BATON_DATABASE_URL": f"sqlite:///{db}", "OTEL_TRACES_EXPORTER": "console",
           "OTEL_METRICS_EXPORTER": "console", "BATON_AUDIT_KEY": str(folder / "keys" / "baton-audit.key"),
           "PYTHONPATH": str(APP.parent)}
    outputs: dict[str, bytes] = {}

    def run(name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        done = cli(env, folder, *args)
        outputs[name] = done.stdout + done.stderr
        return done

    run("keygen", "audit", "keygen", "--dir", "keys")
    run("run", "run", f"{APP}:onboard", "--input", json.dumps(
        {"email": onboarding.EMAIL, "ssn": onboarding.SSN, "card": onboarding.CARD}))
    listed = json.loads(run("list", "runs", "list", "--json").stdout)
    run_id = listed[0]["run_id"]
    assert listed[0]["status"] == "waiting"
    run("signal", "signal", run_id, "confirm", "--data", json.dumps({"by": onboarding.SIGNAL_EMAIL}))
    run("worker", "worker", "--until-idle")
    run("show", "runs", "show", run_id)
    run("show-json", "runs", "show", run_id, "--json")
    run("list-after", "runs", "list", "--json")
    run("checkpoint", "audit", "checkpoint")
    export = folder / "audit.jsonl"
    run("export", "audit", "export", "--out", str(export))
    return Journey(folder, db, env, run_id, outputs, export)


def test_the_run_really_carried_the_planted_values(journey: Journey) -> None:
    """The grep below would pass vacuously if the values never got stored: they did, sealed,
    and the runtime reads them back exactly."""
    with Baton(Settings(database_url=f"sqlite:///{journey.db}")) as baton:
        assert baton.result(journey.run_id) == {
            "ssn": onboarding.SSN, "tax_id": onboarding.TAX_ID, "email": onboarding.EMAIL,
            "contact": {"by": onboarding.SIGNAL_EMAIL}}
        opened = baton.events(journey.run_id, reveal=True)
        assert any(isinstance(e, ev.StepRan) and e.result["nickname"] == onboarding.NICKNAME for e in opened)
    assert database_files(journey.db).count(b"\\u0000sealed") >= 9


def test_the_database_files_hold_only_ciphertext(journey: Journey) -> None:
    assert leaks(database_files(journey.db)) == []


def test_logs_and_spans_are_masked(journey: Journey) -> None:
    worker = journey.outputs["run"] + journey.outputs["worker"]
    assert b"declined once" in worker, "the tool's log line was not captured"
    assert b'"trace_id"' in worker, "no span was exported"
    assert leaks(worker) == []


def test_cli_text_and_json_are_masked(journey: Journey) -> None:
    for name, output in journey.outputs.items():
        assert leaks(output) == [], name
    shown = journey.outputs["show"].decode()
    assert "\u2039email\u203a" in shown and "\u2039card\u203a" in shown and "\u2039sensitive\u203a" in shown


def test_the_audit_export_is_masked_and_still_verifies(journey: Journey) -> None:
    assert leaks(journey.export.read_bytes()) == []
    cli(journey.env, journey.folder, "audit", "verify", "--export", str(journey.export),
        "--public-key", "keys/baton-audit.pub")


def test_forget_erases_the_values_and_keeps_the_proof(journey: Journey) -> None:
    with Baton(Settings(database_url=f"sqlite:///{journey.db}")) as baton:
        stored = baton.store.data_key(journey.run_id)
        assert stored is not None and stored.key is not None
        wrapped = stored.key.wrapped
    assert wrapped in database_files(journey.db)

    forgot = cli(journey.env, journey.folder, "runs", "forget", journey.run_id, "--yes")
    assert b"data key was destroyed" in forgot.stdout

    assert wrapped not in database_files(journey.db), "a copy of the data key is left on disk"
    verified = cli(journey.env, journey.folder, "audit", "verify", "--public-key", "keys/baton-audit.pub")
    assert b"intact" in verified.stdout
    with Baton(Settings(database_url=f"sqlite:///{journey.db}")) as baton:
        with pytest.raises(DataErased):
            baton.result(journey.run_id)
        with pytest.raises(DataErased):
            baton.events(journey.run_id, reveal=True)
        masked = cli(journey.env, journey.folder, "runs", "show", journey.run_id)
        assert b"\xe2\x80\xb9email\xe2\x80\xba" in masked.stdout  # still shown, masked
    again = cli(journey.env, journey.folder, "runs", "forget", journey.run_id, "--yes")
    assert b"already erased" in again.stdout
