"""The dashboard's batch worker, as far as its history sees it.

`_batch_worker` in the dashboard's `BatchService` loops while fewer than
`total` samples exist and `running` is set, and changes the in-memory
state at fixed points: a sample adds to `samples_generated` and
`total_tokens`; a model switch sets `current_model` and appends a switch
whose `from` is `last_model` (the new model itself on the first switch);
after each iteration `progress` is the iteration count and the state is
saved whenever `samples_generated` is a multiple of 10; after the loop
`completed_at` is set, `running` cleared and the state saved; a crash
appends an error with a traceback and a timestamp, under `batch_lock`,
and saves. This runs that sequence from a script of steps, so that the
same run can be replayed against the legacy code and the client.

Steps: ("sample", tokens), ("switch", model, reason), ("crash", message).
"""
import traceback
from datetime import datetime


def run(state, steps, save, lock, now=datetime.now, between=None):
    """Runs `steps` on `state`, saving with `save` where the worker does;
    `between(index)` is called after each step (a test's hook). Returns the
    number of steps taken."""
    taken = 0
    try:
        for step in steps:
            if state["samples_generated"] >= state["total"] or not state["running"]:
                break
            kind = step[0]
            if kind == "sample":
                state["samples_generated"] += 1
                state["total_tokens"] += step[1]
                state["consecutive_failures"] = 0
            elif kind == "switch":
                model, reason = step[1], step[2]
                state["current_model"] = model
                state["model_switches"].append({
                    "from": state.get("last_model", model), "to": model,
                    "provider": state["current_provider"], "reason": reason,
                    "at_sample": state["samples_generated"]})
                state["last_model"] = model
            elif kind == "crash":
                raise RuntimeError(step[1])
            taken += 1
            state["progress"] = taken
            if state["samples_generated"] % 10 == 0:
                save(state)
            if between is not None:
                between(taken)
        state["completed_at"] = now().isoformat()
        state["running"] = False
        save(state)
    except Exception as error:  # noqa: BLE001 - the worker's own crash handler
        with lock:
            state["running"] = False
            state["completed_at"] = now().isoformat()
            state["errors"].append({"error": f"Batch worker crashed: {error}",
                                    "traceback": traceback.format_exc(),
                                    "timestamp": now().isoformat()})
            save(state)
    return taken
