"""Durable server state in SQLite: rounds, global model versions, open-round updates, clients.

One file, WAL journal, ``synchronous=FULL``: a transaction is on disk when ``commit`` returns, so
a reply sent after it (an acknowledged update, a closed round) survives SIGKILL and power loss.
Every change of the round state happens in one ``BEGIN IMMEDIATE`` transaction, so a restart
sees either all of it or none. The connection is used from one thread at a time (the
coordinator's lock); ``check_same_thread`` is off because that thread is a pool worker.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import ServeError
from .auth import IssuedToken

FORMAT = "fedc-serve-state/1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY, token_hash BLOB NOT NULL, created REAL NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0, revoked REAL);
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY, round INTEGER NOT NULL, weights BLOB NOT NULL,
    sha256 TEXT NOT NULL, created REAL NOT NULL, eval_loss REAL, eval_accuracy REAL,
    strategy_state BLOB);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, model_version INTEGER NOT NULL, opened REAL NOT NULL,
    deadline REAL NOT NULL, closed REAL, sampled TEXT NOT NULL, outcome TEXT,
    train_loss REAL, client_accuracy REAL);
CREATE TABLE IF NOT EXISTS updates (
    round INTEGER NOT NULL, client_id TEXT NOT NULL, sha256 TEXT NOT NULL,
    num_examples INTEGER NOT NULL, weights BLOB, norm REAL NOT NULL, train_loss REAL,
    metrics TEXT, received REAL NOT NULL, PRIMARY KEY (round, client_id));
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, client_id TEXT, round INTEGER,
    status INTEGER NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL);
"""
TABLES = {"meta", "clients", "models", "rounds", "updates", "rejections"}


