"""The Dask executor's socket protocol: every message between the coordinator and the client process.

``mpobs.executors.dask.executor`` (in the coordinator) starts the client process,
``mpobs.executors.dask.bridge``, and talks to it over a socket pair in pickled messages
(``multiprocessing.connection``), matched by class on arrival.

Coordinator to client process:

- ``Connect(workers, address)``: start a LocalCluster of ``workers`` processes, or a client of the
  scheduler at ``address``; answered by ``Connected(threads, dashboard_link)`` or ``Refused``.
- ``Probe(files, spec)``: run ``mpobs.executors.dask.remote.probe`` on every worker (it sees the
  input files as we do, it builds the pipeline); answered by ``Probed(answers)`` (per worker
  address) or ``Refused``.
- ``Start(spec, layout, settings, part_dir)``: what every task of the run shares; no answer.
- ``Submit(key, task, part)``: run ``task`` as the future ``key`` (its output to the part file
  ``part``, or in its result); answered by ``Progress`` while it runs and ``Ended`` once it ends.
- ``Close()``, or the socket closing: cancel what runs, close the client (and its LocalCluster), exit.

Client process to coordinator:

- ``Refused(message)``: it cannot connect, or the probe failed; the run is refused (exit 2).
- ``Progress(key, counts)``: the running task's counts so far (twice a second), for the live view.
- ``Ended(key, kind, payload)``: the task ``key`` ended. ``kind`` is ``finished`` (``payload``:
  its result and its worker's address), ``killed`` (its worker died running it, Dask's
  KilledWorker; ``payload``: that worker's address), ``lost`` (it finished, but its result could
  not be fetched), ``cancelled`` (the scheduler went away) or ``error`` (the task raised);
  ``payload`` is then a text for people. A result lost with its worker before it was fetched is
  no end: Dask computes it again, and the task ends when that run does.
- ``Workers(workers, status)``: every second, by itself: the cluster's workers as its scheduler
  sees them, and the client's status (a lost scheduler shows there).
- ``Failed(message)``: the client process itself failed, and ends.

Plain classes with ``__slots__``, pickled as they are (protocol >= 2 pickles slots): a task
here is 16 MiB and costs Dask 1-2 ms, so a few bytes more per message do not matter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpobs.executors.task import TaskSettings
    from mpobs.inputs.base import Task
    from mpobs.metrics.layout import Layout
    from mpobs.pipeline.config import PipelineSpec


# -- coordinator to client process ------------------------------------------------------
class Connect:
    """Start a LocalCluster of ``workers`` processes, or (``address``) a client of that scheduler."""

    __slots__ = ("address", "workers")

    def __init__(self, workers: int, address: str | None) -> None:
        self.workers, self.address = workers, address


class Probe:
    """Check on every worker that it sees ``files`` as we do and builds the pipeline ``spec``."""

    __slots__ = ("files", "spec")

    def __init__(self, files: list[str], spec: PipelineSpec) -> None:
        self.files, self.spec = files, spec


class Start:
    """What every task of the run shares; ``part_dir``: where a LocalCluster's tasks write their output."""

    __slots__ = ("layout", "part_dir", "settings", "spec")

    def __init__(self, spec: PipelineSpec, layout: Layout, settings: TaskSettings, part_dir: str | None) -> None:
        self.spec, self.layout, self.settings, self.part_dir = spec, layout, settings, part_dir


class Submit:
    """Run ``task`` as the future ``key``; its output to the part file ``part``, or (None) in its result."""

    __slots__ = ("key", "part", "task")

    def __init__(self, key: str, task: Task, part: str | None) -> None:
        self.key, self.task, self.part = key, task, part


class Close:
    """Cancel what runs, close the client and its cluster, exit."""

    __slots__ = ()


ToBridge = Connect | Probe | Start | Submit | Close


# -- client process to coordinator ------------------------------------------------------
class Connected:
    """The cluster is there: ``threads`` worker threads in all, its dashboard at ``dashboard_link``."""

    __slots__ = ("dashboard_link", "threads")

    def __init__(self, threads: int, dashboard_link: str | None) -> None:
        self.threads, self.dashboard_link = threads, dashboard_link


class Refused:
    """The run cannot go on there (``message`` says why): no cluster, or a worker failed the probe."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class Probed:
    """Every worker's answer to the probe (``remote.probe``), by its address."""

    __slots__ = ("answers",)

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers


class Progress:
    """The running task ``key``'s counts so far."""

    __slots__ = ("counts", "key")

    def __init__(self, key: str, counts: list[int]) -> None:
        self.key, self.counts = key, counts


class Ended:
    """The task ``key`` ended as ``kind`` says; ``payload``: its result and worker, or a text (module docstring)."""

    __slots__ = ("key", "kind", "payload")

    def __init__(self, key: str, kind: str, payload: Any) -> None:
        self.key, self.kind, self.payload = key, kind, payload


class Workers:
    """The cluster's workers as its scheduler sees them (by address), and the client's ``status``."""

    __slots__ = ("status", "workers")

    def __init__(self, workers: dict[str, dict[str, Any]], status: str) -> None:
        self.workers, self.status = workers, status


class Failed:
    """The client process failed (``message``), and ends."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


ToExecutor = Connected | Refused | Probed | Progress | Ended | Workers | Failed
