#!/usr/bin/env python3
"""Make a `batches.db` the way the legacy dashboard itself writes one.

Unlike make_legacy_db.py, which fills the table directly, this runs the
dashboard's own code (legacy_app.py) on a simulated clock in a zone with
summer time, so the file holds what real history holds: both of the
dashboard's model-switch formats, every shape of error entry it writes
(many without a timestamp), integers and fractions in entry details, NULL
models from workers that crashed before choosing one, rows left `running`
by workers that died, and batches that start in the first 01:xx of the
night the clocks go back and end in the second.

Usage: make_real_history.py OUT.db [--rows N] [--seed S] [--timezone ZONE]
Writes OUT.db, and prints one JSON object: `rows`, the legacy
get_batch_history() (every to_dict(), newest first), and `instants`, the
true instant (unix microseconds) of every time in each batch: started_at,
completed_at, and each error's and model switch's timestamp (null where
the entry has none), to check that an import resolved each local time.
"""
import argparse
import json
import random
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import legacy_app

MODELS = ["llama-3.3-70b-versatile", "llama-3.1-8b-instant", "gpt-oss-120b", "qwen-3-32b"]
PROVIDERS = ["groq", "cerebras"]
TOPICS = [None, "Contract Law - Formation", "Tort Law - Negligence",
          "Droit des contrats - Clause pénale", "Évidence — hearsay"]
DIFFICULTIES = [None, "basic", "intermediate", "advanced"]
UTC = timezone.utc
# The night the clocks went back in Europe (01:00 UTC) and that night's
# repeated local hour, in UTC: 00:00 to 02:00.
FALL_BACK = datetime(2025, 10, 26, 0, 0, tzinfo=UTC)


class Clock:
    """The dashboard's clock: naive local time in `zone`, from a true instant."""

    def __init__(self, zone):
        self.zone, self.instant = zone, None

    def local(self):
        return self.instant.astimezone(self.zone).replace(tzinfo=None)


def micros(instant):
    return round(instant.timestamp() * 1_000_000)


def make_error(rng, clock, state, provider):
    """One of the entries the dashboard appends to `errors`, and its instant
    if the entry records one."""
    stamp = clock.local().isoformat()
    shapes = [
        ({"error": "Batch timed out", "timeout": True}, False),
        ({"error": "Worker crashed: KeyError('choices')",
          "traceback": "Traceback (most recent call last):\n  File \"worker.py\"",
          "timestamp": stamp}, True),
        ({"error": "Stopped after 5 consecutive failures", "auto_stopped": True}, False),
        ({"error": "All providers and models exhausted",
          "provider_failures": {p: rng.randint(1, 4) for p in PROVIDERS},
          "timestamp": stamp}, True),
        ({"topic": state["topic_filter"] or "General", "error": "Invalid JSON in response",
          "fatal": True}, False),
        ({"topic": state["topic_filter"] or "General", "error": "429 Too Many Requests",
          "model": state["current_model"], "retries": rng.randint(1, 5),
          "circuit_breaker": "open", "backoff_seconds": rng.choice([0.5, 1.25, 2.75])}, False),
        ({"error": "Batch timed out after 120 minutes", "timeout": True,
          "elapsed_seconds": 7200}, False),
    ]
    entry, timed = rng.choice(shapes)
    return entry, (micros(clock.instant) if timed else None)


def make_switch(rng, clock, state, older_format):
    """A model switch in the format of the dashboard's version; moves the
    current model, as the backend does."""
    to = rng.choice([m for m in MODELS if m != state["current_model"]])
    provider = rng.choice(PROVIDERS)
    reason = rng.choice(["model_unavailable: model not found", "rate_limited", "quality"])
    if older_format:
        entry = {"from_model": state["current_model"], "to_model": to, "provider": provider,
                 "reason": reason, "timestamp": clock.local().isoformat(),
                 "samples_generated": state["samples_generated"]}
        instant = micros(clock.instant)
    else:
        entry = {"from": state["current_model"], "to": to, "provider": provider,
                 "reason": reason, "at_sample": state["samples_generated"]}
        instant = None
    state["current_model"] = to
    return entry, instant


