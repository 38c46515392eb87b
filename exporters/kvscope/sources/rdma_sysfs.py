"""Reader for /sys/class/infiniband under a configurable sysfs root (`--path.sysfs`).

Only I/O happens here; kvscope.parsers.rdma_sysfs turns the text into records. Every function
blocks (each PMA counter read is a MAD to the NIC), so the RDMA collector calls them off the
event loop. A file that cannot be read (EINVAL, EPERM, EOPNOTSUPP from drivers that do not
implement it) is left out, as node_exporter does, never read as zero. A counter file that was
listed in its directory but is gone when opened is reported in `RawPort.vanished`, so the
collector can count it instead of letting the series drop out unnoticed.

Each device is read on its own thread under its own timeout (`DeviceThreads`): a driver whose
sysfs read never returns (a wedged firmware command behind a PMA MAD) costs that device's
series, not every device's.

The device filter (`collectors.rdma.devices`) applies to the names in class/infiniband before
anything under a device is opened: reading the PMA counters of Fabric-Manager-managed ConnectX-7
PFs floods dmesg, so an excluded device must cost nothing but a directory entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kvscope.parsers.rdma_sysfs import COUNTER_DIRS, RawDevice, RawPort

T = TypeVar("T")

DEVICE_FILES = ("fw_ver", "hca_type", "board_id", "node_guid", "node_type", "node_desc")
PORT_FILES = ("state", "phys_state", "rate", "link_layer")
MAX_FILE = 4096  # sysfs attributes are at most a page


class SysfsRdma:
    def __init__(
        self, sysfs_root: Path, wanted: Callable[[str], bool] = lambda _name: True
    ) -> None:
        self.root = sysfs_root
        self.class_dir = sysfs_root / "class" / "infiniband"
        self._wanted = wanted

    def device_names(self) -> list[str]:
        """The devices to read: class/infiniband entries the device filter lets through."""
        try:
            names = [entry.name for entry in os.scandir(self.class_dir)]
        except OSError:
            return []  # no RDMA stack on this node: no devices, not an error
        return sorted(n for n in names if self._wanted(n))

    def read_erdma_compat_mode(self) -> str | None:
        """Alibaba's erdma module parameter compat_mode (a bool module_param, mode 0444: "Y" or
        "N"); None when the module is not loaded or has no such parameter (upstream erdma)."""
        return _read(self.root / "module" / "erdma" / "parameters" / "compat_mode")

    def read_device(self, name: str) -> RawDevice:
        base = self.class_dir / name
        attrs = _read_files(base, DEVICE_FILES)
        attrs.update(_read_files(base / "device", ("numa_node",)))
        driver = ""
        with contextlib.suppress(OSError):
            driver = str((base / "device" / "driver").readlink())
        return RawDevice(
            device=name,
            attrs=attrs,
            driver_link=driver,
            device_path=self._device_path(base),
            netdevs=self._netdevs(base, name),
            ports=tuple(self._port_names(name)),
        )

    def read_device_ports(self, name: str) -> list[RawPort]:
        return [self._read_port(name, port) for port in self._port_names(name)]

    # ---- helpers ---------------------------------------------------------------------------

    def _port_names(self, device: str) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.class_dir / device / "ports")]
        except OSError:
            return []
        return sorted((n for n in names if n.isdigit()), key=int)

    def _device_path(self, base: Path) -> str:
        """The PCI device the RDMA device sits on, relative to the sysfs root."""
        link = base / "device"
        if not link.exists():
            return ""
        resolved = Path(os.path.realpath(link))
        try:
            return "/" + str(resolved.relative_to(os.path.realpath(self.root)))
        except ValueError:
            return str(resolved)

    def _netdevs(self, base: Path, name: str) -> tuple[str, ...]:
        with contextlib.suppress(OSError):
            names = sorted(e.name for e in os.scandir(base / "device" / "net"))
            if names:
                return tuple(names)
        # eRDMA and some RoCE functions have no net/ of their own: GID 0's netdev names the port.
        found = []
        for port in self._port_names(name):
            text = _read(base / "ports" / port / "gid_attrs" / "ndevs" / "0")
            if text and text.strip():
                found.append(text.strip())
        return tuple(dict.fromkeys(found))

    def _read_port(self, device: str, port: str) -> RawPort:
        base = self.class_dir / device / "ports" / port
        vanished: list[str] = []
        groups = {group: _read_dir(base, group, vanished) for group in COUNTER_DIRS}
        return RawPort(
            device=device,
            port=port,
            attrs=_read_files(base, PORT_FILES),
            counters=groups["counters"],
            counters_ext=groups["counters_ext"],
            hw_counters=groups["hw_counters"],
            vanished=tuple(vanished),
        )


def _open_read(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(MAX_FILE).decode("utf-8", "replace")


def _read(path: Path) -> str | None:
    try:
        return _open_read(path)
    except OSError:
        return None


def _read_files(base: Path, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        text = _read(base / name)
        if text is not None:
            out[name] = text
    return out


def _read_dir(base: Path, group: str, vanished: list[str]) -> dict[str, str]:
    """Every file of base/group; the names of listed files gone when opened go to `vanished`."""
    try:
        entries = sorted(e.name for e in os.scandir(base / group) if e.is_file())
    except OSError:
        return {}
    out = {}
    for name in entries:
        try:
            out[name] = _open_read(base / group / name)
        except FileNotFoundError:
            vanished.append(f"{group}/{name}")
        except OSError:
            continue  # EINVAL, EOPNOTSUPP: the driver does not implement it
    return out


class DeviceThreads:
    """Blocking reads of each device on a thread of its own, under a timeout.

    A read that does not return in time keeps its (daemon) thread; until it returns, that
    device is reported hung at once on every later call, and no second thread is started behind
    it, so a wedged device costs one thread, not one per poll.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._running: dict[str, Future[Any]] = {}

    async def run(self, device: str, fn: Callable[[str], T], limit_s: float) -> T | DeviceHung:
        running = self._running.get(device)
        if running is not None and not running.done():
            return DeviceHung(device, True)
        fut: Future[T] = Future()
        self._running[device] = fut
        threading.Thread(
            target=_call_into,
            args=(fut, fn, device),
            name=f"kvscope-{self._name}-{device}",
            daemon=True,
        ).start()
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), limit_s)
        except TimeoutError:
            return DeviceHung(device, False)


@dataclass(frozen=True)
class DeviceHung:
    """A device whose read did not return within the timeout (`still`: an earlier read of it
    is still running, so this poll did not start one)."""

    device: str
    still: bool


def _call_into(fut: Future[T], fn: Callable[[str], T], device: str) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(fn(device))
    except BaseException as exc:  # handed to the awaiting coroutine
        fut.set_exception(exc)
