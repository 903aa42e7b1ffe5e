"""The round coordinator: authenticated requests + stored state → tasks, validated updates, rounds.

One coordinator per server. Its methods are synchronous and serialised by one lock (the app calls
them from a worker thread); each state change is one SQLite transaction committed before the
method returns, so an acknowledged update or a closed round survives a crash. Aggregation uses
the same strategy objects as the simulator (`fedc.fl.strategies.make_strategy`), over the
round's updates in client-id order, so a resumed run sums exactly what an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..fl.strategies import ClientUpdate, make_strategy
from .auth import parse_bearer, verify
from .protocol import ProtocolError, decode, encode, meta_int
from .state import restore_strategy, strategy_state
from .store import RoundRow, Store, StoredUpdate, utc_text, weights_sha256

log = logging.getLogger("fedc.serve")

Evaluator = Callable[[np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class ServeConfig:
    """Everything that shapes the rounds; the federated block gives the defaults."""

    rounds: int
    clients_per_round: int
    min_clients: int  # connected clients needed to open a round
    local_epochs: int
    batch_size: int
    min_updates: int | None = None  # updates that close a round at its deadline (min_clients)
    strategy: str = "fedavg"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    round_timeout: float = 120.0  # seconds from a round's opening to its deadline
    client_timeout: float = 30.0  # a client unseen for longer is not sampled
    max_update_norm: float = 1e3  # bound on ‖update − global‖₂
    max_examples: int = 10**9
    seed: int = 0
    poll_interval: float = 0.5  # the retry_after a waiting client is told


class Coordinator:
    """Rounds, sampling, validation and aggregation over a Store."""

    def __init__(self, store: Store, manifest: dict[str, Any], config: ServeConfig,
                 initial_weights: Callable[[], np.ndarray], evaluate: Evaluator | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.manifest, self.config = store, manifest, config
        self.num_params = int(manifest["params_region"]["count"])
        self.evaluate, self.clock = evaluate, clock
        self.lock = threading.Lock()
        self.strategy = make_strategy(config.strategy, **config.strategy_options)
        self.last_seen: dict[str, float] = {}
        self.told_done: set[str] = set()  # clients whose task said "done"
        self._frames: dict[int, bytes] = {}
        # refusals of requests that name no client (no valid token): counted here, never
        # written, so that traffic without a token cannot grow the state file or hold the
        # lock through a disk sync per request
        self.anonymous_rejections: Counter[str] = Counter()
        if store.get_meta("format") is None:
            self._initialise(initial_weights())
        self._resume()

    # --- start-up -------------------------------------------------------------------------
    def _initialise(self, weights: np.ndarray) -> None:
        metrics = self._score(weights)
        with self.store.transaction():
            s = self.store
            s.set_meta("format", "fedc-serve-state/1")
            s.set_meta("manifest_sha256", self.manifest["wasm"]["sha256"])
            s.set_meta("model", self.manifest["model"])
            s.set_meta("num_params", self.num_params)
            s.set_meta("round", 1)
            s.set_meta("version", 0)
            s.add_model(0, 0, weights, weights_sha256(weights), self.clock(), metrics, None)
        log.info("new state %s: model %s, %d parameters", self.store.path,
                 self.manifest["model"], self.num_params)

    def _score(self, weights: np.ndarray) -> dict[str, float]:
        """--eval-data's loss and accuracy of a global model; a non-finite one (a model whose
        logits overflow) is left out: status is JSON, which has no NaN or Infinity."""
        metrics = self.evaluate(weights) if self.evaluate else {}
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    def _resume(self) -> None:
        s = self.store
        s.check_model(self.manifest)
        self.round, self.version = int(s.get_meta("round")), int(s.get_meta("version"))
        self.diverged: int | None = s.get_meta("diverged")  # the round whose aggregate was NaN
        self.weights = s.model(self.version)
        restore_strategy(self.strategy, s.strategy_state(self.version))
        row = s.get_round(self.round)
        self.open: RoundRow | None = row if row is not None and row.closed is None else None
        if self.open is not None:
            # clients could not submit while the server was down: give the round a new deadline
            deadline = max(self.open.deadline, self.clock() + self.config.round_timeout)
            self.open = RoundRow(**{**self.open.__dict__, "deadline": deadline})
            with s.transaction():
                s.put_round(self.open)
            log.info("resumed round %d with %d accepted update(s)", self.round,
                     len(s.update_clients(self.round)))

    @property
    def done(self) -> bool:
        return self.round > self.config.rounds or self.diverged is not None

    # --- authentication -------------------------------------------------------------------
    def authenticate(self, header: str | None) -> str:
        """The client id of a valid bearer token, or a 401 (counted as a rejection)."""
        parsed = parse_bearer(header)
        with self.lock:
            if parsed is None:
                raise self._reject(None, ProtocolError(
                    401, "unauthorized", "missing or malformed token (send Authorization: "
                                         "Bearer fedc1.<id>.<secret>)"))
            client_id, secret = parsed
            # read on every request, not cached: `fedc serve --revoke-token` (another process)
            # takes effect at the client's next request
            stored = self.store.client_token(client_id)
            if not verify(secret, stored[0] if stored else None):
                raise self._reject(None, ProtocolError(401, "unauthorized", "invalid token"))
            assert stored is not None
            if stored[1] is not None:
                self.last_seen.pop(client_id, None)
                raise self._reject(None, ProtocolError(
                    401, "unauthorized", f"the token of client {client_id} was revoked at "
                    f"{utc_text(stored[1])} UTC"))
            self.last_seen[client_id] = self.clock()
            self._maybe_open()
            return client_id

    def refuse(self, client_id: str | None, err: ProtocolError) -> ProtocolError:
        """Log and count a refusal decided outside the coordinator (e.g. an oversized body)."""
        with self.lock:
            return self._reject(client_id, err)

    def _reject(self, client_id: str | None, err: ProtocolError) -> ProtocolError:
        log.warning("rejected %s: %d %s: %s", client_id or "anonymous request", err.status,
                    err.code, err.reason)
        if client_id is None:
            self.anonymous_rejections[err.code] += 1
        else:
            self.store.add_rejection(client_id, self.round, err.status, err.code, err.reason,
                                     self.clock())
        return err

    # --- tasks ----------------------------------------------------------------------------
    def join(self, client_id: str) -> dict[str, Any]:
        with self.lock:
            return {"client_id": client_id, "model": self.manifest["model"],
                    "manifest_sha256": self.manifest["wasm"]["sha256"],
                    "num_params": self.num_params, "round": self.round,
                    "rounds": self.config.rounds, "status": self._phase()}

    def task(self, client_id: str) -> bytes:
        """A frame: train (with the global weights), wait, or done."""
        with self.lock:
            if self.done:
                self.told_done.add(client_id)
                return encode("task", {"status": "done", "round": self.config.rounds,
                                       "model_version": self.version})
            r = self.open
            if r is None or client_id not in r.sampled or \
                    self.store.update_sha(r.round, client_id) is not None:
                return encode("task", {"status": "wait", "round": self.round,
                                       "retry_after": self.config.poll_interval})
            meta = {"status": "train", "round": r.round, "model_version": r.model_version,
                    "seed": _task_seed(self.config.seed, r.round, client_id),
                    "local_epochs": self.config.local_epochs,
                    "batch_size": self.config.batch_size, "num_params": self.num_params,
                    "deadline_in": round(r.deadline - self.clock(), 3)}
            return encode("task", meta, self.weights)

    def model_frame(self) -> bytes:
        with self.lock:
            if self.version not in self._frames:
                self._frames = {self.version: encode(
                    "model", {"model_version": self.version, "round": self.round - 1},
                    self.weights)}
            return self._frames[self.version]

    # --- updates --------------------------------------------------------------------------
    def submit(self, client_id: str, body: bytes) -> dict[str, Any]:
        """Validate an update and store it (200), or a ProtocolError that changed nothing."""
        with self.lock:
            try:
                return self._submit(client_id, body)
            except ProtocolError as err:
                raise self._reject(client_id, err) from None

    def _submit(self, client_id: str, body: bytes) -> dict[str, Any]:
        frame = decode(body)
        if frame.kind != "update":
            raise ProtocolError(400, "bad_kind", f"expected an update frame, got {frame.kind}")
        meta = frame.meta
        rnd = meta_int(meta, "round", 1, 2**31)
        version = meta_int(meta, "model_version", 0, 2**31)
        examples = meta_int(meta, "num_examples", 1, self.config.max_examples)
        train_loss, metrics = _number(meta, "train_loss"), _metrics(meta)
        sha = hashlib.sha256(body).hexdigest()
        previous = self.store.update_sha(rnd, client_id)
        if previous == sha:  # a retry of an acknowledged update: acknowledge it again
            return {"status": "accepted", "round": rnd, "duplicate": True}
        r = self._check_round(client_id, rnd, version, previous)
        values = self._check_values(frame.values)
        norm = float(np.linalg.norm(values.astype(np.float64) - self.weights))
        if not norm <= self.config.max_update_norm:
            raise ProtocolError(422, "norm_too_large", f"the update's L2 distance from the "
                                f"global model is {norm:.4g}; the bound is "
                                f"{self.config.max_update_norm:g}")
        update = StoredUpdate(client_id, sha, examples, values, train_loss, metrics)
        with self.store.transaction():
            self.store.add_update(rnd, update, norm, self.clock())
        self.last_seen[client_id] = self.clock()
        submitted = len(self.store.update_clients(rnd))
        log.info("round %d: accepted %s (%d examples, norm %.3g), %d/%d", rnd, client_id,
                 examples, norm, submitted, len(r.sampled))
        if submitted >= len(r.sampled):
            self._aggregate()
        return {"status": "accepted", "round": rnd, "duplicate": False, "norm": norm}

    def _check_round(self, client_id: str, rnd: int, version: int,
                     previous: str | None) -> RoundRow:
        if self.done:
            raise ProtocolError(409, "finished", "the federation has finished its rounds"
                                if self.diverged is None else f"the federation stopped in round "
                                f"{self.diverged}: its aggregate had NaN or Inf weights")
        r = self.open
        if r is None or rnd != r.round:
            open_text = f"round {r.round} is open" if r else "no round is open"
            raise ProtocolError(409, "round_closed", f"round {rnd} is not open ({open_text})")
        if version != r.model_version:
            raise ProtocolError(409, "stale_model", f"round {rnd} trains model version "
                                                    f"{r.model_version}, not {version}")
        if client_id not in r.sampled:
            raise ProtocolError(403, "not_sampled", f"client {client_id} is not in round {rnd}")
        if previous is not None:
            raise ProtocolError(409, "already_submitted", f"client {client_id} already sent a "
                                                          f"different update for round {rnd}")
        if self.clock() > r.deadline:
            raise ProtocolError(409, "deadline_passed", f"round {rnd}'s deadline has passed")
        return r

    def _check_values(self, values: np.ndarray) -> np.ndarray:
        if values.size != self.num_params:
            raise ProtocolError(422, "wrong_length", f"the model has {self.num_params} "
                                                     f"parameters, the update has {values.size}")
        bad = ~np.isfinite(values)
        if bad.any():
            raise ProtocolError(422, "not_finite", f"the update holds {int(bad.sum())} NaN or "
                                                   f"Inf value(s), first at index "
                                                   f"{int(np.argmax(bad))}")
        return values

    # --- the round clock ------------------------------------------------------------------
    def tick(self) -> None:
        """Open a round when enough clients are connected; act on a passed deadline."""
        with self.lock:
            self._maybe_open()
            r = self.open
            if r is not None:
                r = self._replace_revoked(r)
            if r is not None and self.clock() > r.deadline:
                got = len(self.store.update_clients(r.round))
                need = min(self.config.min_updates or self.config.min_clients, len(r.sampled))
                if got >= need:
                    self._aggregate()
                else:
                    self._resample(r, got, need)

    def _connected(self) -> list[str]:
        """Clients seen within the client timeout whose tokens are not revoked."""
        now, revoked = self.clock(), self.store.revoked_ids()
        return sorted(c for c, t in self.last_seen.items()
                      if now - t <= self.config.client_timeout and c not in revoked)

    def _maybe_open(self) -> None:
        if self.done or self.open is not None:
            return
        connected = self._connected()
        if len(connected) < self.config.min_clients:
            return
        rng = np.random.default_rng([self.config.seed, self.round])
        k = min(self.config.clients_per_round, len(connected))
        picked = tuple(connected[i] for i in sorted(rng.choice(len(connected), k, replace=False)))
        now = self.clock()
        self.open = RoundRow(self.round, self.version, now, now + self.config.round_timeout,
                             None, picked)
        with self.store.transaction():
            self.store.put_round(self.open)
        log.info("round %d open: %d client(s) sampled of %d connected", self.round, k,
                 len(connected))

    def _replace_revoked(self, r: RoundRow) -> RoundRow:
        """Sampled clients whose tokens were revoked before they sent their update (by
        `--revoke-token`, from another process) give their places to connected clients not in
        the round, as many as there are; the deadline stays. A revoked client nobody can
        replace stays in the sample, like any straggler (the quorum must not fall)."""
        revoked = self.store.revoked_ids()
        if not revoked.intersection(r.sampled):
            return r
        have = set(self.store.update_clients(r.round))
        gone = sorted((set(r.sampled) - have) & revoked)
        pool = [c for c in self._connected() if c not in r.sampled]
        k = min(len(gone), len(pool))
        if not k:
            return r
        rng = np.random.default_rng([self.config.seed, r.round, len(r.sampled), k])
        extra = [pool[i] for i in sorted(rng.choice(len(pool), k, replace=False))]
        sampled = tuple(sorted((set(r.sampled) - set(gone[:k])) | set(extra)))
        self.open = RoundRow(r.round, r.model_version, r.opened, r.deadline, None, sampled)
        with self.store.transaction():
            self.store.put_round(self.open)
        log.info("round %d: revoked %s replaced by %s", r.round, ", ".join(gone[:k]),
                 ", ".join(extra))
        return self.open

    def _resample(self, r: RoundRow, got: int, need: int) -> None:
        """Too few updates by the deadline: keep them, sample again, set a new deadline. The
        sample never shrinks: stragglers that no connected client can replace stay in it, or
        the next deadline's quorum, min(--min-updates, sampled), would fall with it."""
        have = set(self.store.update_clients(r.round))
        pool = [c for c in self._connected() if c not in have]
        rng = np.random.default_rng([self.config.seed, r.round, int(self.clock())])
        k = min(max(self.config.clients_per_round - len(have), 0), len(pool))
        extra = [pool[i] for i in sorted(rng.choice(len(pool), k, replace=False))] if k else []
        chosen = have | set(extra)
        kept = sorted(set(r.sampled) - chosen)[:max(len(r.sampled) - len(chosen), 0)]
        sampled = tuple(sorted(chosen | set(kept)))
        self.open = RoundRow(r.round, r.model_version, r.opened,
                             self.clock() + self.config.round_timeout, None, sampled)
        with self.store.transaction():
            self.store.put_round(self.open)
        log.warning("round %d: deadline passed with %d of %d update(s); %d client(s) sampled "
                    "again", r.round, got, need, len(sampled))

    def _aggregate(self) -> None:
        r = self.open
        assert r is not None
        stored = self.store.updates(r.round)
        updates = [ClientUpdate(u.weights, u.num_examples, u.client_id) for u in stored]
        before = strategy_state(self.strategy)
        new = self.strategy.aggregate(self.weights, updates)
        counts = np.array([u.num_examples for u in stored], np.float64)
        train_loss = weighted_metric([u.train_loss for u in stored], counts)
        accuracy = weighted_metric([u.metrics.get("accuracy") for u in stored], counts)
        if not np.all(np.isfinite(new)):
            restore_strategy(self.strategy, before)
            self._diverge(r, train_loss, accuracy)
            return
        metrics = self._score(new)
        try:
            with self.store.transaction():
                self.store.add_model(self.version + 1, r.round, new, weights_sha256(new),
                                     self.clock(), metrics, strategy_state(self.strategy))
                self.store.finish_round(r.round, self.clock(), "aggregated", train_loss,
                                        accuracy)
                self.store.set_meta("version", self.version + 1)
                self.store.set_meta("round", r.round + 1)
        except BaseException:
            restore_strategy(self.strategy, before)
            raise
        self.version, self.round, self.weights, self.open = (self.version + 1, r.round + 1,
                                                             new, None)
        log.info("round %d closed: %d update(s) → model version %d%s", r.round, len(stored),
                 self.version, f", accuracy {metrics['accuracy']:.4f}"
                 if "accuracy" in metrics else "")
        self._maybe_open()

    def _diverge(self, r: RoundRow, train_loss: float | None, accuracy: float | None) -> None:
        """The aggregate has NaN or Inf weights, from which no client can train: the federation
        stops there, as `fedc simulate` does, and the global model stays the last finite one.
        (Raising instead answered 500 to the client whose update, already stored, closed the
        round, and failed again on every tick of the round clock.)"""
        with self.store.transaction():
            self.store.finish_round(r.round, self.clock(), "diverged", train_loss, accuracy)
            self.store.set_meta("diverged", r.round)
        self.open, self.diverged = None, r.round
        log.error("round %d: the %s aggregate has NaN or Inf weights: the federation stops "
                  "(diverged), the global model stays version %d", r.round, self.strategy.name,
                  self.version)

    # --- status ---------------------------------------------------------------------------
    def finished(self) -> bool:
        """The rounds are done and every connected client has been told so (clients that
        stay away drop out of the connected set after the client timeout)."""
        with self.lock:
            return self.done and set(self._connected()) <= self.told_done

    def _phase(self) -> str:
        if self.diverged is not None:
            return "diverged"
        return "done" if self.done else "open" if self.open is not None else "waiting"

    def _totals(self) -> dict[str, Any]:
        """The store's accepted and rejected counts plus the anonymous refusals since start."""
        totals = self.store.totals()
        by_code = Counter(totals["rejected_by_reason"]) + self.anonymous_rejections
        return {**totals, "rejected": totals["rejected"] + self.anonymous_rejections.total(),
                "rejected_by_reason": dict(by_code),
                "rejected_anonymous": dict(self.anonymous_rejections)}

    def status(self, with_log: bool = False) -> dict[str, Any]:
        with self.lock:
            s, now = self.store, self.clock()
            connected = set(self._connected())
            models = s.model_metrics()
            out: dict[str, Any] = {
                "model": self.manifest["model"], "status": self._phase(), "round": self.round,
                "rounds": self.config.rounds, "model_version": self.version,
                "strategy": self.strategy.name,
                "strategy_options": self.strategy.options(),
                "num_params": self.num_params,
                "update_bytes": 4 * self.num_params,
                "connected": sorted(connected), "min_clients": self.config.min_clients,
                "clients": {c: {**v, "connected": c in connected}
                            for c, v in s.client_counts().items()},
                **self._totals(), "latest": models[-1], "models": models,
                "rounds_history": s.round_history()}
            if self.open is not None:
                got = s.update_clients(self.open.round)
                out["open_round"] = {"round": self.open.round, "sampled": list(self.open.sampled),
                                     "submitted": got,
                                     "deadline_in": round(self.open.deadline - now, 3)}
            if with_log:
                out["accepted_log"] = s.accepted_log()
            return out