def _server_lock(path: str | Path) -> Any:
    """The lock of one running server on its state file: a second `fedc serve` on the same
    file (two coordinators would both open, close and number rounds) is refused while this one
    runs. It is `<state>.lock`, an OS file lock released when the process ends however it ends;
    the token and export commands do not take it, they are meant to run beside a server."""
    from filelock import FileLock, Timeout

    if not Path(path).parent.is_dir():  # FileLock would create the folders of a mistyped path
        raise ServeError.at(f"--state {path}: no such folder {Path(path).parent}")
    lock = FileLock(f"{path}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ServeError.at(f"{path} is in use by another running fedc serve (it holds "
                            f"{path}.lock); stop that server first or give another --state") \
            from None
    except OSError as exc:
        raise ServeError.at(f"cannot lock {path}.lock: {exc.strerror or exc}") from None
    return lock


def utc_text(when: float) -> str:
    """A stored time (seconds since the epoch) as the token commands and refusals show it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))


def weights_sha256(weights: np.ndarray) -> str:
    """The sha256 of a weight vector as float32 little-endian bytes (stored with each model)."""
    return hashlib.sha256(np.ascontiguousarray(weights, "<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class RoundRow:
    round: int
    model_version: int
    opened: float
    deadline: float
    closed: float | None
    sampled: tuple[str, ...]


@dataclass(frozen=True, eq=False)  # holds an array
class StoredUpdate:
    client_id: str
    sha256: str
    num_examples: int
    weights: np.ndarray
    train_loss: float | None
    metrics: dict[str, Any]


class Store:
    """The state database; methods are small queries, ``transaction()`` groups changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: Any = None  # a running server's (for_server)
        if self.path.is_dir():  # sqlite3 says only "unable to open database file"
            raise ServeError.at(f"{self.path} is a folder, not a fedc state file")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            tables = {r[0] for r in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")} - {"sqlite_sequence"}
            if tables and not tables & TABLES:  # someone else's database: leave it as it is
                self.db.close()
                raise ServeError.at(f"{self.path}: not a fedc state database (an SQLite file "
                                    f"with other tables: {', '.join(sorted(tables))})")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(clients)")}
            if "revoked" not in columns:  # a state file from before token revocation
                self.db.execute("ALTER TABLE clients ADD COLUMN revoked REAL")
        except sqlite3.DatabaseError as exc:
            raise ServeError.at(f"{self.path}: not a usable fedc state database ({exc})") from None
        fmt = self.get_meta("format")
        if fmt is not None and fmt != FORMAT:
            raise ServeError.at(f"{self.path}: state format {fmt!r}, expected {FORMAT!r}")

    @classmethod
    def for_server(cls, path: str | Path) -> Store:
        """The state file opened by a running server, which holds its lock until it closes it
        or exits (see _server_lock). A state file it refuses leaves no lock file behind."""
        lock_file = Path(f"{path}.lock")
        existed = lock_file.exists()
        lock = _server_lock(path)
        try:
            store = cls(path)
        except BaseException:
            lock.release()
            if not existed:
                lock_file.unlink(missing_ok=True)
            raise
        store._lock = lock
        return store

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_model(self, manifest: dict[str, Any]) -> None:
        """ServeError unless the state belongs to this module (or is new)."""
        sha = self.get_meta("manifest_sha256")
        if sha is not None and sha != manifest["wasm"]["sha256"]:
            raise ServeError.at(f"{self.path} holds the state of another model "
                                f"({self.get_meta('model')}, module sha256 {str(sha)[:12]}…); "
                                "give a new --state file to start a fresh federation")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta -----------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                        "value = excluded.value", (key, json.dumps(value)))

    # --- clients --------------------------------------------------------------------------
    def add_clients(self, tokens: list[IssuedToken], now: float) -> None:
        with self.transaction() as db:
            db.executemany("INSERT INTO clients (id, token_hash, created) VALUES (?, ?, ?)",
                           [(t.client_id, t.secret_hash, now) for t in tokens])

    def client_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM clients")}

    def client_token(self, client_id: str) -> tuple[bytes, float | None] | None:
        """The client's token hash and when it was revoked (None: not revoked)."""
        row = self.db.execute("SELECT token_hash, revoked FROM clients WHERE id = ?",
                              (client_id,)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def revoked_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM clients WHERE revoked IS NOT NULL")}

    def revoke(self, client_ids: list[str], now: float) -> list[str]:
        """Revoke the tokens of known clients (all or none); returns those newly revoked."""
        with self.transaction() as db:
            fresh = []
            for cid in client_ids:
                row = db.execute("SELECT revoked FROM clients WHERE id = ?", (cid,)).fetchone()
                if row is None:
                    raise KeyError(cid)
                if row[0] is None and cid not in fresh:
                    db.execute("UPDATE clients SET revoked = ? WHERE id = ?", (now, cid))
                    fresh.append(cid)
            return fresh

    def clients(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, created, accepted, rejected, revoked FROM clients "
                               "ORDER BY id")
        return [{"client_id": r[0], "created": r[1], "accepted": r[2], "rejected": r[3],
                 "revoked": r[4]} for r in rows]

    def client_counts(self) -> dict[str, dict[str, Any]]:
        return {c["client_id"]: {"accepted": c["accepted"], "rejected": c["rejected"],
                                 "revoked": c["revoked"] is not None} for c in self.clients()}

    # --- models ---------------------------------------------------------------------------
    def add_model(self, version: int, round_: int, weights: np.ndarray, sha256: str, now: float,
                  metrics: dict[str, float], state: bytes | None) -> None:
        self.db.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (version, round_, np.ascontiguousarray(weights, "<f4").tobytes(), sha256, now,
             metrics.get("loss"), metrics.get("accuracy"), state))

    def model(self, version: int) -> np.ndarray:
        row = self.db.execute("SELECT weights FROM models WHERE version = ?",
                              (version,)).fetchone()
        if row is None:
            raise ServeError.at(f"{self.path}: model version {version} is missing")
        return np.frombuffer(row[0], "<f4").astype(np.float32)

    def strategy_state(self, version: int) -> bytes | None:
        row = self.db.execute("SELECT strategy_state FROM models WHERE version = ?",
                              (version,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def model_metrics(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT version, round, eval_loss, eval_accuracy, sha256 "
                               "FROM models ORDER BY version")
        return [{"version": r[0], "round": r[1], "loss": r[2], "accuracy": r[3],
                 "sha256": r[4]} for r in rows]

    # --- rounds ---------------------------------------------------------------------------
    def put_round(self, r: RoundRow) -> None:
        self.db.execute(
            "INSERT INTO rounds (round, model_version, opened, deadline, sampled) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(round) DO UPDATE SET deadline = "
            "excluded.deadline, sampled = excluded.sampled",
            (r.round, r.model_version, r.opened, r.deadline, json.dumps(list(r.sampled))))

    def get_round(self, round_: int) -> RoundRow | None:
        row = self.db.execute("SELECT round, model_version, opened, deadline, closed, sampled "
                              "FROM rounds WHERE round = ?", (round_,)).fetchone()
        if row is None:
            return None
        return RoundRow(row[0], row[1], row[2], row[3], row[4], tuple(json.loads(row[5])))

    def finish_round(self, round_: int, now: float, outcome: str, train_loss: float | None,
                     client_accuracy: float | None) -> None:
        self.db.execute("UPDATE rounds SET closed = ?, outcome = ?, train_loss = ?, "
                        "client_accuracy = ? WHERE round = ?",
                        (now, outcome, train_loss, client_accuracy, round_))
        # the open round's weights are only needed until it is aggregated
        self.db.execute("UPDATE updates SET weights = NULL WHERE round = ?", (round_,))

    def round_history(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT round, model_version, opened, closed, outcome, "
                               "train_loss, client_accuracy, sampled FROM rounds ORDER BY round")
        return [{"round": r[0], "model_version": r[1], "opened": r[2], "closed": r[3],
                 "outcome": r[4], "train_loss": r[5], "client_accuracy": r[6],
                 "sampled": json.loads(r[7])} for r in rows]

    # --- updates --------------------------------------------------------------------------
    def add_update(self, round_: int, u: StoredUpdate, norm: float, now: float) -> None:
        self.db.execute(
            "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (round_, u.client_id, u.sha256, u.num_examples,
             np.ascontiguousarray(u.weights, "<f4").tobytes(), norm, u.train_loss,
             json.dumps(u.metrics), now))
        self.db.execute("UPDATE clients SET accepted = accepted + 1 WHERE id = ?", (u.client_id,))

    def update_sha(self, round_: int, client_id: str) -> str | None:
        row = self.db.execute("SELECT sha256 FROM updates WHERE round = ? AND client_id = ?",
                              (round_, client_id)).fetchone()
        return None if row is None else str(row[0])

    def update_clients(self, round_: int) -> list[str]:
        """The clients whose update for the round was accepted, in id order."""
        rows = self.db.execute("SELECT client_id FROM updates WHERE round = ? ORDER BY client_id",
                               (round_,))
        return [r[0] for r in rows]

    def updates(self, round_: int) -> list[StoredUpdate]:
        """The round's accepted updates in client-id order (a fixed order for the sums)."""
        rows = self.db.execute("SELECT client_id, sha256, num_examples, weights, train_loss, "
                               "metrics FROM updates WHERE round = ? ORDER BY client_id",
                               (round_,))
        return [StoredUpdate(r[0], r[1], r[2],
                             np.frombuffer(r[3], "<f4").astype(np.float32) if r[3] else
                             np.zeros(0, np.float32), r[4], json.loads(r[5]))
                for r in rows]

    def accepted_log(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT round, client_id, sha256, num_examples, norm "
                               "FROM updates ORDER BY round, client_id")
        return [{"round": r[0], "client_id": r[1], "sha256": r[2], "num_examples": r[3],
                 "norm": r[4]} for r in rows]

    # --- rejections -----------------------------------------------------------------------
    def add_rejection(self, client_id: str | None, round_: int | None, status: int, code: str,
                      reason: str, now: float) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO rejections (time, client_id, round, status, code, reason) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (now, client_id, round_, status, code, reason))
            if client_id is not None:
                db.execute("UPDATE clients SET rejected = rejected + 1 WHERE id = ?",
                           (client_id,))

    def totals(self) -> dict[str, Any]:
        accepted = self.db.execute("SELECT COUNT(*) FROM updates").fetchone()[0]
        rejected = self.db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
        by_code = dict(self.db.execute("SELECT code, COUNT(*) FROM rejections GROUP BY code"))
        return {"accepted": accepted, "rejected": rejected, "rejected_by_reason": by_code}
