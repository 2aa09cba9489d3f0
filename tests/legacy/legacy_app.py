"""The legal dashboard's batch history as its backend really keeps it.

A stand-in, in this project's own code, for what `BatchService`
(`backend/services/batch_service.py` of the dashboard) does with its
`BatchHistory` model (`backend/models/batch.py`), rebuilt from what that
code does:

- the worker's in-memory state: `batch_id`, `running`, `total` (the
  target), `total_tokens`, `current_model`, `current_provider`, naive
  `datetime.now().isoformat()` times, lists of error and switch dicts;
- `_save_batch_to_db(state)`: nothing without `batch_id`; an existing row
  gets `completed_at`, the totals, `status` running or else *completed*,
  the lists as JSON text and `model` = `current_model` (kept when the key
  is absent); a new row also gets `target_count` = `total`, the filters and
  `status` running or else *stopped*. A failure is printed and rolled back,
  never raised;
- `stop_batch`, `stop_all_batches`, `check_stuck_batches` and
  `get_batch_history`, with their answers word for word.

The database is any DB-API connection holding the `batch_history` table:
sqlite3 on `backend/data/batches.db`, or psycopg2 on the table
flask-sqlalchemy's `create_all` made where `DATABASE_URL` was set.
`now` is looked up on this module at every call, so a generator can give
the dashboard a clock of its own (see make_real_history.py).
"""
import json
import threading
from datetime import datetime

COLUMNS = ("batch_id, started_at, completed_at, model, topic_filter, difficulty_filter, "
           "reasoning_instruction, target_count, samples_generated, total_tokens, status, "
           "errors, model_switches")
STUCK_MINUTES = 60
STUCK_ALWAYS_MINUTES = 120


def now():
    return datetime.now()


