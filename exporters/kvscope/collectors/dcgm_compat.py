"""The one table of dcgm-exporter compatibility: which DCGM name, Prometheus type and unit each
GPU reading is exported under, per dcgm-exporter generation, plus the hostname label key and the
driver-version label of each generation.

Generations (`dcgm.compat`, flag `--dcgm.compat`):

- ``4.8``   dcgm-exporter 4.8.0-4.8.2: the 4.8 names, label key ``Hostname``. The default, because
            it is what kvscope has always served and what most dashboards query today.
- ``4.8.3`` dcgm-exporter 4.8.3-4.8.4: the same names and units, label key ``hostname`` (4.8.3
            release notes, #655), ``DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`` typed gauge.
- ``4.9``   dcgm-exporter 4.9.0 (DCGM 4.7): the DCGM 4.7 names, base units (Hz, J, 0-1 ratio,
            bytes, bytes/s), label ``DCGM_FI_SYSTEM_DRIVER_VERSION``, and
            ``DCGM_FI_DEV_FB_CAPACITY_BYTES``.
- ``4.10``  dcgm-exporter 4.10.0: as 4.9, with ``DCGM_FI_PROF_PCIE_TX/RX_BYTES_PER_SECOND``.

A separate hostname setting was considered and folded in here: the key is a fact of the release,
so one setting selects all of it; ``hostname_label`` still overrides the key when set.

Every name carries how sure we are of it (`status`):

- ``csv``         in NVIDIA's shipped default-counters.csv of that release (4.8.3 and 4.8.4 read
                  byte for byte; 4.8.0-4.8.2 from an earlier stored version with the same rows);
- ``confirmed``   named by the 4.9.0 or 4.10.0 release notes;
- ``derived``     the DCGM 4.7 field header marks the 4.8 name deprecated in favour of this one,
                  and 4.9.0 says it renamed the deprecated fields: derived from DCGM 4.7's
                  deprecation aliases, unconfirmed against the shipped CSV;
- ``unconfirmed`` only a secondary source (a third-party copy of NVIDIA's field reference) names
                  it; the shipped 4.9.0 CSV was not available;
- ``kept``        a field kvscope exports beyond the default CSV whose name DCGM 4.7 did not
                  deprecate, so it is kept.

Only DCGM_* families change with the generation. kvscope_* families keep their names, units and
label keys (``Hostname``, ``DCGM_FI_DRIVER_VERSION``) under every generation, so kvscope's own
rules and dashboards work whatever a fleet chose. The facts and their sources are recorded in
tests/fixtures/dcgm/ (default-counters-*.csv), which
tests/unit/collectors/test_dcgm_generations.py checks this table against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Compat = Literal["4.8", "4.8.3", "4.9", "4.10"]
GENERATIONS: tuple[Compat, ...] = ("4.8", "4.8.3", "4.9", "4.10")
DEFAULT_COMPAT: Compat = "4.8"

MIB = 1024 * 1024


@dataclass(frozen=True)
class Generation:
    """Per-release label facts."""

    compat: Compat
    hostname_key: str
    driver_version_label: str
    release: str


GENERATION_FACTS: Mapping[Compat, Generation] = {
    "4.8": Generation("4.8", "Hostname", "DCGM_FI_DRIVER_VERSION", "dcgm-exporter 4.8.0-4.8.2"),
    "4.8.3": Generation("4.8.3", "hostname", "DCGM_FI_DRIVER_VERSION",
                        "dcgm-exporter 4.8.3-4.8.4"),
    "4.9": Generation("4.9", "hostname", "DCGM_FI_SYSTEM_DRIVER_VERSION", "dcgm-exporter 4.9.0"),
    "4.10": Generation("4.10", "hostname", "DCGM_FI_SYSTEM_DRIVER_VERSION",
                       "dcgm-exporter 4.10.0"),
}
# kvscope_* families carry these label keys under every generation.
KVSCOPE_HOSTNAME_KEY = "Hostname"
KVSCOPE_DRIVER_LABEL = "DCGM_FI_DRIVER_VERSION"


def _floor_mib(v: float) -> float:
    return float(int(v) // MIB)  # DCGM reports whole MiB, floored


# (unit kvscope reads, unit a generation exports) -> conversion. Readings arrive as NVML gives
# them; every pair a field uses must be here, or building the table fails at import.
CONVERSIONS: Mapping[tuple[str, str], Callable[[float], float]] = {
    ("MHz", "MHz"): float,
    ("MHz", "Hz"): lambda v: v * 1e6,
    ("C", "C"): float,
    ("mW", "W"): lambda v: v / 1000.0,
    ("%", "%"): float,
    ("%", "ratio"): lambda v: v / 100.0,
    ("bytes", "MiB"): _floor_mib,
    ("bytes", "bytes"): float,
    ("mJ", "mJ"): float,
    ("mJ", "J"): lambda v: v / 1000.0,
    ("MiB/s", "bytes/s"): lambda v: v * MIB,
    # NVLink: kvscope reads KiB/s (TX+RX KiB change over a poll); DCGM <= 4.8 divides by 1000
    # and truncates (ReadAndCacheNvLinkBandwidth), 4.9's byte field is KiB * 1024.
    ("KiB/s", "MB/s"): lambda v: float(math.trunc(v / 1000)),
    ("KiB/s", "bytes/s"): lambda v: float(math.trunc(v * 1024)),
    ("count", "count"): float,
    ("0/1", "0/1"): float,
    ("bitmask", "bitmask"): float,
    ("xid", "xid"): float,
    ("gen", "gen"): float,
    ("lanes", "lanes"): float,
}

# How the unit reads inside a HELP text.
UNIT_TEXT: Mapping[str, str] = {"ratio": "0-1"}


@dataclass(frozen=True)
class Naming:
    """How one generation exports a field."""

    name: str
    kind: Literal["gauge", "counter"]
    unit: str
    status: Literal["csv", "confirmed", "derived", "unconfirmed", "kept"]
    default: bool  # an active row of that release's default-counters.csv


@dataclass(frozen=True)
class DcgmField:
    key: str  # the reading key of kvscope's NVML source
    dcgm_id: int
    raw_unit: str  # the unit the reading arrives in
    help: str  # may hold "{unit}"
    generations: Mapping[Compat, Naming]

    def naming(self, compat: Compat) -> Naming:
        return self.generations[compat]

    def convert(self, compat: Compat, value: float) -> float:
        return CONVERSIONS[(self.raw_unit, self.generations[compat].unit)](value)

    def help_for(self, compat: Compat) -> str:
        unit = self.generations[compat].unit
        return self.help.format(unit=UNIT_TEXT.get(unit, unit))


Kind = Literal["gauge", "counter"]
Status = Literal["csv", "confirmed", "derived", "unconfirmed", "kept"]


def _field(key: str, dcgm_id: int, raw_unit: str, help_text: str, *,
           old: tuple[str, Kind, str, bool], new: tuple[str, str, Status, bool] | None = None,
           new_410: tuple[str, Status] | None = None,
           kind_48: Kind | None = None) -> DcgmField:
    """A field from its 4.8 naming (name, kind, unit, default row) and, where DCGM 4.7 renamed
    it, its 4.9 naming (name, unit, status, default row); `new_410` renames it again in 4.10;
    `kind_48` is the type dcgm-exporter <= 4.8.2 gave it where 4.8.3 changed it."""
    name, kind, unit, default = old
    status_48: Status = "csv" if default else "kept"
    first = Naming(name, kind_48 or kind, unit, status_48, default)
    second = Naming(name, kind, unit, status_48, default)
    if new is None:
        later = Naming(name, kind, unit, "csv" if default else "kept", default)
    else:
        later = Naming(new[0], kind, new[1], new[2], new[3])
    latest = later if new_410 is None else Naming(new_410[0], kind, later.unit, new_410[1],
                                                    later.default)
    gens: dict[Compat, Naming] = {"4.8": first, "4.8.3": second, "4.9": later, "4.10": latest}
    for naming in gens.values():
        if (raw_unit, naming.unit) not in CONVERSIONS:
            raise ValueError(f"{key}: no conversion {raw_unit} -> {naming.unit}")
    return DcgmField(key, dcgm_id, raw_unit, help_text, gens)


# dcgm-exporter's default rows first (in default-counters.csv order), then the DCGM fields
# kvscope exports beyond them. Field ids: DCGM's dcgm_fields.h.
FIELDS: tuple[DcgmField, ...] = (
    _field("sm_clock", 100, "MHz", "SM clock frequency (in {unit}). NVML ClockInfo.",
           old=("DCGM_FI_DEV_SM_CLOCK", "gauge", "MHz", True),
           new=("DCGM_FI_DEV_SM_CLOCK_HERTZ", "Hz", "derived", True)),
    _field("mem_clock", 101, "MHz", "Memory clock frequency (in {unit}). NVML ClockInfo.",
           old=("DCGM_FI_DEV_MEM_CLOCK", "gauge", "MHz", True),
           new=("DCGM_FI_DEV_MEMORY_CLOCK_HERTZ", "Hz", "derived", True)),
    _field("memory_temp", 140, "C", "Memory temperature (in {unit}). NVML field 82.",
           old=("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "C", True),
           new=("DCGM_FI_DEV_MEMORY_TEMP_CELSIUS", "C", "derived", True)),
    _field("gpu_temp", 150, "C", "GPU temperature (in {unit}). NVML TemperatureV.",
           old=("DCGM_FI_DEV_GPU_TEMP", "gauge", "C", True),
           new=("DCGM_FI_DEV_GPU_TEMP_CELSIUS", "C", "derived", True)),
    _field("power_mw", 155, "mW", "Power draw (in {unit}). NVML PowerUsage.",
           old=("DCGM_FI_DEV_POWER_USAGE", "gauge", "W", True),
           new=("DCGM_FI_DEV_BOARD_POWER_WATTS", "W", "derived", True)),
    _field("energy_mj", 156, "mJ",
           "Total energy consumption since the driver was last loaded (in {unit}). NVML "
           "TotalEnergyConsumption, read on the slow tier (3-15 ms per GPU).",
           old=("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "mJ", True),
           new=("DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL", "J", "derived", True)),
    _field("pcie_replay", 202, "count", "Total number of PCIe retries.",
           old=("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "count", True),
           new=("DCGM_FI_DEV_PCIE_REPLAY_TOTAL", "count", "derived", True)),
    _field("gpu_util", 203, "%",
           "GPU utilization (in {unit}): share of time a kernel was resident, not how busy the "
           "SMs are. NVML UtilizationRates.",
           old=("DCGM_FI_DEV_GPU_UTIL", "gauge", "%", True),
           new=("DCGM_FI_DEV_GPU_UTIL_RATIO", "ratio", "derived", True)),
    _field("mem_copy_util", 204, "%", "Memory utilization (in {unit}). NVML UtilizationRates.",
           old=("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "%", True),
           new=("DCGM_FI_DEV_MEMORY_UTIL_RATIO", "ratio", "unconfirmed", True)),
    _field("enc_util", 206, "%", "Encoder utilization (in {unit}).",
           old=("DCGM_FI_DEV_ENC_UTIL", "gauge", "%", True),
           new=("DCGM_FI_DEV_ENC_UTIL_RATIO", "ratio", "unconfirmed", True)),
    _field("dec_util", 207, "%", "Decoder utilization (in {unit}).",
           old=("DCGM_FI_DEV_DEC_UTIL", "gauge", "%", True),
           new=("DCGM_FI_DEV_DEC_UTIL_RATIO", "ratio", "unconfirmed", True)),
    _field("xid", 230, "xid",
           "Value of the last XID error encountered (0: none since the agent started). "
           "Never resets: use kvscope_gpu_xid_errors_total for rates and alerts.",
           old=("DCGM_FI_DEV_XID_ERRORS", "gauge", "xid", True),
           new=("DCGM_FI_DEV_XID_ERROR", "xid", "derived", True)),
    _field("fb_free", 251, "bytes", "Framebuffer memory free (in {unit}). NVML MemoryInfo v2.",
           old=("DCGM_FI_DEV_FB_FREE", "gauge", "MiB", True),
           new=("DCGM_FI_DEV_FB_FREE_BYTES", "bytes", "unconfirmed", True)),
    _field("fb_used", 252, "bytes", "Framebuffer memory used (in {unit}). NVML MemoryInfo v2.",
           old=("DCGM_FI_DEV_FB_USED", "gauge", "MiB", True),
           new=("DCGM_FI_DEV_FB_USED_BYTES", "bytes", "unconfirmed", True)),
    _field("fb_reserved", 253, "bytes",
           "Framebuffer memory reserved by the driver (in {unit}). NVML MemoryInfo v2.",
           old=("DCGM_FI_DEV_FB_RESERVED", "gauge", "MiB", True),
           new=("DCGM_FI_DEV_FB_RESERVED_BYTES", "bytes", "unconfirmed", True)),
    _field("nvlink_bandwidth", 449, "KiB/s",
           "Total NVLink bandwidth of all links (in {unit}; dcgm-exporter's formula: change of "
           "TX+RX KiB between two polls / seconds; 0 on the first).",
           old=("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "gauge", "MB/s", True),
           new=("DCGM_FI_DEV_NVLINK_THROUGHPUT_BYTES_PER_SECOND", "bytes/s", "unconfirmed",
                True),
           kind_48="counter"),
    _field("vgpu_license", 526, "0/1",
           "vGPU license status (1 licensed, 0 not; vGPU guests only). NVML "
           "GridLicensableFeatures.",
           old=("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "0/1", True)),
    _field("remapped_uncorrectable", 393, "count",
           "Number of remapped rows for uncorrectable errors.",
           old=("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "count", True),
           new=("DCGM_FI_DEV_ROW_REMAP_UNCORRECTABLE_TOTAL", "count", "derived", True)),
    _field("remapped_correctable", 394, "count", "Number of remapped rows for correctable errors.",
           old=("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "count", True),
           new=("DCGM_FI_DEV_ROW_REMAP_CORRECTABLE_TOTAL", "count", "derived", True)),
    _field("remap_failure", 395, "0/1",
           "Whether remapping of rows has failed (1: the GPU needs service).",
           old=("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "0/1", True),
           new=("DCGM_FI_DEV_ROW_REMAP_FAILED", "0/1", "derived", True)),
    _field("gpm_graphics_util", 1001, "%",
           "Ratio of time the graphics engine was active (0-1). NVML GPM GRAPHICS_UTIL.",
           old=("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "ratio", True),
           new=("DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", "ratio", "derived", True)),
    _field("gpm_any_tensor_util", 1004, "%",
           "Ratio of cycles a tensor pipe was active (0-1). NVML GPM ANY_TENSOR_UTIL.",
           old=("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "ratio", True),
           new=("DCGM_FI_PROF_TENSOR_UTIL_RATIO", "ratio", "derived", True)),
    _field("gpm_dram_bw_util", 1005, "%",
           "Ratio of cycles the memory interface was busy (0-1). NVML GPM DRAM_BW_UTIL.",
           old=("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "ratio", True),
           new=("DCGM_FI_PROF_DRAM_UTIL_RATIO", "ratio", "derived", True)),
    # Default gauge rows of the 4.8.x profiling section (bytes per second; the commented "via
    # NVML" counter rows of the same name in 4.8.3 are gone from 4.8.4); kept in 4.9.0 (4.10.0
    # renames them "from" these names) and renamed in 4.10.0.
    _field("gpm_pcie_tx_mibps", 1009, "MiB/s",
           "PCIe transmit rate (bytes/s) averaged over one fast poll. NVML GPM PCIE_TX_PER_SEC.",
           old=("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "bytes/s", True),
           new=("DCGM_FI_PROF_PCIE_TX_BYTES", "bytes/s", "confirmed", True),
           new_410=("DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND", "confirmed")),
    _field("gpm_pcie_rx_mibps", 1010, "MiB/s",
           "PCIe receive rate (bytes/s) averaged over one fast poll. NVML GPM PCIE_RX_PER_SEC.",
           old=("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "bytes/s", True),
           new=("DCGM_FI_PROF_PCIE_RX_BYTES", "bytes/s", "confirmed", True),
           new_410=("DCGM_FI_PROF_PCIE_RX_BYTES_PER_SECOND", "confirmed")),
    # Beyond the default CSV.
    _field("fb_total", 250, "bytes", "Framebuffer memory total (in {unit}). NVML MemoryInfo v2.",
           old=("DCGM_FI_DEV_FB_TOTAL", "gauge", "MiB", False),
           new=("DCGM_FI_DEV_FB_CAPACITY_BYTES", "bytes", "confirmed", True)),
    _field("power_limit_mw", 164, "mW",
           "Power limit the driver enforces (in {unit}). NVML EnforcedPowerLimit.",
           old=("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "gauge", "W", False),
           new=("DCGM_FI_DEV_BOARD_POWER_LIMIT_ENFORCED_WATTS", "W", "derived", False)),
    _field("clock_events", 112, "bitmask",
           "Bitmask of reasons holding clocks down (nvmlClocksEventReason*). "
           "See kvscope_gpu_clock_event_active for one series per reason.",
           old=("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "bitmask", False)),
    _field("pcie_link_gen", 237, "gen", "Current PCIe link generation.",
           old=("DCGM_FI_DEV_PCIE_LINK_GEN", "gauge", "gen", False)),
    _field("pcie_link_width", 238, "lanes", "Current PCIe link width (lanes).",
           old=("DCGM_FI_DEV_PCIE_LINK_WIDTH", "gauge", "lanes", False)),
    _field("pcie_max_link_gen", 235, "gen", "Maximum PCIe link generation of the GPU.",
           old=("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "gauge", "gen", False)),
    _field("pcie_max_link_width", 236, "lanes", "Maximum PCIe link width of the GPU (lanes).",
           old=("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "gauge", "lanes", False)),
    _field("gpm_sm_util", 1002, "%",
           "Ratio of cycles an SM had at least one warp assigned (0-1). NVML GPM SM_UTIL.",
           old=("DCGM_FI_PROF_SM_ACTIVE", "gauge", "ratio", False),
           new=("DCGM_FI_PROF_SM_UTIL_RATIO", "ratio", "derived", False)),
    _field("gpm_sm_occupancy", 1003, "%",
           "Ratio of resident warps to the SM maximum (0-1). NVML GPM SM_OCCUPANCY.",
           old=("DCGM_FI_PROF_SM_OCCUPANCY", "gauge", "ratio", False),
           new=("DCGM_FI_PROF_SM_OCCUPANCY_RATIO", "ratio", "derived", False)),
    _field("ecc_sbe_volatile", 310, "count",
           "Single-bit (corrected) ECC errors since the last driver load.",
           old=("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "count", False)),
    _field("ecc_dbe_volatile", 311, "count",
           "Double-bit (uncorrected) ECC errors since the last driver load.",
           old=("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "count", False)),
    _field("ecc_sbe_aggregate", 312, "count",
           "Single-bit (corrected) ECC errors over the GPU's lifetime.",
           old=("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter", "count", False)),
    _field("ecc_dbe_aggregate", 313, "count",
           "Double-bit (uncorrected) ECC errors over the GPU's lifetime.",
           old=("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter", "count", False)),
)

BY_KEY: Mapping[str, DcgmField] = {f.key: f for f in FIELDS}


def field(key: str) -> DcgmField:
    return BY_KEY[key]


def name_of(key: str, compat: Compat) -> str:
    """The DCGM family name a reading is exported under in `compat` (doctor, index page)."""
    return BY_KEY[key].naming(compat).name


def generation(compat: Compat) -> Generation:
    return GENERATION_FACTS[compat]


# Multiplier from a generation's unit back to the 4.8 unit, for readers of an exposition that
# may come from any generation (doctor, index page).
_TO_48_UNIT: Mapping[tuple[str, str], float] = {
    ("MHz", "Hz"): 1e-6, ("mJ", "J"): 1000.0, ("%", "ratio"): 100.0, ("MiB", "bytes"): 1 / MIB,
    ("MB/s", "bytes/s"): 1 / (1024 * 1000)}


def names_in_48_units(key: str) -> list[tuple[str, float]]:
    """Every name `key` is exported under in some generation, with the factor that turns its
    value into the 4.8 unit: read whichever a snapshot carries."""
    entry = BY_KEY[key]
    first = entry.naming("4.8")
    out: list[tuple[str, float]] = []
    for compat in GENERATIONS:
        naming = entry.naming(compat)
        if naming.name not in (name for name, _ in out):
            factor = 1.0 if naming.unit == first.unit else _TO_48_UNIT[(first.unit, naming.unit)]
            out.append((naming.name, factor))
    return out
