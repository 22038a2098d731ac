"""What ``mpobs process`` starts before it imports anything else."""

from __future__ import annotations


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now, rather than when the segment is made.

    It unlinks the stats segment if the coordinator is killed outright, and it is a
    new Python interpreter: 25-45 ms of CPU. Started before click and the engine are
    imported (about 60 ms), it runs on a core that idles meanwhile and is done before
    the workers fork; started after click, as it was, it overlapped the workers' first
    tasks on a 2-core machine (bench: small jobs). If it cannot start here, making the
    segment tries again and reports what is wrong.
    """
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except OSError:
        pass
