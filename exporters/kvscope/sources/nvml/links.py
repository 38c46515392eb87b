"""NVLink reads through NVML: link inventory, byte counters and DL error counters.

Reads go through the agent's NVML session (session.py), so NVML errors arrive as `NvmlError`.
Every function blocks; collectors call them through the runtime's thread pool.

Field choices follow what was measured on H100/H200 (Hopper, driver 580):

* Bytes: fields 138/139 (THROUGHPUT_DATA_TX/RX) count KiB and are cumulative. Read with the
  default scope they return link 0 only (1/18 of the traffic on Hopper); read with scopeId
  0xFFFFFFFF they return the sum over all links in one cheap call (~1 ms per GPU). We always use
  the aggregate scope for the per-GPU totals; per-link reads (17 ms per GPU) are optional.
* Errors: fields 161/162/163 (ERROR_DL_REPLAY/RECOVERY/CRC) per link. See `read_errors` for why
  these, and not nvmlDeviceGetNvLinkErrorCounter, feed the replay/recovery/CRC counters.
* The legacy per-link fields (32-59, 60-73, 84-90, 96-119, 148-160) are never read: Hopper
  returns NOT_SUPPORTED for them, and some drivers report a success with 0, which would be a lie.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kvscope.parsers.pci import normalise_bus_id
from kvscope.sources.nvml.device import GpuIdentity, _text
from kvscope.sources.nvml.library import (
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_SUPPORTED,
    NvmlError,
    NvmlLibrary,
)
from kvscope.sources.nvml.session import NvmlSession

log = logging.getLogger(__name__)
T = TypeVar("T")

SCOPE_ALL_LINKS = 0xFFFFFFFF  # nvml.h: "a scopeId of UINT_MAX returns the aggregate value"
NVML_NVLINK_MAX_LINKS = 36  # nvidia-ml-py 13.x; Hopper SXM uses 18, Blackwell 18

FI_LINK_COUNT = 91  # NVML_FI_DEV_NVLINK_LINK_COUNT
FI_DATA_TX = 138  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, KiB
FI_DATA_RX = 139  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, KiB
FI_RAW_TX = 140  # data + protocol overhead, KiB
FI_RAW_RX = 141
FI_DL_REPLAY = 161  # NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY
FI_DL_RECOVERY = 162  # NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY
FI_DL_CRC = 163  # NVML_FI_DEV_NVLINK_ERROR_DL_CRC
FI_SPEED = 164  # NVML_FI_DEV_NVLINK_GET_SPEED, MB/s (10^6 bytes) per link and direction

# nvmlDeviceGetNvLinkErrorCounter counters; only the two the fields do not carry are read.
NVLINK_ERROR_DL_CRC_DATA = 3
NVLINK_ERROR_DL_ECC_DATA = 4

KIB = 1024
MB = 1_000_000

# nvmlValueType_t -> the c_nvmlValue_t union member holding the value
VALUE_MEMBERS: Mapping[int, str] = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal",
                                    5: "siVal", 6: "usVal"}
# nvmlNvLinkDeviceType_t
REMOTE_TYPES: Mapping[int, str] = {0: "gpu", 1: "ibmnpu", 2: "nvswitch", 255: "unknown"}
# nvmlDeviceGetNvLinkVersion's enum -> NVLink generation as NVIDIA's documents name it
# (H100/H200 report 6 = NVLink 4.0).
NVLINK_VERSIONS: Mapping[int, str] = {1: "1.0", 2: "2.0", 3: "2.2", 4: "3.0", 5: "3.1",
                                      6: "4.0", 7: "5.0"}

ERROR_FIELDS: Mapping[int, str] = {FI_DL_REPLAY: "replay", FI_DL_RECOVERY: "recovery",
                                   FI_DL_CRC: "crc"}


@dataclass(frozen=True)
class LinkInfo:
    """One NVLink of one GPU, as the static tier sees it."""

    link: int
    version: int | None  # NVML enum; None when unsupported
    speed_bytes: float | None  # per direction, bytes/s
    remote_type: str | None  # gpu | nvswitch | ibmnpu | unknown
    remote_pci_bus_id: str | None  # normalised like GpuIdentity.pci_bus_id


@dataclass
class Device:
    identity: GpuIdentity
    handle: Any
    links: tuple[LinkInfo, ...] = ()  # links NVML answers for (state may be down)
    unsupported: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class GpuBytes:
    gpu: GpuIdentity
    tx_bytes: int | None
    rx_bytes: int | None
    per_link: Mapping[int, tuple[int | None, int | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkState:
    gpu: GpuIdentity
    states: Mapping[int, bool]  # link -> active


@dataclass(frozen=True)
class LinkErrors:
    gpu: GpuIdentity
    counts: Mapping[tuple[int, str], int]  # (link, error kind) -> count


def enumerate_gpus(lib: NvmlLibrary) -> list[Device]:
    """Every GPU NVML answers for; a GPU already lost is skipped (the GPU collector says so)."""
    devices = []
    for index in range(lib.nvmlDeviceGetCount()):
        try:
            h = lib.nvmlDeviceGetHandleByIndex(index)
            identity = GpuIdentity(
                index=index, minor=lib.nvmlDeviceGetMinorNumber(h),
                uuid=_text(lib.nvmlDeviceGetUUID(h)), name=_text(lib.nvmlDeviceGetName(h)),
                pci_bus_id=_text(lib.nvmlDeviceGetPciInfo(h).busId), mig_enabled=None)
        except NvmlError as exc:
            if exc.code != NVML_ERROR_GPU_IS_LOST:
                raise
            log.debug("GPU %d lost during enumeration; skipped", index)
            continue
        devices.append(Device(identity, h))
    return devices


def optional_call(call: Any, *args: Any) -> Any:
    """A call whose NOT_SUPPORTED / unknown-function / bad-link answer means "absent"."""
    try:
        return call(*args)
    except NvmlError as exc:
        if exc.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND,
                        NVML_ERROR_INVALID_ARGUMENT):
            return None
        raise


def _field_map(lib: NvmlLibrary, handle: Any,
               specs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """(field, scope) -> integer value, for the fields that read successfully."""
    out: dict[tuple[int, int], int] = {}
    if not specs:
        return out
    for spec, fv in zip(specs, lib.nvmlDeviceGetFieldValues(handle, list(specs)), strict=False):
        if fv.nvmlReturn == 0:
            # Read the union member the value type names (a 4-byte uiVal read as ullVal is only
            # right while the rest of the union happens to be zero).
            member = VALUE_MEMBERS.get(int(fv.valueType), "ullVal")
            value = getattr(fv.value, member, None)
            out[spec] = int(value if value is not None else fv.value.ullVal)
    return out


def link_count(lib: NvmlLibrary, handle: Any) -> int:
    """Links NVML knows for this GPU: field 91, else probing link states (pre-Hopper drivers)."""
    count = _field_map(lib, handle, [(FI_LINK_COUNT, 0)]).get((FI_LINK_COUNT, 0))
    if count is not None:
        return count
    n = 0
    for link in range(NVML_NVLINK_MAX_LINKS):
        if optional_call(lib.nvmlDeviceGetNvLinkState, handle, link) is None:
            break
        n += 1
    return n


def read_links(lib: NvmlLibrary, device: Device) -> tuple[LinkInfo, ...]:
    """Static facts of every link: version, speed, what is on the other end."""
    h = device.handle
    count = link_count(lib, h)
    if count == 0:
        return ()
    speeds = _field_map(lib, h, [(FI_SPEED, link) for link in range(count)])
    links = []
    for link in range(count):
        version = optional_call(lib.nvmlDeviceGetNvLinkVersion, h, link)
        remote = optional_call(lib.nvmlDeviceGetNvLinkRemoteDeviceType, h, link)
        pci = optional_call(lib.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
        speed = speeds.get((FI_SPEED, link))
        links.append(LinkInfo(
            link=link,
            version=int(version) if version is not None else None,
            speed_bytes=float(speed) * MB if speed else None,
            remote_type=REMOTE_TYPES.get(int(remote), "unknown") if remote is not None else None,
            remote_pci_bus_id=normalise_bus_id(_text(pci.busId)) if pci is not None else None))
    return tuple(links)


class NvlinkSource:
    """Blocking NVLink reads over the GPUs enumerated by `open` (the static tier).

    A GPU that fails with GPU_IS_LOST is skipped for that read (the GPU collector reports it);
    any other NVML error on one GPU is counted in `errors` by (gpu index, read, error) and the
    other GPUs are still read.
    """

    def __init__(self, session: NvmlSession) -> None:
        self._session = session
        self._generation = 0
        self.devices: list[Device] = []
        self.errors: Counter[tuple[int, str, str]] = Counter()

    @property
    def lib(self) -> NvmlLibrary:
        return self._session.library()

    def open(self) -> list[Device]:
        """Enumerate the GPUs and their links (initialising the session on first use).
        Raises NvmlUnavailable, or NvmlError when NVML fails otherwise."""
        lib = self.lib
        self._generation = self._session.generation
        devices = enumerate_gpus(lib)
        for dev in devices:
            dev.links = self._guard(dev, "links", read_links, lib, dev) or ()
        self.devices = devices
        return devices

    def _current(self) -> NvmlLibrary:
        """The library, after enumerating again if the session was re-initialised since."""
        if self._generation != self._session.generation:
            self.open()
        return self.lib

    def _guard(self, dev: Device, what: str, fn: Callable[..., T], *args: Any,
               **kwargs: Any) -> T | None:
        try:
            return fn(*args, **kwargs)
        except NvmlError as exc:
            if exc.code != NVML_ERROR_GPU_IS_LOST:
                self.errors[(dev.identity.index, what, exc.name)] += 1
            return None

    def states(self) -> list[LinkState]:
        """Link up/down (nvmlDeviceGetNvLinkState: ~1.5 us a call, fine for the fast tier)."""
        lib = self._current()
        out = []
        for dev in self.devices:
            if dev.links:
                got = self._guard(dev, "state", _states, lib, dev)
                if got is not None:
                    out.append(got)
        return out

    def bytes(self, *, per_link: bool) -> list[GpuBytes]:
        """Cumulative NVLink data bytes per GPU (aggregate scope), optionally per link too."""
        lib = self._current()
        out = []
        for dev in self.devices:
            if dev.links:  # no NVLink on this GPU (PCIe part): absent, not zero
                got = self._guard(dev, "bytes", _bytes, lib, dev, per_link)
                if got is not None:
                    out.append(got)
        return out

    def link_errors(self, *, data_counters: bool) -> list[LinkErrors]:
        """DL error counters per link; see `_errors` for the choice of source."""
        lib = self._current()
        out = []
        for dev in self.devices:
            if dev.links:
                got = self._guard(dev, "errors", _errors, lib, dev, data_counters)
                if got is not None:
                    out.append(got)
        return out


def _states(lib: NvmlLibrary, dev: Device) -> LinkState:
    states = {}
    for info in dev.links:
        state = optional_call(lib.nvmlDeviceGetNvLinkState, dev.handle, info.link)
        if state is not None:
            states[info.link] = bool(state)
    return LinkState(dev.identity, states)


def _bytes(lib: NvmlLibrary, dev: Device, per_link: bool) -> GpuBytes:
    specs = [(FI_DATA_TX, SCOPE_ALL_LINKS), (FI_DATA_RX, SCOPE_ALL_LINKS)]
    if per_link:
        specs += [(fid, info.link) for info in dev.links for fid in (FI_DATA_TX, FI_DATA_RX)]
    values = _field_map(lib, dev.handle, specs)
    tx = values.get((FI_DATA_TX, SCOPE_ALL_LINKS))
    rx = values.get((FI_DATA_RX, SCOPE_ALL_LINKS))
    links: dict[int, tuple[int | None, int | None]] = {}
    if per_link:
        for info in dev.links:
            ltx = values.get((FI_DATA_TX, info.link))
            lrx = values.get((FI_DATA_RX, info.link))
            links[info.link] = (ltx * KIB if ltx is not None else None,
                                lrx * KIB if lrx is not None else None)
    return GpuBytes(dev.identity, tx * KIB if tx is not None else None,
                    rx * KIB if rx is not None else None, links)


def _errors(lib: NvmlLibrary, dev: Device, data_counters: bool) -> LinkErrors:
    """DL error counters of one GPU's links.

    Replay, recovery and CRC come from fields 161/162/163 with the link as scope, all links of a
    GPU in one nvmlDeviceGetFieldValues call. Why these and not nvmlDeviceGetNvLinkErrorCounter:

    * they are what DCGM's current NVLink error families (DCGM_FI_DEV_NVLINK_{REPLAY,RECOVERY,
      CRC}_ERROR_TOTAL, fields 497-499) are built on, so kvscope and dcgm-exporter agree;
    * one call per GPU instead of one call per link and counter (18 x 5 calls took 42 ms per GPU
      on H200);
    * the H200 "disagreement" (link 0: field 163 read 0 while the error-counter call gave
      CRC_DATA 5 and ECC_DATA 8) is not two answers for one counter: field 163 is the flit CRC
      count, and the call's own CRC_FLIT agreed (0). CRC_DATA and ECC_DATA are different
      counters that no field carries; `data_counters` reads just those two with the call, on
      the slow tier, under their own names, so nothing is counted twice.
    """
    specs = [(fid, info.link) for info in dev.links for fid in ERROR_FIELDS]
    values = _field_map(lib, dev.handle, specs)
    counts = {(link, ERROR_FIELDS[fid]): v for (fid, link), v in values.items()}
    if data_counters and "error_counter" not in dev.unsupported:
        counts.update(_data_counters(lib, dev))
    return LinkErrors(dev.identity, counts)


def _data_counters(lib: NvmlLibrary, dev: Device) -> dict[tuple[int, str], int]:
    counts = {}
    for info in dev.links:
        for counter, name in ((NVLINK_ERROR_DL_CRC_DATA, "crc_data"),
                              (NVLINK_ERROR_DL_ECC_DATA, "ecc_data")):
            value = optional_call(lib.nvmlDeviceGetNvLinkErrorCounter, dev.handle, info.link,
                                  counter)
            if value is not None:
                counts[(info.link, name)] = int(value)
    if not counts:
        dev.unsupported.add("error_counter")  # do not pay 42 ms per GPU again for nothing
    return counts