def _task_seed(seed: int, rnd: int, client_id: str) -> int:
    """The shuffle seed of one client's task: stable across restarts, distinct per round."""
    digest = hashlib.sha256(f"{seed}/{rnd}/{client_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _number(meta: dict[str, Any], key: str) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    bad = ProtocolError(400, "bad_meta", f"metadata field {key!r} must be a finite number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond a double's range
        raise bad from None
    if not math.isfinite(number):
        raise bad
    return number


def _metrics(meta: dict[str, Any]) -> dict[str, float]:
    """The client's evaluation of the global model on its own data (optional)."""
    ev = meta.get("eval", {})
    if not isinstance(ev, dict):
        raise ProtocolError(400, "bad_meta", "metadata field 'eval' must be an object")
    metrics = {k: v for k in ("loss", "accuracy") if (v := _number(ev, k)) is not None}
    if not 0 <= metrics.get("accuracy", 0) <= 1:  # it is averaged into the round's accuracy
        raise ProtocolError(422, "bad_meta", f"metadata field 'eval.accuracy' must be in 0..1, "
                                             f"got {metrics['accuracy']:g}")
    return metrics


def weighted_metric(values: list[float | None], counts: np.ndarray) -> float | None:
    """The example-weighted mean of the clients' reported values (None: none, or not finite)."""
    pairs = [(v, n) for v, n in zip(values, counts, strict=True) if v is not None]
    if not pairs:
        return None
    total = sum(n for _, n in pairs)
    # each value times its share, not Σ v·n / Σ n: finite losses near 1e308 times 10⁹ examples
    # overflowed to Infinity, which the status JSON cannot hold (it answered 500 from then on)
    mean = float(sum(v * (n / total) for v, n in pairs)) if total else math.nan
    return mean if math.isfinite(mean) else None
