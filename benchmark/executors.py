"""Where work units run: in this process, in a local process pool, or on a ``dask.distributed``
cluster; and which device each running unit gets.

The benchmark matrix (one unit = one training cell) and the data build (one unit = one
trajectory) hand their units to an *executor*, any object with ``submit(fn, *args) ->
future`` whose futures offer ``done()`` and ``result()`` (and ``cancel()``):

* :class:`SerialExecutor`: runs each unit at once in this process (one worker);
* :func:`process_pool`: a local ``ProcessPoolExecutor`` (spawn), stopped at once on Ctrl-C;
* a ``dask.distributed.Client`` (a ``LocalCluster``, a ``dask scheduler`` started by hand,
  or a ``dask_jobqueue`` SLURM / PBS cluster), wrapped by :func:`as_executor`;
* any other object with ``submit`` (a ``ThreadPoolExecutor``, ...).

:func:`completed` is the one loop that submits units (at most ``window`` in flight), polls
their futures and yields each as it finishes; the matrix and the build both use it, so
they submit, wait, record failures and stop the same way on every executor.
:class:`DeviceSlots` hands each unit in flight the least-busy device of a list (``--devices
cuda:0,cuda:1``): with no more units in flight than devices, every running unit has a device
of its own.

dask is imported only here, and only when a ``--scheduler`` is used (:func:`connect_scheduler`,
:func:`scheduler_address`): ``import benchmark`` and the ``gmd26`` start-up never load it; a
``Client`` passed from Python is recognised without importing dask (:func:`is_dask_client`).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from benchmark.errors import UsageError
from benchmark.interrupts import stop_pool

SCHEDULER_TIMEOUT_S = 10.0
"""How long :func:`connect_scheduler` waits for a dask scheduler to answer."""
POLL_SECONDS = 0.05
"""How often :func:`completed` looks at its futures (a signal is acted on within this)."""

Item = TypeVar("Item")


class Executor(Protocol):
    """What a unit runner needs: ``submit(fn, *args)`` returning a future with ``done()`` and
    ``result()``, and ``cancel()`` if it can be cancelled (``concurrent.futures`` and
    ``dask.distributed`` futures have all three)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any: ...


class SerialExecutor:
    """Runs each submitted call at once in this process (one worker)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:
            future.set_exception(error)
        return future


class DaskExecutor:
    """A ``dask.distributed.Client`` as an :class:`Executor`: every unit is submitted as an
    impure task (``pure=False``: units write files, so two submissions of the same call are
    two runs, never one cached result)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def threads(self) -> int:
        """Worker threads of the cluster now (at least 1: an adaptive cluster may have none
        yet)."""
        return max(1, sum(self.client.nthreads().values()))

    def __str__(self) -> str:
        return f"dask scheduler {self.client.scheduler.address}"


def is_dask_client(executor: object) -> bool:
    """Whether ``executor`` is a ``dask.distributed.Client`` (checked without importing dask)."""
    return any(
        cls.__module__.split(".")[0] == "distributed" and cls.__name__ == "Client"
        for cls in type(executor).__mro__
    )


def as_executor(executor: Any) -> Executor:
    """``executor`` ready for :func:`completed`: a dask ``Client`` wrapped in
    :class:`DaskExecutor`, anything else as it is."""
    return DaskExecutor(executor) if is_dask_client(executor) else executor


