"""Fake payment, e-mail and CRM services, kept in their own SQLite file so that they
outlive the worker processes the demo kills. The payment service honours idempotency keys
the way real payment APIs do: a repeated key returns the first result and moves no money."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

SERVICES_ENV = "BATON_DEMO_SERVICES"
PAUSE_ENV = "BATON_DEMO_PAUSE_AFTER_REFUND"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, customer TEXT, email TEXT,
    amount REAL, payment_id TEXT);
CREATE TABLE IF NOT EXISTS refunds (idempotency_key TEXT PRIMARY KEY, txn_id TEXT, order_id TEXT,
    amount REAL, created_at REAL);
CREATE TABLE IF NOT EXISTS refund_requests (id INTEGER PRIMARY KEY, idempotency_key TEXT,
    replayed INTEGER);
CREATE TABLE IF NOT EXISTS email_attempts (id INTEGER PRIMARY KEY, idempotency_key TEXT, ok INTEGER);
CREATE TABLE IF NOT EXISTS emails (idempotency_key TEXT PRIMARY KEY, message_id TEXT, recipient TEXT,
    subject TEXT);
CREATE TABLE IF NOT EXISTS crm_notes (note_id INTEGER PRIMARY KEY, ticket TEXT, body TEXT,
    idempotency_key TEXT);
CREATE TABLE IF NOT EXISTS model_calls (id INTEGER PRIMARY KEY, purpose TEXT, turn INTEGER, pid INTEGER);
"""


class Services:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.executescript(_SCHEMA)

    @classmethod
    def from_env(cls) -> Services:
        path = os.environ.get(SERVICES_ENV)
        if not path:
            raise RuntimeError(f"{SERVICES_ENV} is not set: the demo services have no database")
        return cls(path)

    def seed(self) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO orders VALUES ('98765', 'Dana Smith', 'dana@example.com', 120.0, 'PAY-7Q2')"
        )

    # -- orders and payments ------------------------------------------------------------

    def order(self, order_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT order_id, customer, email, amount, payment_id FROM orders WHERE order_id = ?",
            (order_id,),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("order_id", "customer", "email", "amount", "payment_id"), row, strict=True))

    def refunded(self, order_id: str) -> float:
        row = self.db.execute("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE order_id = ?",
                              (order_id,)).fetchone()
        return float(row[0])

    def refund(self, order_id: str, amount: float, key: str) -> dict[str, Any]:
        self.db.execute("BEGIN IMMEDIATE")
        existing = self.db.execute("SELECT txn_id, amount FROM refunds WHERE idempotency_key = ?",
                                   (key,)).fetchone()
        self.db.execute("INSERT INTO refund_requests (idempotency_key, replayed) VALUES (?, ?)",
                        (key, int(existing is not None)))
        if existing is not None:
            self.db.execute("COMMIT")
            return {"txn_id": existing[0], "amount": existing[1], "status": "refunded"}
        count = self.db.execute("SELECT COUNT(*) FROM refunds").fetchone()[0]
        txn_id = f"TXN-55A{count + 1}"
        self.db.execute("INSERT INTO refunds VALUES (?, ?, ?, ?, ?)",
                        (key, txn_id, order_id, amount, time.time()))
        self.db.execute("COMMIT")
        return {"txn_id": txn_id, "amount": amount, "status": "refunded"}

    def refunds(self) -> list[tuple[str, str, float]]:
        return list(self.db.execute("SELECT txn_id, order_id, amount FROM refunds ORDER BY created_at"))

    def refund_requests(self) -> list[tuple[str, int]]:
        return list(self.db.execute("SELECT idempotency_key, replayed FROM refund_requests ORDER BY id"))

    # -- e-mail ---------------------------------------------------------------------------

    def send_email(self, to: str, subject: str, key: str) -> dict[str, Any]:
        """Fails the first attempt for each key (an SMTP server that is briefly unavailable)."""
        attempts = self.db.execute("SELECT COUNT(*) FROM email_attempts WHERE idempotency_key = ?",
                                   (key,)).fetchone()[0]
        if attempts == 0:
            self.db.execute("INSERT INTO email_attempts (idempotency_key, ok) VALUES (?, 0)", (key,))
            raise ConnectionError("SMTP 421: service not available, try again later")
        self.db.execute("INSERT INTO email_attempts (idempotency_key, ok) VALUES (?, 1)", (key,))
        message_id = f"<{key.replace(':', '.')}@mail.example>"
        self.db.execute("INSERT OR IGNORE INTO emails VALUES (?, ?, ?, ?)", (key, message_id, to, subject))
        return {"message_id": message_id, "to": to}

    def email_attempts(self) -> list[tuple[str, int]]:
        return list(self.db.execute("SELECT idempotency_key, ok FROM email_attempts ORDER BY id"))

    def emails(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT recipient, subject FROM emails"))

    # -- CRM ------------------------------------------------------------------------------

    def add_note(self, ticket: str, body: str, key: str) -> dict[str, Any]:
        cur = self.db.execute("INSERT INTO crm_notes (ticket, body, idempotency_key) VALUES (?, ?, ?)",
                              (ticket, body, key))
        return {"ticket": ticket, "note_id": cur.lastrowid}

    def note_by_key(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT ticket, note_id FROM crm_notes WHERE idempotency_key = ?",
                              (key,)).fetchone()
        return None if row is None else {"ticket": row[0], "note_id": row[1]}

    def notes(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT ticket, body FROM crm_notes ORDER BY note_id"))

    # -- the model ------------------------------------------------------------------------

    def model_called(self, purpose: str, turn: int) -> None:
        """The demo's model books every call it answers, so the demo can show none was repeated."""
        self.db.execute("INSERT INTO model_calls (purpose, turn, pid) VALUES (?, ?, ?)", (purpose, turn, os.getpid()))

    def model_calls(self) -> list[tuple[str, int, int]]:
        return list(self.db.execute("SELECT purpose, turn, pid FROM model_calls ORDER BY id"))