class LegacyBatchService:
    """`BatchService`'s history methods over one connection; `active_batches`
    and `batch_lock` are the in-memory state its workers share."""

    def __init__(self, connection, placeholder="?"):
        self.db = connection
        self._p = placeholder
        self.active_batches = {}
        self.batch_lock = threading.Lock()

    def close(self):
        self.db.close()

    def _sql(self, sql, params=()):
        cursor = self.db.cursor()
        cursor.execute(sql.replace("?", self._p), params)
        return cursor

    # The worker's state.

    def create_batch_state(self, batch_id, provider, model, total=0):
        return {
            "running": True, "progress": 0, "total": total, "current_sample": None,
            "current_provider": provider, "current_model": model, "errors": [],
            "batch_id": batch_id, "started_at": now().isoformat(), "completed_at": None,
            "samples_generated": 0, "total_tokens": 0, "model_switches": [],
            "provider_switches": [], "failed_models_by_provider": {provider: []},
            "consecutive_failures": 0, "skipped_topics": [], "circuit_breaker_summary": {},
        }

    def start_batch(self, batch_id, total, provider, model, topic_filter=None,
                    difficulty_filter=None, reasoning_instruction=None,
                    sample_type_filter="balance", smart_mode=True, save=None):
        """The state start_batch makes, registered and saved (through `save`,
        the dashboard's own save by default)."""
        with self.batch_lock:
            state = self.create_batch_state(batch_id, provider, model, total)
            state.update({
                "topic_filter": topic_filter, "difficulty_filter": difficulty_filter,
                "reasoning_instruction": reasoning_instruction,
                "sample_type_filter": sample_type_filter or "balance", "smart_mode": smart_mode,
                "provider_failures": {}, "available_providers": [provider],
                "tried_models_by_provider": {provider: [model]},
            })
            self.active_batches[batch_id] = state
        (save or self._save_batch_to_db)(state)
        return state

    # The methods that touch batch_history.

    def _save_batch_to_db(self, state):
        try:
            batch_id = state.get("batch_id")
            if not batch_id:
                return
            row = self._sql("SELECT model FROM batch_history WHERE batch_id = ?",
                            (batch_id,)).fetchone()
            errors = json.dumps(state.get("errors", []))
            switches = json.dumps(state.get("model_switches", []))
            if row is not None:
                self._sql(
                    "UPDATE batch_history SET completed_at = ?, samples_generated = ?, "
                    "total_tokens = ?, status = ?, errors = ?, model_switches = ?, model = ? "
                    "WHERE batch_id = ?",
                    (state.get("completed_at"), state.get("samples_generated", 0),
                     state.get("total_tokens", 0),
                     "running" if state.get("running") else "completed", errors, switches,
                     state.get("current_model", row[0]), batch_id))
            else:
                self._sql(
                    f"INSERT INTO batch_history ({COLUMNS}) "
                    "VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (batch_id, state["started_at"], state.get("current_model"),
                     state.get("topic_filter"), state.get("difficulty_filter"),
                     state.get("reasoning_instruction"), state.get("total", 0),
                     state.get("samples_generated", 0), state.get("total_tokens", 0),
                     "running" if state.get("running") else "stopped", errors, switches))
            self.db.commit()
        except Exception as error:  # noqa: BLE001 - as the dashboard: printed, never raised
            print(f"Error saving batch to database: {error}")
            self.db.rollback()

    def stop_batch(self, batch_id=None):
        stopped = []
        with self.batch_lock:
            if batch_id:
                if batch_id in self.active_batches:
                    state = self.active_batches[batch_id]
                    if state["running"]:
                        state["running"] = False
                        state["completed_at"] = now().isoformat()
                        stopped.append(batch_id)
                        self._save_batch_to_db(state)
                else:
                    row = self._sql("SELECT status FROM batch_history WHERE batch_id = ?",
                                    (batch_id,)).fetchone()
                    if row is None or row[0] != "running":
                        return {"success": False,
                                "error": f"Batch {batch_id} not found or already stopped"}
                    self._sql("UPDATE batch_history SET status = 'stopped', completed_at = ? "
                              "WHERE batch_id = ?", (now().isoformat(), batch_id))
                    self.db.commit()
                    stopped.append(batch_id)
            else:
                for bid, state in self.active_batches.items():
                    if state.get("running", False):
                        state["running"] = False
                        state["completed_at"] = now().isoformat()
                        stopped.append(bid)
                        self._save_batch_to_db(state)
        if stopped:
            return {"success": True, "stopped_batches": stopped, "count": len(stopped)}
        return {"success": False, "error": "Batch not found or already stopped"}

    def stop_all_batches(self):
        with self.batch_lock:
            running = [(bid, s) for bid, s in self.active_batches.items()
                       if s.get("running", False)]
            for _, state in running:
                state["running"] = False
                state["completed_at"] = now().isoformat()
        for _, state in running:
            self._save_batch_to_db(state)
        if running:
            return {"success": True, "message": f"Stopped {len(running)} batch(es)",
                    "stopped_batch_ids": [bid for bid, _ in running]}
        stuck = self._sql("SELECT batch_id FROM batch_history WHERE status = 'running'").fetchall()
        if stuck:
            self._sql("UPDATE batch_history SET status = 'stopped', completed_at = ? "
                      "WHERE status = 'running'", (now().isoformat(),))
            self.db.commit()
            return {"success": True,
                    "message": f"Stopped {len(stuck)} stuck batch(es) from database"}
        return {"success": False, "error": "No batch generation running"}

    def check_stuck_batches(self):
        current = now()
        found = []
        for batch_id, started_at, samples, target, model in self._sql(
                "SELECT batch_id, started_at, samples_generated, target_count, model "
                "FROM batch_history WHERE status = 'running'").fetchall():
            if batch_id not in self.active_batches:
                continue
            minutes = (current - datetime.fromisoformat(started_at)).total_seconds() / 60
            if not ((minutes > STUCK_MINUTES and samples == 0) or minutes > STUCK_ALWAYS_MINUTES):
                continue
            info = {"batch_id": batch_id, "started_at": started_at,
                    "elapsed_minutes": round(minutes, 1), "samples_generated": samples,
                    "target": target, "model": model}
            found.append(info)
            with self.batch_lock:
                state = self.active_batches[batch_id]
                state["running"] = False
                state["completed_at"] = now().isoformat()
                state["errors"].append({
                    "error": f"Automatically stopped: stuck for {round(minutes, 1)} minutes",
                    "auto_stopped": True})
            self._sql("UPDATE batch_history SET status = 'stopped', completed_at = ? "
                      "WHERE batch_id = ?", (now().isoformat(), batch_id))
            self.db.commit()
        return {"success": True, "stuck_batches": found, "stopped_batches": list(found),
                "count": len(found), "stopped_count": len(found),
                "threshold_minutes": STUCK_MINUTES,
                "message": (f"Automatically stopped {len(found)} stuck batch(es)" if found
                            else "No stuck batches found")}

    def get_batch_history(self):
        rows = [to_dict(r) for r in self._sql(
            f"SELECT {COLUMNS} FROM batch_history ORDER BY started_at DESC").fetchall()]
        with self.batch_lock:
            by_id = {row["id"]: row for row in rows}
            for batch_id, state in self.active_batches.items():
                if not state.get("running"):
                    continue
                live = {"samples_generated": state.get("samples_generated", 0),
                        "tokens_used": state.get("total_tokens", 0), "status": "running",
                        "errors": state.get("errors", []),
                        "model_switches": state.get("model_switches", []),
                        "model": state.get("current_model"),
                        "provider": state.get("current_provider"),
                        "progress": state.get("progress", 0),
                        "current_sample": state.get("current_sample")}
                if batch_id in by_id:
                    by_id[batch_id].update(live,
                                           provider_switches=state.get("provider_switches", []))
                else:
                    rows.insert(0, {"id": batch_id, "started_at": state["started_at"],
                                    "completed_at": None, "model": live["model"],
                                    "provider": live["provider"],
                                    "topic_filter": state.get("topic_filter"),
                                    "difficulty_filter": state.get("difficulty_filter"),
                                    "target": state.get("total", 0), **live})
        return rows

    def get_batch(self, batch_id):
        """One row's to_dict(), or None (BatchHistory.query...first())."""
        row = self._sql(f"SELECT {COLUMNS} FROM batch_history WHERE batch_id = ?",
                        (batch_id,)).fetchone()
        return to_dict(row) if row else None


