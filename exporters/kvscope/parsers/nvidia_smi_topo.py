"""`nvidia-smi topo -m` output -> a typed matrix (used to check kvscope's own matrix).

The table is tab-separated on current drivers (older ones pad with spaces; both are read):

    <tab>GPU0<tab>GPU1<tab>NIC0<tab>CPU Affinity<tab>NUMA Affinity<tab>GPU NUMA ID
    GPU0<tab> X <tab>NV18<tab>PIX<tab>0-47,96-143<tab>0<tab><tab>N/A
    ...
    NIC Legend:
      NIC0: mlx5_0

Cells are `X` (self), `NV<n>`, `PIX`, `PXB`, `PHB`, `NODE`, `SYS`. Terminal escapes (bold
headers when stdout is a tty) are stripped. Never raises: a table that cannot be found comes back
with `error` set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DEVICE = re.compile(r"^(GPU|NIC)\d+$")
_CELL = re.compile(r"^(X|NV\d+|PIX|PXB|PHB|NODE|SYS|SOC)$")  # SOC: pre-2017 drivers' SYS
_NIC_LEGEND = re.compile(r"^\s*(NIC\d+)\s*:\s*(\S+)\s*$")


@dataclass(frozen=True)
class TopoMatrix:
    devices: tuple[str, ...] = ()  # column names in order: GPU0, GPU1, NIC0, ...
    cells: dict[tuple[str, str], str] = field(default_factory=dict)  # (row, col) -> cell
    cpu_affinity: dict[str, str] = field(default_factory=dict)  # GPU row -> "0-47,96-143"
    numa_affinity: dict[str, str] = field(default_factory=dict)
    nic_names: dict[str, str] = field(default_factory=dict)  # NIC0 -> mlx5_0
    error: str | None = None

    def gpu_pairs(self) -> dict[tuple[int, int], str]:
        """(gpu a, gpu b) -> cell, for GPU-to-GPU cells other than the diagonal."""
        out = {}
        for (row, col), cell in self.cells.items():
            if row.startswith("GPU") and col.startswith("GPU") and row != col:
                out[(int(row[3:]), int(col[3:]))] = "SYS" if cell == "SOC" else cell
        return out


def _split(line: str) -> list[str]:
    if "\t" in line:
        return [part.strip() for part in line.split("\t")]
    return [part.strip() for part in re.split(r"\s{2,}", line)]


def _is_header(parts: list[str]) -> bool:
    # The header starts with an empty cell (the row-name column); rows start with a name.
    return len(parts) > 1 and parts[0] == "" and bool(_DEVICE.match(parts[1]))


def _nic_names(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = _NIC_LEGEND.match(line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def parse_topo_matrix(text: str) -> TopoMatrix:
    lines = [_ANSI.sub("", line).rstrip("\r\n") for line in text.splitlines()]
    header_at = next((i for i, line in enumerate(lines) if _is_header(_split(line))), None)
    if header_at is None:
        return TopoMatrix(error="no matrix header (a line of GPU0 GPU1 ... columns)")
    header = _split(lines[header_at])[1:]
    devices = tuple(tok for tok in header if _DEVICE.match(tok))
    extra = [tok for tok in header if tok and not _DEVICE.match(tok)]
    out = TopoMatrix(devices)
    for line in lines[header_at + 1:]:
        parts = _split(line)
        if line.strip().startswith("Legend"):
            break
        if not parts or not _DEVICE.match(parts[0]):
            continue
        error = _read_row(out, parts[0], parts[1:], extra)
        if error is not None:
            return TopoMatrix(devices, out.cells, out.cpu_affinity, out.numa_affinity,
                              error=error)
    if not out.cells:
        return TopoMatrix(devices, error="matrix header without rows")
    return TopoMatrix(devices, out.cells, out.cpu_affinity, out.numa_affinity, _nic_names(lines))


def _read_row(out: TopoMatrix, row: str, values: list[str], extra: list[str]) -> str | None:
    """Add one row's cells to `out`; an error message when the row does not fit the header."""
    if len(values) < len(out.devices):
        return f"row {row}: {len(values)} cells for {len(out.devices)} columns"
    for col, cell in zip(out.devices, values, strict=False):
        if not _CELL.match(cell):
            return f"row {row}, column {col}: unknown cell {cell!r}"
        out.cells[(row, col)] = cell
    for name, value in zip(extra, values[len(out.devices):], strict=False):
        if name == "CPU Affinity" and value:
            out.cpu_affinity[row] = value
        elif name == "NUMA Affinity" and value:
            out.numa_affinity[row] = value
    return None
