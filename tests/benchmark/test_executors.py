"""Executors: the one submit / poll / collect loop, device placement, dask clients and scheduler
addresses (the matrix and the build on a real cluster: ``test_matrix.py``,
``dataset/test_generation.py``; the command line: ``cli/test_scheduler.py``)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmark.errors import UsageError
from benchmark.executors import (
    DaskExecutor,
    DeviceSlots,
    as_executor,
    completed,
    is_dask_client,
    scheduler_address,
)


def test_device_slots_give_units_in_flight_their_own_device_then_share():
    slots = DeviceSlots(("cuda:0", "cuda:1"))
    first, second = slots.acquire(), slots.acquire()
    assert (first, second) == ("cuda:0", "cuda:1")
    slots.release("cuda:0")
    assert slots.acquire() == "cuda:0"  # the free one, not the next in turn
    assert slots.acquire() == "cuda:0"  # all busy: shared, the first of the least busy
    assert slots.acquire() == "cuda:1"
    with pytest.raises(ValueError, match="at least one device"):
        DeviceSlots(())


class _Tracker:
    """A unit that records how many units run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return item * 10


def test_completed_holds_the_window_and_submits_after_each_result_is_handled():
    tracker, events = _Tracker(), []

    def arguments(item: int) -> tuple[int]:
        events.append(f"submit {item}")
        return (item,)

    with ThreadPoolExecutor(4) as pool:
        for item, future in completed(pool, tracker, range(6), 2, arguments):
            assert future.result() == item * 10
            events.append(f"done {item}")
    assert sorted(e for e in events if e.startswith("done")) == [f"done {i}" for i in range(6)]
    assert tracker.most == 2  # four threads, two in flight
    assert events.index("submit 2") > min(events.index("done 0"), events.index("done 1"))


def test_leaving_completed_early_cancels_the_pending_units():
    submitted = []

    class Recording:
        def __init__(self, pool):
            self.pool = pool

        def submit(self, fn, *args):
            submitted.append(self.pool.submit(fn, *args))
            return submitted[-1]

    with ThreadPoolExecutor(1) as pool:
        units = completed(Recording(pool), time.sleep, [(0.2,)] * 4, 4)
        next(units)
        units.close()
    assert len(submitted) == 4 and sum(f.cancelled() for f in submitted) >= 2


def test_a_unit_the_executor_refuses_is_yielded_with_its_error():
    """A pool broken by a killed worker refuses further work: each refused unit comes back
    with the error (to be recorded like a unit whose worker failed), the loop goes on."""

    class Broken(ThreadPoolExecutor):
        def submit(self, fn, *args):
            if args[0] > 0:
                raise RuntimeError("pool broken")
            return super().submit(fn, *args)

    with Broken(1) as pool:
        units = completed(pool, abs, [(0,), (1,), (2,)], 1)
        outcomes = {args[0]: future.exception() for args, future in units}
    assert outcomes[0] is None
    assert [str(outcomes[i]) for i in (1, 2)] == ["pool broken", "pool broken"]


def test_a_dask_client_is_wrapped_and_submits_impure_tasks(dask_client):
    executor = as_executor(dask_client)
    assert is_dask_client(dask_client) and isinstance(executor, DaskExecutor)
    assert str(executor) == f"dask scheduler {dask_client.scheduler.address}"
    assert executor.threads() == 2
    a, b = executor.submit(sum, [1, 2]), executor.submit(sum, [1, 2])
    assert a.key != b.key  # two runs of a unit that writes files, never one cached result
    assert a.result() == b.result() == 3
    with ThreadPoolExecutor(1) as pool:
        assert as_executor(pool) is pool and not is_dask_client(pool)


def test_scheduler_address_from_an_address_or_a_scheduler_file(tmp_path):
    assert scheduler_address("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": "tcp://10.0.0.2:8786", "type": "Scheduler"}))
    assert scheduler_address(str(scheduler_file)) == "tcp://10.0.0.2:8786"
    with pytest.raises(UsageError, match="not a readable dask scheduler file"):
        scheduler_address(str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="--scheduler localhost: not a dask scheduler address"):
        scheduler_address("localhost")
