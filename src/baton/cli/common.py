"""What every command shares: the consoles, the common options, and opening the runtime."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ..errors import UsageError
from ..logs import configure as configure_logs
from ..runtime import Baton
from ..settings import Settings
from ..store import sqlite_path

out = Console()
err = Console(stderr=True)

DatabaseOpt = Annotated[
    str | None,
    typer.Option("--db", envvar="BATON_DATABASE_URL", show_envvar=True,
                 help="Database URL, e.g. sqlite:///.baton/baton.db"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AsOpt = Annotated[str | None, typer.Option("--as", help="Who is acting: a principal of baton.toml.")]


def open_baton(db: str | None, *, must_exist: bool = False) -> Baton:
    """The runtime for a command. Commands that only read refuse to create a database: a
    typo in the path or the wrong directory should not look like an empty history."""
    settings = Settings.from_env(database_url=db)
    if must_exist and settings.database_url.startswith("sqlite:"):
        path = sqlite_path(settings.database_url)
        if not path.exists():
            raise UsageError(f"no Baton database at {path} (set BATON_DATABASE_URL or --db)")
    configure_logs()  # warnings on stderr with their run and step, sensitive values masked
    return Baton(settings)


