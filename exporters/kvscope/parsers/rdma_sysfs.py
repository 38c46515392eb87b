"""Parsers for /sys/class/infiniband: port attributes, PMA counters and hw_counters.

The kernel's formats (drivers/infiniband/core/sysfs.c): `state` is "4: ACTIVE", `phys_state`
"5: LinkUp", `rate` "200 Gb/sec (4X HDR)" (SDR has no speed suffix: "10 Gb/sec (4X)"),
`link_layer` "InfiniBand" | "Ethernet". Counters are decimal integers; kernels before ~5.x print
"N/A (no PMA)" for PMA counters of devices without a management agent (iWARP NICs).

Traps handled here, not in the collector:
- `port_xmit_data` / `port_rcv_data` (and the pre-4.5 `*_data_64`) count 4-byte words.
- The legacy PMA table is 32 bits wide (error counters 4-16 bits) and saturates at its maximum
  instead of wrapping; a pinned counter is reported as saturated, not as "no traffic".
- `hw_counters/lifespan` is a cache knob in milliseconds, not a counter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

GBPS_TO_BYTES = 125_000_000  # 1 Gb/s in bytes/s

# PMA PortCounters widths in bits (kernel PORT_PMA_ATTR table). Data and packet counters are 32
# bits in the legacy table and 64 in the extended one; a 64-bit counter sitting exactly at
# 2^32-1 is too unlikely to matter, so 2^32-1 is read as saturation. port_xmit_wait is 32 bits in
# every table.
PMA_WIDTH_BITS: Mapping[str, int] = {
    "symbol_error": 16, "link_error_recovery": 8, "link_downed": 8, "port_rcv_errors": 16,
    "port_rcv_remote_physical_errors": 16, "port_rcv_switch_relay_errors": 16,
    "port_xmit_discards": 16, "port_xmit_constraint_errors": 8,
    "port_rcv_constraint_errors": 8, "local_link_integrity_errors": 4,
    "excessive_buffer_overrun_errors": 4, "VL15_dropped": 16, "port_xmit_data": 32,
    "port_rcv_data": 32, "port_xmit_packets": 32, "port_rcv_packets": 32,
    "port_xmit_wait": 32,
}

# (tx bytes, rx bytes, tx packets, rx packets) hw_counter names per driver; bytes are bytes.
ERDMA_UPSTREAM_TRAFFIC = ("tx_bytes_cnt", "rx_bytes_cnt", "tx_packets_cnt", "rx_packets_cnt")
ERDMA_OOT_TRAFFIC = ("hw_tx_bytes_cnt", "hw_rx_bytes_cnt", "hw_tx_packets_cnt",
                     "hw_rx_packets_cnt")

_STATE = re.compile(r"^\s*(\d+)\s*:\s*(.*?)\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*Gb/sec\s*(?:\((\d+)X\s*([A-Za-z0-9]*)\))?")
_UINT = re.compile(r"^\s*(\d+)\s*$")
NO_PMA = "N/A"


@dataclass(frozen=True)
class ParseError:
    """A value that could not be parsed; the collector counts these."""

    what: str  # file or field
    text: str  # the offending text, truncated

    @classmethod
    def of(cls, what: str, text: str) -> ParseError:
        return cls(what, text.strip()[:80])


@dataclass(frozen=True)
class State:
    value: int
    name: str


@dataclass(frozen=True)
class Rate:
    bytes_per_second: float
    width: str  # "4X"; "" when the kernel printed no width
    speed: str  # "HDR"; "" for SDR, which the kernel prints without a suffix


@dataclass(frozen=True)
class Traffic:
    """Normalized port traffic in bytes and packets, and where it was read from."""

    tx_bytes: int | None = None
    rx_bytes: int | None = None
    tx_packets: int | None = None
    rx_packets: int | None = None
    source: str = ""  # "pma", "pma_ext", "erdma", "erdma_oot"


@dataclass(frozen=True)
class Port:
    device: str
    port: str
    state: State | None = None
    phys_state: State | None = None
    rate: Rate | None = None
    link_layer: str | None = None
    counters: Mapping[str, int] = field(default_factory=dict)  # PMA counters/, raw values
    counters_ext: Mapping[str, int] = field(default_factory=dict)  # pre-4.5 counters_ext/
    hw_counters: Mapping[str, int] = field(default_factory=dict)  # lifespan excluded
    lifespan_ms: int | None = None
    no_pma: bool = False  # counters/ present but every value "N/A (no PMA)"
    saturated: tuple[str, ...] = ()  # PMA counters pinned at their maximum
    traffic: Traffic = Traffic()
    errors: tuple[ParseError, ...] = ()


def parse_state(text: str) -> State | ParseError:
    m = _STATE.match(text)
    if m is None:
        return ParseError.of("state", text)
    return State(int(m.group(1)), m.group(2))


def parse_rate(text: str) -> Rate | ParseError:
    m = _RATE.match(text)
    if m is None:
        return ParseError.of("rate", text)
    width = f"{m.group(2)}X" if m.group(2) else ""
    return Rate(float(m.group(1)) * GBPS_TO_BYTES, width, m.group(3) or "")


def parse_counter(name: str, text: str) -> int | ParseError | None:
    """An unsigned counter; None for "N/A (no PMA)", which means "not available", not zero."""
    m = _UINT.match(text)
    if m is not None:
        return int(m.group(1))
    if text.strip().startswith(NO_PMA):
        return None
    return ParseError.of(name, text)


def is_saturated(name: str, value: int) -> bool:
    width = PMA_WIDTH_BITS.get(name)
    return width is not None and value == (1 << width) - 1


def _counters(files: Mapping[str, str], errors: list[ParseError],
              prefix: str) -> tuple[dict[str, int], bool]:
    values: dict[str, int] = {}
    unavailable = 0
    for name, text in sorted(files.items()):
        parsed = parse_counter(f"{prefix}/{name}", text)
        if isinstance(parsed, ParseError):
            errors.append(parsed)
        elif parsed is None:
            unavailable += 1
        else:
            values[name] = parsed
    return values, bool(files) and unavailable == len(files)


def normalize_traffic(counters: Mapping[str, int], counters_ext: Mapping[str, int],
                      hw: Mapping[str, int]) -> Traffic:
    """Bytes and packets from whichever source the driver has, in order of trust."""
    if "port_xmit_data_64" in counters_ext:
        return Traffic(_words(counters_ext.get("port_xmit_data_64")),
                       _words(counters_ext.get("port_rcv_data_64")),
                       counters_ext.get("port_xmit_packets_64"),
                       counters_ext.get("port_rcv_packets_64"), "pma_ext")
    if "port_xmit_data" in counters or "port_rcv_data" in counters:
        return Traffic(_words(counters.get("port_xmit_data")),
                       _words(counters.get("port_rcv_data")),
                       counters.get("port_xmit_packets"), counters.get("port_rcv_packets"), "pma")
    for names, source in ((ERDMA_OOT_TRAFFIC, "erdma_oot"), (ERDMA_UPSTREAM_TRAFFIC, "erdma")):
        if any(n in hw for n in names):
            tx_b, rx_b, tx_p, rx_p = (hw.get(n) for n in names)
            return Traffic(tx_b, rx_b, tx_p, rx_p, source)
    return Traffic()


def _words(value: int | None) -> int | None:
    # The IB PMA counts data in 4-byte words ("octets divided by 4"), whatever the link width.
    return None if value is None else value * 4


@dataclass(frozen=True)
class RawPort:
    """The text of one port's files as the source read them (file name -> content)."""

    device: str
    port: str
    attrs: Mapping[str, str] = field(default_factory=dict)  # state, phys_state, rate, link_layer
    counters: Mapping[str, str] = field(default_factory=dict)
    counters_ext: Mapping[str, str] = field(default_factory=dict)
    hw_counters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RawDevice:
    """The text of one device's files plus its resolved `device` and `driver` links."""

    device: str
    attrs: Mapping[str, str] = field(default_factory=dict)  # fw_ver, ..., numa_node
    driver_link: str = ""  # target of device/driver
    device_path: str = ""  # resolved `device` link, relative to the sysfs root
    netdevs: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()


