"""Reader for /sys/class/infiniband under a configurable sysfs root (`--path.sysfs`).

Only I/O happens here; kvscope.parsers.rdma_sysfs turns the text into records. Every function
blocks (each PMA counter read is a MAD to the NIC), so the RDMA collector calls them through the
runtime's thread pool. A file that cannot be read (EINVAL, EPERM, EOPNOTSUPP from drivers that
do not implement it) is left out, as node_exporter does, never read as zero.

The device filter (`collectors.rdma.devices`) applies to the names in class/infiniband before
anything under a device is opened: reading the PMA counters of Fabric-Manager-managed ConnectX-7
PFs floods dmesg, so an excluded device must cost nothing but a directory entry.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from kvscope.parsers.rdma_sysfs import RawDevice, RawPort

DEVICE_FILES = ("fw_ver", "hca_type", "board_id", "node_guid", "node_type", "node_desc")
PORT_FILES = ("state", "phys_state", "rate", "link_layer")
MAX_FILE = 4096  # sysfs attributes are at most a page


class SysfsRdma:
    def __init__(self, sysfs_root: Path,
                 wanted: Callable[[str], bool] = lambda _name: True) -> None:
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

    def read_devices(self) -> list[RawDevice]:
        return [self._read_device(name) for name in self.device_names()]

    def read_erdma_compat_mode(self) -> str | None:
        """Alibaba's erdma module parameter compat_mode (a bool module_param, mode 0444: "Y" or
        "N"); None when the module is not loaded or has no such parameter (upstream erdma)."""
        return _read(self.root / "module" / "erdma" / "parameters" / "compat_mode")

    def read_ports(self) -> list[RawPort]:
        ports = []
        for name in self.device_names():
            for port in self._port_names(name):
                ports.append(self._read_port(name, port))
        return ports

    # ---- helpers ---------------------------------------------------------------------------

    def _port_names(self, device: str) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.class_dir / device / "ports")]
        except OSError:
            return []
        return sorted((n for n in names if n.isdigit()), key=int)

    def _read_device(self, name: str) -> RawDevice:
        base = self.class_dir / name
        attrs = _read_files(base, DEVICE_FILES)
        attrs.update(_read_files(base / "device", ("numa_node",)))
        driver = ""
        with contextlib.suppress(OSError):
            driver = str((base / "device" / "driver").readlink())
        return RawDevice(device=name, attrs=attrs, driver_link=driver,
                         device_path=self._device_path(base), netdevs=self._netdevs(base, name),
                         ports=tuple(self._port_names(name)))

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
        return RawPort(device=device, port=port, attrs=_read_files(base, PORT_FILES),
                       counters=_read_dir(base / "counters"),
                       counters_ext=_read_dir(base / "counters_ext"),
                       hw_counters=_read_dir(base / "hw_counters"))


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE).decode("utf-8", "replace")
    except OSError:
        return None


def _read_files(base: Path, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        text = _read(base / name)
        if text is not None:
            out[name] = text
    return out


def _read_dir(path: Path) -> dict[str, str]:
    try:
        entries = [e.name for e in os.scandir(path) if e.is_file()]
    except OSError:
        return {}
    return _read_files(path, tuple(sorted(entries)))
