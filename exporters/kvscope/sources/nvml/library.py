"""The NVML seam: the library's shape (`NvmlLibrary`), its errors, and loading pynvml.

Both the real `pynvml` module (nvidia-ml-py) and the simulator's `FakeNvml` satisfy
`NvmlLibrary`; mypy checks the fake against it. Errors are translated here, once: every call
made through a session (session.py) raises `NvmlError` with the NVML return code, whatever the
library raised, so the readers catch one typed exception and no reader inspects pynvml's.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

# NVML return codes (nvml.h); literal so the module works without pynvml installed.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

# Codes that mean the library or driver itself is gone (not one GPU or one call).
LIBRARY_GONE = frozenset({NVML_ERROR_UNINITIALIZED, NVML_ERROR_DRIVER_NOT_LOADED,
                          NVML_ERROR_LIBRARY_NOT_FOUND})

_NAMES = {NVML_ERROR_NOT_SUPPORTED: "not_supported", NVML_ERROR_TIMEOUT: "timeout",
          NVML_ERROR_GPU_IS_LOST: "gpu_is_lost", NVML_ERROR_FUNCTION_NOT_FOUND:
          "function_not_found", NVML_ERROR_UNINITIALIZED: "uninitialized",
          NVML_ERROR_DRIVER_NOT_LOADED: "driver_not_loaded"}


class NvmlUnavailable(Exception):
    """No usable NVML: no library, no driver. Means "no GPU hardware" to the collector."""


class NvmlError(Exception):
    """An NVML call failed with return code `code` (None: the library raised something that
    carries no code)."""

    def __init__(self, code: int | None, call: str, detail: str = "") -> None:
        super().__init__(f"{call}: {detail or code}")
        self.code = code
        self.call = call

    @property
    def name(self) -> str:
        """The error as a label value: not_supported, gpu_is_lost, nvml_error_<code>, ..."""
        if self.code is None:
            return "nvml_error"
        return _NAMES.get(self.code, f"nvml_error_{self.code}")

    @property
    def library_gone(self) -> bool:
        return self.code in LIBRARY_GONE


def translate(exc: BaseException, call: str) -> NvmlError | None:
    """The NvmlError an exception of the library stands for, or None when it is not NVML's
    (a TypeError from a wrong argument stays a bug, not an NVML answer)."""
    if isinstance(exc, NvmlError):
        return exc
    value = getattr(exc, "value", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return NvmlError(value, call, str(exc))
    if type(exc).__name__.startswith("NVMLError"):
        return NvmlError(None, call, str(exc))
    return None


class NvmlLibrary(Protocol):
    """The NVML calls kvscope makes, with pynvml's names. Handles and structures are opaque
    (`Any`): only the library that made them reads them. Parameters are positional-only, so an
    implementation may name them as it likes.

    Optional calls that old drivers or pynvml releases lack (nvmlDeviceGetTemperatureV,
    nvmlDeviceGetNumaNodeId, nvmlDeviceGetMemoryAffinity) are not members: readers look them
    up with getattr and fall back."""

    @property
    def c_nvmlGpmMetricsGet_t(self) -> Callable[[], Any]: ...  # the GPM request structure

    # system and enumeration
    def nvmlInit(self, /) -> None: ...
    def nvmlShutdown(self, /) -> None: ...
    def nvmlSystemGetDriverVersion(self, /) -> str | bytes: ...
    def nvmlDeviceGetCount(self, /) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> Any: ...
    def nvmlDeviceGetMinorNumber(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetUUID(self, handle: Any, /) -> str | bytes: ...
    def nvmlDeviceGetName(self, handle: Any, /) -> str | bytes: ...
    def nvmlDeviceGetPciInfo(self, handle: Any, /) -> Any: ...
    # MIG
    def nvmlDeviceGetMigMode(self, handle: Any, /) -> Sequence[int]: ...
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int, /) -> Any: ...
    def nvmlDeviceGetGpuInstanceId(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetComputeInstanceId(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetGpuInstanceById(self, handle: Any, gpu_instance_id: int, /) -> Any: ...
    def nvmlGpuInstanceGetInfo(self, gpu_instance: Any, /) -> Any: ...
    def nvmlDeviceGetGpuInstanceProfileInfoById(self, handle: Any, profile_id: int,
                                                /) -> Any: ...
    # fast readings
    def nvmlDeviceGetUtilizationRates(self, handle: Any, /) -> Any: ...
    def nvmlDeviceGetEncoderUtilization(self, handle: Any, /) -> Sequence[int]: ...
    def nvmlDeviceGetDecoderUtilization(self, handle: Any, /) -> Sequence[int]: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int, /) -> int: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int, /) -> int: ...
    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[Any], /) -> Sequence[Any]: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any, /, version: int | None = ...) -> Any: ...
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any, /) -> Sequence[Any]: ...
    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetGridLicensableFeatures(self, handle: Any, /) -> Any: ...
    # slow readings
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetPcieReplayCounter(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetRemappedRows(self, handle: Any, /) -> Sequence[int]: ...
    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter: int,
                                    /) -> int: ...
    # GPM
    def nvmlGpmQueryDeviceSupport(self, handle: Any, /) -> Any: ...
    def nvmlGpmSampleAlloc(self, /) -> Any: ...
    def nvmlGpmSampleFree(self, sample: Any, /) -> None: ...
    def nvmlGpmSampleGet(self, handle: Any, sample: Any, /) -> Any: ...
    def nvmlGpmMigSampleGet(self, handle: Any, gpu_instance_id: int, sample: Any, /) -> Any: ...
    def nvmlGpmMetricsGet(self, request: Any, /) -> Any: ...
    # XID events
    def nvmlEventSetCreate(self, /) -> Any: ...
    def nvmlDeviceRegisterEvents(self, handle: Any, mask: int, event_set: Any, /) -> None: ...
    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int, /) -> Any: ...
    def nvmlEventSetFree(self, event_set: Any, /) -> None: ...
    # NVLink and topology
    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int, /) -> int: ...
    def nvmlDeviceGetNvLinkVersion(self, handle: Any, link: int, /) -> int: ...
    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: Any, link: int, /) -> int: ...
    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: Any, link: int, /) -> Any: ...
    def nvmlDeviceGetNvLinkErrorCounter(self, handle: Any, link: int, counter: int,
                                        /) -> int: ...
    def nvmlDeviceGetTopologyCommonAncestor(self, a: Any, b: Any, /) -> int: ...
    def nvmlDeviceGetP2PStatus(self, a: Any, b: Any, index: int, /) -> int: ...
    def nvmlDeviceGetCpuAffinity(self, handle: Any, words: int, /) -> Sequence[int]: ...


class _Translating:
    """A library whose every call raises NvmlError instead of the library's own exceptions."""

    def __init__(self, lib: NvmlLibrary) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._lib, name)
        if not callable(target) or isinstance(target, type):
            return target

        @functools.wraps(target)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                # Looked up at each call, so a test that swaps one call on the fake is heard.
                return getattr(self._lib, name)(*args, **kwargs)
            except Exception as exc:
                error = translate(exc, name)
                if error is None:
                    raise
                raise error from exc

        return call


def translating(lib: NvmlLibrary) -> NvmlLibrary:
    """`lib` with its errors translated to NvmlError at the seam."""
    if isinstance(lib, _Translating):
        return cast(NvmlLibrary, lib)
    return cast(NvmlLibrary, _Translating(lib))


def load_library(path: str | None = None) -> NvmlLibrary:
    """The real pynvml module, or NvmlUnavailable when nvidia-ml-py itself is missing.

    A missing libnvidia-ml.so surfaces later, from nvmlInit, as NVML_ERROR_LIBRARY_NOT_FOUND.
    """
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable("python package nvidia-ml-py is not installed") from exc
    if path:
        # pynvml looks the library up by name; preloading it by path makes that lookup succeed.
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise NvmlUnavailable(f"cannot load NVML from {path}: {exc}") from exc
    return cast(NvmlLibrary, pynvml)
