"""A Dask worker preload for the tests: a worker process kills itself at a chosen moment of an mpobs task.

Every worker of a test's cluster loads it (``dask worker --preload``, or the
``DASK_DISTRIBUTED__WORKER__PRELOAD`` variable for the LocalCluster that mpobs starts).
The plan is a JSON file named by ``MPOBS_TEST_DASK_FAULTS``, read at each moment that
matters, so one cluster serves many plans: ``{"stage": ..., "task": N, "delay": S}``.
Each kill is claimed by creating ``<plan>.killed-<i>`` (``O_EXCL``), so it happens once
whichever worker gets there. Stages, each about task N (any attempt of it):

- ``running``: S seconds after it starts (on a LocalCluster: its part file half written);
- ``finished``: S seconds after its result is in its worker's memory, gathered or not;
- ``gathering``: when the client asks for its result, the worker dies instead of answering;
- ``behind``: the client's fetch of task N's result is held S seconds, and the other worker, once
  it holds a later result, dies 0.05 s before that hold ends: a finished result lost while the
  client was busy with another, taken up again by Dask as the client gets to it;
- ``between``: S seconds after its result was fetched and released (between two tasks);
- ``restart``: as ``running``, then the restarted worker process dies again while it starts;
- ``probing``: while it checks the input and builds the pipeline, before any task (N unused).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from typing import Any

PLAN_ENV = "MPOBS_TEST_DASK_FAULTS"


def _plan() -> dict[str, Any] | None:
    path = os.environ.get(PLAN_ENV)
    if not path:
        return None
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError):
        return None
    plan["path"] = path
    return plan


def _claim(plan: dict[str, Any], i: int) -> bool:
    """True once per plan for kill ``i``: the first worker to create its marker does it."""
    try:
        os.close(os.open(f"{plan['path']}.killed-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _killed(plan: dict[str, Any], i: int) -> bool:
    return os.path.exists(f"{plan['path']}.killed-{i}")


def _die(after: float = 0.0) -> None:
    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if after <= 0:
        kill()
    threading.Timer(after, kill).start()


def _index(key: Any) -> int | None:
    """The task index in an mpobs key, ``mpobs-task-{index}-{attempt}-{pid}``."""
    if isinstance(key, str) and key.startswith("mpobs-task-"):
        return int(key.split("-")[2])
    return None


class Faults:
    """The worker plugin; ``name`` makes it one per worker."""

    name = "mpobs-test-faults"

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.holding_back = False  # this worker holds back the fetch of a result (stage ``behind``)
        original = worker.handlers["get_data"]

        async def get_data(comm: Any, keys: Any = (), **kw: Any) -> Any:
            plan = _plan()
            indexes = {_index(k) for k in keys}
            if plan is not None and plan["task"] in indexes:
                if plan["stage"] == "gathering" and _claim(plan, 0):
                    _die()
                if plan["stage"] == "behind" and _claim(plan, 0):
                    self.holding_back = True
                    with open(f"{plan['path']}.hold-until", "w") as f:
                        f.write(str(time.time() + plan["delay"]))
                    await asyncio.sleep(plan["delay"])
            return await original(comm, keys=keys, **kw)

        worker.handlers["get_data"] = get_data
        original_run = worker.handlers["run"]

        def run(comm: Any, *args: Any, **kw: Any) -> Any:
            plan = _plan()
            if plan is not None and plan["stage"] == "probing" and _claim(plan, 0):
                _die()
            return original_run(comm, *args, **kw)

        worker.handlers["run"] = run

    def transition(self, key: Any, start: str, finish: str, **kw: Any) -> None:
        index = _index(key)
        plan = _plan() if index is not None else None
        if plan is None:
            return
        stage = plan["stage"]
        if index == plan["task"]:
            if (
                (finish == "executing" and stage in ("running", "restart") and _claim(plan, 0))
                or (finish == "memory" and stage == "finished" and _claim(plan, 0))
                or (
                    start == "memory" and finish in ("released", "forgotten") and stage == "between" and _claim(plan, 0)
                )
            ):
                _die(plan["delay"])
        elif (
            finish == "memory"
            and stage == "behind"
            and index > plan["task"]
            and _killed(plan, 0)
            and not self.holding_back
            and _claim(plan, 1)
        ):
            with open(f"{plan['path']}.hold-until") as f:
                _die(float(f.read()) - 0.05 - time.time())


def dask_setup(worker: Any) -> None:
    plan = _plan()
    if plan is not None and plan["stage"] == "restart" and _killed(plan, 0) and _claim(plan, 1):
        _die()  # the nanny's new worker process, while it starts
    plugin = Faults()
    plugin.setup(worker)
    worker.plugins[plugin.name] = plugin
