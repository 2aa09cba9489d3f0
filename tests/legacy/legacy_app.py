"""The legal dashboard's legacy batch history, as its backend wrote it.

A standard-library copy of the `BatchHistory` model and of the functions of
`batch_service` that touch it, faithful to what the dashboard does (see the
issue "The real dashboard, not our fixtures"): absolute saves of the whole
in-memory `batch_state`, `datetime.now().isoformat()` times (naive local
time), `model` overwritten by the current model, JSON lists as text.
flask-sqlalchemy is replaced by sqlite3; the SQL it ran is the same.

`now` is looked up on this module at every call, so a generator can give the
legacy code a clock of its own (see make_real_history.py).
"""
import json
import sqlite3
from datetime import datetime, timedelta

from make_legacy_db import SCHEMA

COLUMNS = ("batch_id, started_at, completed_at, model, topic_filter, difficulty_filter, "
           "reasoning_instruction, target_count, samples_generated, total_tokens, status, "
           "errors, model_switches")


def now():
    return datetime.now()


class LegacyDb:
    """backend/data/batches.db, and the batch_service functions over it."""

    def __init__(self, path):
        self.db = sqlite3.connect(path)
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'batch_history'").fetchone():
            self.db.executescript(SCHEMA)

    def close(self):
        self.db.close()

    def _save_batch_to_db(self, batch_state):
        """Writes the in-memory batch as it is now: absolute values."""
        row = self.db.execute("SELECT id FROM batch_history WHERE batch_id = ?",
                              (batch_state["id"],)).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO batch_history (batch_id, started_at, topic_filter, "
                "difficulty_filter, reasoning_instruction, target_count, samples_generated, "
                "total_tokens) VALUES (?, ?, ?, ?, ?, ?, 0, 0)",
                (batch_state["id"], batch_state["started_at"], batch_state.get("topic_filter"),
                 batch_state.get("difficulty_filter"), batch_state.get("reasoning_instruction"),
                 batch_state.get("target")))
        self.db.execute(
            "UPDATE batch_history SET samples_generated = ?, total_tokens = ?, errors = ?, "
            "model_switches = ?, model = ?, completed_at = ?, status = ? WHERE batch_id = ?",
            (batch_state["samples_generated"], batch_state["tokens_used"],
             json.dumps(batch_state["errors"]), json.dumps(batch_state["model_switches"]),
             batch_state.get("current_model"), batch_state.get("completed_at"),
             "running" if batch_state["status"] == "running" else "completed",
             batch_state["id"]))
        self.db.commit()

    def stop_batch(self, batch_id):
        """Stops a batch that is not in memory (its worker is gone)."""
        found = self.db.execute("UPDATE batch_history SET status = 'stopped', completed_at = ? "
                                "WHERE batch_id = ?", (now().isoformat(), batch_id)).rowcount
        self.db.commit()
        if not found:
            return {"success": False, "error": f"Batch {batch_id} not found"}
        return {"success": True, "message": f"Batch {batch_id} stopped"}

    def stop_all_batches(self):
        ids = [r[0] for r in self.db.execute(
            "SELECT batch_id FROM batch_history WHERE status = 'running' "
            "ORDER BY started_at DESC")]
        for batch_id in ids:
            self.stop_batch(batch_id)
        return {"success": True, "stopped": ids, "count": len(ids)}

    def check_stuck_batches(self, threshold_minutes=60):
        cutoff = (now() - timedelta(minutes=threshold_minutes)).isoformat()
        return [to_dict(r) for r in self.db.execute(
            f"SELECT {COLUMNS} FROM batch_history WHERE status = 'running' AND started_at < ? "
            "ORDER BY started_at DESC", (cutoff,))]

    def get_batch(self, batch_id):
        row = self.db.execute(f"SELECT {COLUMNS} FROM batch_history WHERE batch_id = ?",
                              (batch_id,)).fetchone()
        return to_dict(row) if row else None

    def get_batch_history(self):
        return [to_dict(r) for r in self.db.execute(
            f"SELECT {COLUMNS} FROM batch_history ORDER BY started_at DESC")]

    def history_response(self):
        batches = self.get_batch_history()
        return {"success": True, "batches": batches, "count": len(batches)}


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
