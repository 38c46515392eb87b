"""The NVML seam: one session per agent, errors translated there, and a fake that has the shape
of the real library (mypy checks the types; this checks that nothing is missing at run time)."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from conftest import sim_context
from kvscope.app import build_runtime
from kvscope.parsers.pci import normalise_bus_id, sysfs_bus_id
from kvscope.sim.nvml import FakeNvml
from kvscope.sources.nvml import NvmlError, NvmlLibrary, NvmlSession, NvmlUnavailable
from kvscope.sources.nvml.library import NVML_ERROR_GPU_IS_LOST, NVML_ERROR_UNKNOWN


def protocol_members() -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(NvmlLibrary)
                  if name.startswith(("nvml", "c_nvml")))


def test_the_protocol_lists_what_the_readers_call() -> None:
    members = protocol_members()
    assert len(members) > 50 and "nvmlEventSetWait" in members
    assert "c_nvmlGpmMetricsGet_t" in members


@pytest.mark.parametrize("library", [FakeNvml, pynvml], ids=["fake", "pynvml"])
def test_library_has_every_protocol_member(library: object) -> None:
    assert [m for m in protocol_members() if not hasattr(library, m)] == []


async def test_one_nvml_session_for_every_nvml_collector() -> None:
    ctx = sim_context("healthy", overrides={"collectors.nvlink.enabled": True,
                                            "collectors.topology.enabled": True,
                                            "collectors.topology.kubernetes_api": False})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    await runtime.poll_all_once()
    await runtime.stop()
    assert ctx.nvml.calls["nvmlInit"] == 1  # three collectors, one initialisation
    assert ctx.nvml.calls["nvmlShutdown"] == 0  # the session's owner shuts it down, once


def test_errors_are_translated_at_the_seam() -> None:
    ctx = sim_context("healthy", failing_calls={"nvmlDeviceGetPowerUsage": NVML_ERROR_UNKNOWN})
    lib = NvmlSession(lambda: ctx.nvml).library()
    handle = lib.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(NvmlError) as caught:
        lib.nvmlDeviceGetPowerUsage(handle)
    assert (caught.value.code, caught.value.call, caught.value.name) == \
        (NVML_ERROR_UNKNOWN, "nvmlDeviceGetPowerUsage", "nvml_error_999")
    assert isinstance(caught.value.__cause__, pynvml.NVMLError)
    with pytest.raises(TypeError):  # a wrong call is a bug, not an NVML answer
        lib.nvmlDeviceGetP2PStatus(handle, handle, (0,))
    ctx.sim.gpus[0].lost_after = 0.0
    with pytest.raises(NvmlError) as lost:
        lib.nvmlDeviceGetPowerUsage(handle)
    assert lost.value.code == NVML_ERROR_GPU_IS_LOST and lost.value.name == "gpu_is_lost"


def test_missing_library_is_unavailable_and_asked_again() -> None:
    ctx = sim_context("no-nvml")
    session = NvmlSession(lambda: ctx.nvml)
    with pytest.raises(NvmlUnavailable):
        session.library()
    ctx.sim.library_missing = False  # the driver was installed after the agent started
    assert session.library().nvmlDeviceGetCount() == 8
    assert session.generation == 1


@pytest.mark.parametrize(("text", "nvml", "sysfs"), [
    ("00000000:18:00.0", "00000000:18:00.0", "0000:18:00.0"),
    ("0000:2a:00.0", "00000000:2A:00.0", "0000:2a:00.0"),
    ("00000000:DB:00.0\x00\x00", "00000000:DB:00.0", "0000:db:00.0"),
    (" 0001:05:00.1 ", "00000001:05:00.1", "0001:05:00.1"),
    ("not-a-bus-id", "NOT-A-BUS-ID", "not-a-bus-id"),
    ("zz:18:00.0", "ZZ:18:00.0", "zz:18:00.0"),
])
def test_one_bus_id_parser_two_spellings(text: str, nvml: str, sysfs: str) -> None:
    assert normalise_bus_id(text) == nvml
    assert sysfs_bus_id(text) == sysfs