def start_instant(rng):
    """Most batches anywhere in 2025, clear of the repeated hour; some start
    in its first pass and run into its second."""
    if rng.random() < 0.08:
        return FALL_BACK + timedelta(minutes=rng.randint(20, 55), seconds=rng.randint(0, 59),
                                     microseconds=rng.randint(0, 999_999)), True
    while True:
        start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randint(0, 364 * 86_400), microseconds=rng.choice([0, rng.randint(1, 999_999)]))
        if not FALL_BACK - timedelta(hours=5) < start < FALL_BACK + timedelta(hours=2):
            return start, False


def run_batch(rng, db, clock):
    """One batch as the dashboard runs it; returns its instants."""
    start, in_fold = start_instant(rng)
    clock.instant = start
    older_format = rng.random() < 0.35
    crashed_early = rng.random() < 0.06
    batch_id = f"batch_{int(start.timestamp())}_{rng.getrandbits(32):08x}"
    model = None if crashed_early else rng.choice(MODELS)
    state = db.create_batch_state(batch_id, rng.choice(PROVIDERS), model,
                                  rng.choice([10, 50, 100, 500]))
    state.update(topic_filter=rng.choice(TOPICS), difficulty_filter=rng.choice(DIFFICULTIES),
                 reasoning_instruction=rng.choice([None, "Cite the controlling authority first."]))
    instants = {"started_at": micros(start), "completed_at": None, "errors": [],
                "model_switches": []}
    db._save_batch_to_db(state)
    if crashed_early:
        clock.instant += timedelta(seconds=rng.randint(1, 30))
        state["errors"].append({"error": "Worker crashed before choosing a model",
                                "traceback": "Traceback (most recent call last): ...",
                                "timestamp": clock.local().isoformat()})
        instants["errors"].append(micros(clock.instant))
        db._save_batch_to_db(state)
    else:
        # A batch in the repeated hour stays within it: 50 minutes at most.
        for _ in range(rng.randint(1, 4 if in_fold else 8)):
            clock.instant += timedelta(seconds=rng.randint(60, 720 if in_fold else 1800),
                                       microseconds=rng.randint(0, 999_999))
            produced = rng.randint(0, 25)
            state["samples_generated"] += produced
            state["total_tokens"] += produced * rng.randint(600, 2400)
            if rng.random() < 0.4:
                entry, instant = make_error(rng, clock, state, rng.choice(PROVIDERS))
                state["errors"].append(entry)
                instants["errors"].append(instant)
            if rng.random() < 0.25:
                entry, instant = make_switch(rng, clock, state, older_format)
                state["model_switches"].append(entry)
                instants["model_switches"].append(instant)
            db._save_batch_to_db(state)
    ending = rng.random()
    if ending < 0.12:
        return batch_id, instants  # the worker died: the row stays running
    clock.instant += timedelta(seconds=rng.randint(1, 120))
    if ending < 0.2:
        db.stop_batch(batch_id)  # stopped from the dashboard after a restart
    else:
        state["running"] = False
        state["completed_at"] = clock.local().isoformat()
        db._save_batch_to_db(state)
    instants["completed_at"] = micros(clock.instant)
    return batch_id, instants


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timezone", default="Europe/London")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    clock = Clock(ZoneInfo(args.timezone))
    legacy_app.now = clock.local
    db = legacy_app.open_history(args.out)
    instants = {}
    for _ in range(args.rows):
        batch_id, state_instants = run_batch(rng, db, clock)
        instants[batch_id] = state_instants
    history = db.get_batch_history()
    db.close()
    json.dump({"rows": len(history), "history": history, "instants": instants},
              sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