def parse_port(raw: RawPort) -> Port:
    """One port from the raw text of its files."""
    device, port, attrs = raw.device, raw.port, raw.attrs
    counters, counters_ext, hw_counters = raw.counters, raw.counters_ext, raw.hw_counters
    errors: list[ParseError] = []
    state = _state(attrs.get("state"), errors)
    phys = _state(attrs.get("phys_state"), errors)
    rate: Rate | None = None
    if "rate" in attrs:
        parsed_rate = parse_rate(attrs["rate"])
        if isinstance(parsed_rate, ParseError):
            errors.append(parsed_rate)
        else:
            rate = parsed_rate
    link_layer = attrs["link_layer"].strip() if "link_layer" in attrs else None
    pma, no_pma = _counters(counters, errors, "counters")
    ext, _ = _counters(counters_ext, errors, "counters_ext")
    hw_files = {k: v for k, v in hw_counters.items() if k != "lifespan"}
    hw, _ = _counters(hw_files, errors, "hw_counters")
    lifespan = parse_counter("hw_counters/lifespan", hw_counters.get("lifespan", ""))
    saturated = tuple(n for n, v in pma.items() if is_saturated(n, v))
    return Port(device=device, port=port, state=state, phys_state=phys, rate=rate,
                link_layer=link_layer, counters=pma, counters_ext=ext, hw_counters=hw,
                lifespan_ms=lifespan if isinstance(lifespan, int) else None, no_pma=no_pma,
                saturated=saturated, traffic=normalize_traffic(pma, ext, hw),
                errors=tuple(errors))


