"""PostgreSQL for the tests: the server on 127.0.0.1:5432 (``BATON_TEST_POSTGRES``), one
database per test session (created here, dropped at the end), and a fresh schema in it for
each test that needs an empty store. A test that needs PostgreSQL fails, never skips, when
the server is down: ``.ci/run`` starts it."""

from __future__ import annotations

import os
import secrets
from urllib.parse import quote

import psycopg

SERVER = os.environ.get("BATON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {SERVER} ({exc}); start it with "
                           "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`") from None


def database_url(name: str) -> str:
    base, _, _ = SERVER.rpartition("/")
    return f"{base}/{name}"


def create_database() -> str:
    name = f"baton_test_{secrets.token_hex(4)}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_url(database: str, schema: str) -> str:
    """A URL whose connections work in ``schema`` (created here)."""
    with psycopg.connect(database_url(database), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{database_url(database)}?options={quote(f'-csearch_path={schema}')}"
