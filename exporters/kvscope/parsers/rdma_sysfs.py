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
- Pre-4.5 kernels (mlx4) have both `counters/` and `counters_ext/`, and either may hold zeros for
  a value the other counts; each traffic value is taken from wherever it is valid (see
  `normalize_traffic`).
- Some `hw_counters` are current levels, not counts (bnxt_re `active_qps`, `watermark_mrs`):
  `HW_GAUGES` lists them per driver so they are exported as gauges.
- irdma, bnxt_re and EFA have no PMA counters; their traffic lives in `hw_counters` under
  driver-specific names (`HW_TRAFFIC`).
- A port with no link (an empty SFP+ cage) reports `0 GB/sec` with no width or speed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kvscope.parsers.numbers import parse_u64

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



@dataclass(frozen=True)
class HwTraffic:
    """Where one driver keeps port traffic in `hw_counters/`: each value is the sum of the named
    files that exist (irdma splits IPv4 and IPv6). All of these count bytes, not 4-byte words."""

    source: str  # driver(s), also `Traffic.source`
    tx_bytes: tuple[str, ...]
    rx_bytes: tuple[str, ...]
    tx_packets: tuple[str, ...]
    rx_packets: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return self.tx_bytes + self.rx_bytes + self.tx_packets + self.rx_packets


# The one table of hw_counters traffic per driver, tried in order when a port has no PMA data
# counters; a row applies when any of its files exists. Names are the kernel's sysfs names
# (rdma_stat_desc tables of drivers/infiniband/hw/{erdma,irdma,bnxt_re,efa}). The README's RDMA
# section repeats this table; tests/unit/docs/test_rdma_readme.py keeps the two in step.
HW_TRAFFIC: tuple[HwTraffic, ...] = (
    HwTraffic("erdma_oot", ("hw_tx_bytes_cnt",), ("hw_rx_bytes_cnt",), ("hw_tx_packets_cnt",),
              ("hw_rx_packets_cnt",)),
    HwTraffic("erdma", ("tx_bytes_cnt",), ("rx_bytes_cnt",), ("tx_packets_cnt",),
              ("rx_packets_cnt",)),
    HwTraffic("irdma", ("ip4OutOctets", "ip6OutOctets"), ("ip4InOctets", "ip6InOctets"),
              ("ip4OutPkts", "ip6OutPkts"), ("ip4InPkts", "ip6InPkts")),
    # bnxt_re (RoCE function's unicast stats) and AWS EFA use the same four names.
    HwTraffic("bnxt_re,efa", ("tx_bytes",), ("rx_bytes",), ("tx_pkts",), ("rx_pkts",)),
)

# hw_counters that hold a current level (resources in use, high-water marks, a register
# snapshot), not a count since driver load: exported as gauges. By driver, kernel sysfs names.
HW_GAUGES_BY_DRIVER: Mapping[str, frozenset[str]] = {
    "bnxt_re": frozenset(
        [f"active_{r}" for r in ("pds", "ahs", "qps", "rc_qps", "ud_qps", "srqs", "cqs", "mrs",
                                 "mws")]
        + [f"watermark_{r}" for r in ("pds", "ahs", "qps", "rc_qps", "ud_qps", "srqs", "cqs",
                                      "mrs", "mws")]
        + ["db_fifo_register"]),
}
HW_GAUGES: frozenset[str] = frozenset().union(*HW_GAUGES_BY_DRIVER.values())

