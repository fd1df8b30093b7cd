"""Stopping long jobs cleanly: SIGTERM like Ctrl-C, worker pools that leave no orphans.

``gmd26 build``, ``run`` and ``train`` run for minutes to hours. When they are stopped (Ctrl-C
= SIGINT, or SIGTERM from ``kill``, ``timeout`` or a batch scheduler) they must stop their
worker processes, leave resumable state (atomic files, a status saying ``interrupted``) and
exit with 130 (SIGINT) or 143 (SIGTERM).

* :func:`sigterm_raises` makes SIGTERM raise :class:`Interrupted`, a ``KeyboardInterrupt``,
  in the main thread, so one code path (``except KeyboardInterrupt`` / ``finally``) handles
  both signals; ``except Exception`` blocks (e.g. "a failed cell must not stop the matrix")
  never swallow it.
* :func:`worker_ignores_sigint` is the initializer of worker processes: Ctrl-C in a terminal
  signals the whole process group, and only the parent should react (workers would otherwise
  print one traceback each).
* :func:`benchmark.executors.completed` waits for futures in short slices, so a signal is
  acted on at once whichever thread received it.
* :func:`stop_pool` cancels queued work and ends a ``ProcessPoolExecutor``'s workers now
  (terminate, then kill), instead of ``shutdown(wait=True)`` waiting for running units.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or another stop signal) was received; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(error: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 128 + int(getattr(error, "signum", signal.SIGINT))


def signal_name(error: KeyboardInterrupt) -> str:
    return signal.Signals(getattr(error, "signum", signal.SIGINT)).name


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Interrupted` in the main thread (elsewhere, and
    when called outside the main thread, nothing changes). The previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_ignores_sigint() -> None:
    """Pool initializer: the worker ignores SIGINT (the parent stops it with :func:`stop_pool`),
    gets SIGTERM if its parent dies without stopping it (``kill -9``; Linux), and tqdm uses a
    thread lock, not a process-shared semaphore that a worker stopped by SIGTERM would leave
    for the resource tracker to report as leaked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _terminate_with_parent()
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _terminate_with_parent() -> None:
    """Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: no orphan survives a killed parent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


PR_SET_PDEATHSIG = 1


def stop_pool(pool: ProcessPoolExecutor, timeout: float = 5.0) -> None:
    """Cancel queued work and end the pool's worker processes now: SIGTERM, then SIGKILL for
    any still alive after ``timeout`` seconds; then let the pool release its queues. Work a
    worker was doing is lost, so callers store results atomically as they finish (nothing
    half-written remains)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)
    # The workers are gone: the pool's manager thread sees it, fails what was pending and
    # closes its queues, so this returns at once and leaves no leaked semaphore behind.
    pool.shutdown(wait=True, cancel_futures=True)
