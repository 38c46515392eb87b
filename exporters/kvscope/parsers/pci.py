"""PCI bus ids as NVML and sysfs spell them: one parser, two spellings.

NVML writes `00000000:18:00.0` (8-digit domain, upper case, sometimes NUL-padded); sysfs writes
`0000:18:00.0` (4-digit domain, lower case). Pure: text in, text out, never raises.
"""

from __future__ import annotations


def _split(bus_id: str) -> tuple[int, str] | None:
    """(domain, "bus:device.function") of a bus id, or None when it is not one."""
    text = bus_id.strip().rstrip("\x00").strip()
    domain, sep, rest = text.partition(":")
    if not sep or rest.count(":") != 1:
        return None
    try:
        return int(domain, 16), rest
    except ValueError:
        return None


def normalise_bus_id(bus_id: str) -> str:
    """NVML's `00000000:18:00.0` and sysfs's `0000:18:00.0` -> `00000000:18:00.0` (upper).
    Text that is no bus id comes back stripped and upper-cased."""
    parts = _split(bus_id)
    if parts is None:
        return bus_id.strip().rstrip("\x00").upper()
    return f"{parts[0]:08X}:{parts[1].upper()}"


def sysfs_bus_id(bus_id: str) -> str:
    """NVML's `00000000:2A:00.0` -> sysfs's `0000:2a:00.0` (a sysfs id comes back as is)."""
    parts = _split(bus_id)
    if parts is None:
        return bus_id.strip().lower()
    return f"{parts[0]:04x}:{parts[1].lower()}"