_STATE = re.compile(r"^\s*(\d{1,3})\s*:\s*(.*?)\s*$")  # IB states are small enums
# "Gb/sec" from the kernel's rate_show; "GB/sec" (with no width) from ports without a link.
_RATE = re.compile(r"^\s*(\d{1,7}(?:\.\d{1,9})?)\s*Gb/sec\s*(?:\((\d{1,2})X\s*([A-Za-z0-9]*)\))?",
                   re.IGNORECASE)
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
    source: str = ""  # where the values came from, comma-joined: "pma_ext,pma", "irdma", ...


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
    hw_counters: Mapping[str, int] = field(default_factory=dict)  # counts; lifespan excluded
    hw_gauges: Mapping[str, int] = field(default_factory=dict)  # levels (HW_GAUGES)
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
    """An unsigned counter; None for "N/A (no PMA)", which means "not available", not zero.
    A number wider than 64 bits is a ParseError like any other bad text."""
    value = parse_u64(text)
    if value is not None:
        return value
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
    """Bytes and packets, each value from wherever the port has it valid.

    PMA first: `counters_ext/*_64` (pre-4.5 kernels) and `counters/` count the same PMA events
    since the same reset, but either can be wrong on its own: an extended counter the HCA does
    not implement reads 0 (mlx4: `port_rcv_packets_64` 0 while `port_rcv_packets` holds 6.8e9),
    and a legacy 32-bit one pins at 2^32-1. The larger of the two is the valid one, and the
    maximum of two counters that never decrease never decreases either, so rates stay right.
    A value no PMA file holds comes from the driver's hw_counters (HW_TRAFFIC).
    """
    pma = (
        _larger(("pma_ext", _words(counters_ext.get("port_xmit_data_64"))),
                ("pma", _words(counters.get("port_xmit_data")))),
        _larger(("pma_ext", _words(counters_ext.get("port_rcv_data_64"))),
                ("pma", _words(counters.get("port_rcv_data")))),
        _larger(("pma_ext", counters_ext.get("port_xmit_packets_64")),
                ("pma", counters.get("port_xmit_packets"))),
        _larger(("pma_ext", counters_ext.get("port_rcv_packets_64")),
                ("pma", counters.get("port_rcv_packets"))),
    )
    row = next((r for r in HW_TRAFFIC if any(n in hw for n in r.names)), None)
    hw_values = ((None, None, None, None) if row is None else
                 tuple(_sum(hw, names) for names in
                       (row.tx_bytes, row.rx_bytes, row.tx_packets, row.rx_packets)))
    picked: list[tuple[str, int] | None] = []
    for from_pma, from_hw in zip(pma, hw_values, strict=True):
        if from_pma is not None:
            picked.append(from_pma)
        elif from_hw is not None and row is not None:
            picked.append((row.source, from_hw))
        else:
            picked.append(None)
    sources = dict.fromkeys(p[0] for p in picked if p is not None)
    tx_b, rx_b, tx_p, rx_p = (None if p is None else p[1] for p in picked)
    return Traffic(tx_b, rx_b, tx_p, rx_p, ",".join(sources))


def _larger(*candidates: tuple[str, int | None]) -> tuple[str, int] | None:
    """The largest present value and where it came from; the first wins a tie."""
    best: tuple[str, int] | None = None
    for source, value in candidates:
        if value is not None and (best is None or value > best[1]):
            best = (source, value)
    return best


def _sum(values: Mapping[str, int], names: tuple[str, ...]) -> int | None:
    present = [values[n] for n in names if n in values]
    return sum(present) if present else None


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
    # "<dir>/<file>" of counter files listed in their directory but gone when opened
    vanished: tuple[str, ...] = ()


COUNTER_DIRS = ("counters", "counters_ext", "hw_counters")


def carry_vanished(raw: RawPort, previous: RawPort | None) -> RawPort:
    """`raw` with each vanished counter file's text from the previous read, so a file that
    disappears for one read (a driver re-creating its sysfs group, a read racing a reset) does
    not make its series drop out and come back. Only text that was read is carried: `previous`
    is the earlier read as it came from sysfs, so a file gone twice in a row is dropped, and a
    file no longer listed at all is not carried."""
    if not raw.vanished or previous is None:
        return raw
    groups = {name: dict(getattr(raw, name)) for name in COUNTER_DIRS}
    for path in raw.vanished:
        group, _, name = path.partition("/")
        earlier: Mapping[str, str] = getattr(previous, group, {})
        if group in groups and name in earlier:
            groups[group][name] = earlier[name]
    return replace(raw, counters=groups["counters"], counters_ext=groups["counters_ext"],
                   hw_counters=groups["hw_counters"])


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
    hw_all, _ = _counters(hw_files, errors, "hw_counters")
    hw = {k: v for k, v in hw_all.items() if k not in HW_GAUGES}
    levels = {k: v for k, v in hw_all.items() if k in HW_GAUGES}
    lifespan = parse_counter("hw_counters/lifespan", hw_counters.get("lifespan", ""))
    saturated = tuple(n for n, v in pma.items() if is_saturated(n, v))
    return Port(device=device, port=port, state=state, phys_state=phys, rate=rate,
                link_layer=link_layer, counters=pma, counters_ext=ext, hw_counters=hw,
                hw_gauges=levels,
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
    numa = parse_u64(attrs.get("numa_node", ""))  # -1 (no NUMA) is not a u64: absent
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
        numa_node=numa,
        pci_bus_id=pci[-1].lower() if pci else "",
        pci_path="/" + "/".join(parts) if parts else "",
        ports=raw.ports,
    )


def parse_module_bool(text: str | None) -> float | None:
    """A kernel bool module parameter as sysfs prints it ("Y"/"N"; "1"/"0" on old kernels):
    1.0 or 0.0, None when absent or unreadable (then the series stays absent, never 0)."""
    value = (text or "").strip().upper()
    if value in ("Y", "1"):
        return 1.0
    if value in ("N", "0"):
        return 0.0
    return None
