"""The fake's XID wait sleeps until a fault can be due, as the real call blocks in the kernel,
instead of waking every 50 ms (a third of the simulated agent's idle CPU)."""

from __future__ import annotations

import time
from collections.abc import Callable

from kvscope.sim.node import XidFault
from kvscope.sim.nvml import FakeNvml
from kvscope.sim.scenarios import SimOptions, build_scenario


def _registered_fake(clock: Callable[[], float] = time.monotonic) -> FakeNvml:
    node = build_scenario("healthy", SimOptions(latency_scale=0.0, clock=clock))
    fake = FakeNvml(node)
    events = fake.nvmlEventSetCreate()
    for i in range(len(node.gpus)):
        fake.nvmlDeviceRegisterEvents(fake.nvmlDeviceGetHandleByIndex(i), 0x8, events)
    return fake


def test_wait_sleeps_until_the_next_fault_of_a_registered_gpu() -> None:
    fake = _registered_fake()
    assert fake._until_next_xid() == 3600.0  # no fault: the caller's timeout bounds the wait
    fake.node.xid_faults.append(XidFault(after=fake.node.elapsed() + 20.0, gpu=2, xid=79))
    assert 19.0 < fake._until_next_xid() <= 20.0


def test_due_delivered_or_unregistered_faults_do_not_spin_the_wait() -> None:
    fake = _registered_fake()
    fake._registered.discard(fake.node.gpus[5].uuid)
    fake.node.xid_faults += [XidFault(after=0.0, gpu=1, xid=31),  # due: delivered now
                             XidFault(after=fake.node.elapsed() + 5.0, gpu=5, xid=48)]
    event = fake.nvmlEventSetWait(object(), 10)
    assert event.eventData == 31
    assert fake._until_next_xid() == 3600.0


def test_a_hand_moved_clock_is_still_checked_every_50_ms() -> None:
    now = [1_000.0]
    fake = _registered_fake(clock=lambda: now[0])
    assert fake._until_next_xid() == 0.05