@contextmanager
def process_pool(
    workers: int, initializer: Callable[[], None] | None = None
) -> Iterator[ProcessPoolExecutor]:
    """A spawn ``ProcessPoolExecutor`` of ``workers`` processes; on any exception (Ctrl-C,
    SIGTERM, an error) its workers are stopped at once (:func:`stop_pool`), otherwise it is
    shut down after its work."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=initializer)
    try:
        yield pool
    except BaseException:
        stop_pool(pool)  # now: a running unit would otherwise go on for minutes
        raise
    pool.shutdown(wait=True)


def completed(
    executor: Executor,
    fn: Callable[..., Any],
    items: Iterable[Item],
    window: int,
    arguments: Callable[[Item], Sequence[Any]] = tuple,
) -> Iterator[tuple[Item, Any]]:
    """Run ``fn(*arguments(item))`` for every item on ``executor`` and yield ``(item,
    future)`` as each finishes, with at most ``window`` submitted and unfinished.

    ``arguments`` is called when the item is submitted, after the items yielded before it
    were handled by the caller (so a resource freed by the caller can be handed on). An item
    the executor refuses (``submit`` raises, e.g. a pool broken by a killed worker) is
    yielded with a future holding that error, like an item whose worker failed.
    Completion is detected by polling ``future.done()``, which the futures of every executor
    offer (``concurrent.futures.as_completed`` rejects dask futures), in slices of
    :data:`POLL_SECONDS`, so Ctrl-C and SIGTERM are acted on at once. If the loop is left
    early (an exception, or the caller closing the generator), the futures still pending are
    cancelled; a unit already running on a dask worker finishes there.
    """
    queue = list(items)[::-1]
    pending: list[tuple[Item, Any]] = []
    try:
        while queue or pending:
            while queue and len(pending) < max(1, window):
                item = queue.pop()
                pending.append((item, _submit(executor, fn, arguments(item))))
            finished = [entry for entry in pending if entry[1].done()]
            if not finished:
                time.sleep(POLL_SECONDS)
                continue
            for entry in finished:
                pending.remove(entry)
                yield entry
    finally:
        for _, future in pending:
            if hasattr(future, "cancel"):
                future.cancel()


def _submit(executor: Executor, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
    """``executor.submit(fn, *args)``, or a failed future if the executor refuses it."""
    try:
        return executor.submit(fn, *args)
    except Exception as error:
        future: Future = Future()
        future.set_exception(error)
        return future


class DeviceSlots:
    """Hands each unit in flight the least-busy device of ``devices`` (the first of equals),
    so with at most ``len(devices)`` units in flight every one has a device of its own, and
    with more they share round-robin."""

    def __init__(self, devices: Sequence[str]) -> None:
        if not devices:
            raise ValueError("DeviceSlots needs at least one device")
        self.devices = tuple(devices)
        self.busy: Counter[str] = Counter()

    def acquire(self) -> str:
        """The device for the next unit (marked busy until :meth:`release`)."""
        device = min(self.devices, key=lambda name: self.busy[name])
        self.busy[device] += 1
        return device

    def release(self, device: str) -> None:
        """A unit on ``device`` finished."""
        self.busy[device] -= 1


def scheduler_address(target: str) -> str:
    """The address of a dask scheduler given as an address (``tcp://host:8786``) or as the
    path of a scheduler file (``dask scheduler --scheduler-file F``, ``dask_jobqueue``).

    Raises:
        UsageError: a scheduler file that does not exist or holds no address, or an address
            that is not ``[protocol://]host:port``.
    """
    path = Path(target)
    if path.suffix == ".json" or path.is_file():
        try:
            return str(json.loads(path.read_text())["address"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(
                f"--scheduler {target}: not a readable dask scheduler file ({error}); pass the "
                f"file written by `dask scheduler --scheduler-file {target}` or an address "
                f"such as tcp://host:8786"
            ) from error
    from distributed.comm import parse_address, parse_host_port

    try:
        parse_host_port(parse_address(target)[1])
    except ValueError as error:
        raise UsageError(
            f"--scheduler {target}: not a dask scheduler address ({error}); use "
            f"[tcp://]host:port, e.g. tcp://127.0.0.1:8786, or a scheduler file"
        ) from error
    return target


def connect_scheduler(target: str, timeout: float | None = None) -> Any:
    """A ``dask.distributed.Client`` connected to the scheduler ``target`` (address or
    scheduler file), checked before any work is submitted.

    Raises:
        UsageError: dask is not installed, or no scheduler answered within ``timeout``
            seconds (default :data:`SCHEDULER_TIMEOUT_S`): one line naming the address and
            what to do.
    """
    try:
        from distributed import Client
    except ImportError as error:
        raise UsageError(
            f"--scheduler needs dask.distributed ({error}); install it with "
            f"pip install 'dask[distributed]' (./install.sh does)"
        ) from error
    address = scheduler_address(target)
    timeout = SCHEDULER_TIMEOUT_S if timeout is None else timeout
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise UsageError(
            f"--scheduler {target}: no dask scheduler answered at {address} within "
            f"{timeout:g} s ({error}); start one (`dask scheduler`, or a dask_jobqueue "
            f"cluster, docs/cluster.md) and pass its address, or leave out --scheduler to run "
            f"on this machine"
        ) from error


@contextmanager
def scheduler_client(target: str | None) -> Iterator[Any]:
    """:func:`connect_scheduler` for ``target`` (``None``: no cluster, yields ``None``),
    closed on exit."""
    if target is None:
        yield None
        return
    client = connect_scheduler(target)
    try:
        yield client
    finally:
        client.close()