def to_dict(row):
    """BatchHistory.to_dict()."""
    (batch_id, started_at, completed_at, model, topic, difficulty, reasoning, target, samples,
     tokens, status, errors, switches) = row
    return {
        "id": batch_id, "started_at": started_at, "completed_at": completed_at, "model": model,
        "topic_filter": topic, "difficulty_filter": difficulty,
        "reasoning_instruction": reasoning, "target": target, "samples_generated": samples,
        "tokens_used": tokens, "status": status,
        "errors": json.loads(errors) if errors else [],
        "model_switches": json.loads(switches) if switches else [],
    }


def open_history(target):
    """The dashboard's history: a SQLite file (`backend/data/batches.db`),
    or a PostgreSQL URL (its `DATABASE_URL`; psycopg2). The table is made
    as flask-sqlalchemy's `create_all` makes it if absent."""
    if target.startswith(("postgres://", "postgresql://")):
        import psycopg2
        from legacy_model import create_all
        create_all(target)
        return LegacyBatchService(psycopg2.connect(target), "%s")
    import sqlite3
    from make_legacy_db import SCHEMA
    connection = sqlite3.connect(target, check_same_thread=False)
    if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'batch_history'").fetchone():
        connection.executescript(SCHEMA)
    return LegacyBatchService(connection)