def _state(text: str | None, errors: list[ParseError]) -> State | None:
    if text is None:
        return None
    parsed = parse_state(text)
    if isinstance(parsed, ParseError):
        errors.append(parsed)
        return None
    return parsed


@dataclass(frozen=True)
class Identity:
    """Device attributes from sysfs: the `_info` labels and the GPU-NIC affinity facts."""

    device: str
    driver: str = ""
    firmware_version: str = ""
    hca_type: str = ""
    board_id: str = ""
    node_guid: str = ""
    node_type: str = ""
    netdevs: tuple[str, ...] = ()
    numa_node: int | None = None
    pci_bus_id: str = ""
    pci_path: str = ""  # /devices/pci0000:16/0000:16:02.0/0000:18:00.0 (sysfs-relative)
    ports: tuple[str, ...] = ()

    @property
    def is_erdma(self) -> bool:
        return self.driver == "erdma" or self.device.startswith("erdma")


_PCI_ADDR = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


def parse_identity(raw: RawDevice) -> Identity:
    """Identity from the raw device files and the resolved `device` and `driver` links."""
    attrs, driver_link, device_path = raw.attrs, raw.driver_link, raw.device_path
    numa = _UINT.match(attrs.get("numa_node", ""))  # -1 (no NUMA) does not match: absent
    parts = [p for p in device_path.split("/") if p]
    pci = [p for p in parts if _PCI_ADDR.match(p)]
    return Identity(
        device=raw.device,
        driver=driver_link.rstrip("/").rsplit("/", 1)[-1] if driver_link else "",
        firmware_version=attrs.get("fw_ver", "").strip(),
        hca_type=attrs.get("hca_type", "").strip(),
        board_id=attrs.get("board_id", "").strip(),
        node_guid=attrs.get("node_guid", "").strip(),
        node_type=attrs.get("node_type", "").strip(),
        netdevs=raw.netdevs,
        numa_node=int(numa.group(1)) if numa else None,
        pci_bus_id=pci[-1].lower() if pci else "",
        pci_path="/" + "/".join(parts) if parts else "",
        ports=raw.ports,
    )
