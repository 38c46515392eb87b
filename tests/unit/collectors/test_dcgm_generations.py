"""Every default counter of each dcgm-exporter release, checked against the recorded CSVs.

For each `dcgm.compat` generation, the simulated node's exposition must carry every active row
of that release's default-counters.csv that NVML can serve, with the CSV's name and type, and the
value in the release's unit (tests/fixtures/dcgm/, see its README for sources). The 4.9/4.10 lists
are derived (the shipped files were not available); collectors/dcgm_compat.py marks them.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from agent import kvscope
from conftest import FrozenClock, parse, sim_context
from kvscope.app import build_runtime
from kvscope.collectors.dcgm_compat import BY_KEY, FIELDS, GENERATIONS, Compat, generation

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "dcgm"
MIB = 1024 * 1024
# Rows NVML cannot serve on the simulated node: the H100s are not vGPU guests.
NOT_SERVABLE = {"DCGM_FI_DEV_VGPU_LICENSE_STATUS"}
UNIT_WORDS = {"ratio 0-1": "ratio", "XID code": "xid", "rows": "count",
              "MB/s (KiB/s/1000)": "MB/s"}


def _rows(name: str) -> list[dict[str, str]]:
    text = (FIXTURES / name).read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return list(csv.DictReader(io.StringIO(body)))


def _unit(word: str) -> str:
    word = word.removesuffix(" (unchanged)").strip()
    return UNIT_WORDS.get(word, word)


def units_48() -> dict[str, str]:
    """4.8.x units by name, from the 4.9 file's unit_4.8.4 column (4.8 CSVs say it in help)."""
    return {r["replaces_4.8.4_name"]: _unit(r["unit_4.8.4"])
            for r in _rows("default-counters-4.9.csv") if r["unit_4.8.4"] not in ("-", "string")}


def expected(compat: Compat) -> dict[str, tuple[str, str | None]]:
    """{name: (type, unit)} of the active metric rows of the release `compat` stands for."""
    if compat in ("4.8", "4.8.3"):
        units = units_48()
        releases = ("4.8.3",) if compat == "4.8" else ("4.8.3", "4.8.4")
        out: dict[str, tuple[str, str | None]] = {}
        for row in _rows("default-counters-4.8.csv"):
            if (row["release"] in releases and row["default_state"] == "active"
                    and row["prom_type"] != "label"):
                out[row["field_name"]] = (row["prom_type"], units.get(row["field_name"]))
        if compat == "4.8":
            # 4.8.0-4.8.2: the same active rows as 4.8.3 (stored version 83970c75), but the
            # NVLink bandwidth row is typed counter there; 4.8.3 retyped it gauge.
            out["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] = ("counter", "MB/s")
        return out
    rows = _rows(f"default-counters-{compat}.csv")
    return {r["field_name"]: (r["prom_type"], _unit(r["unit_new"])) for r in rows
            if r["default_state"] == "active" and r["prom_type"] != "label"}


def driver_label_row(compat: Compat) -> str:
    if compat in ("4.8", "4.8.3"):
        return "DCGM_FI_DRIVER_VERSION"
    labels = [r["field_name"] for r in _rows(f"default-counters-{compat}.csv")
              if r["prom_type"] == "label"]
    assert len(labels) == 1
    return labels[0]


async def exposition(compat: Compat) -> str:
    """The healthy node, GPU and NVLink collectors, polled twice (GPM windows and the NVLink
    rate need two polls), with the node's clock frozen so every generation sees the same node.
    The collectors' own window clock is real time, hence the tiny GPM window."""
    clock = FrozenClock()
    ctx = sim_context("healthy", clock=clock, overrides={
        "dcgm.compat": compat, "collectors.nvlink.enabled": True,
        "collectors.gpu.min_gpm_window": 1e-6})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    clock.advance(5)
    await runtime.poll_all_once()
    body = runtime.exposition().decode()
    await runtime.stop()
    return body


_BODIES: dict[str, str] = {}


async def body_of(compat: Compat) -> str:
    if compat not in _BODIES:
        _BODIES[compat] = await exposition(compat)
    return _BODIES[compat]


def types_of(body: str) -> dict[str, str]:
    return {line.split()[2]: line.split()[3] for line in body.splitlines()
            if line.startswith("# TYPE ")}


def table_naming(name: str, compat: Compat):  # type: ignore[no-untyped-def]
    for entry in FIELDS:
        if entry.naming(compat).name == name:
            return entry.naming(compat)
    raise AssertionError(f"{name} is a default row of {compat} but not in dcgm_compat")


@pytest.mark.parametrize("compat", GENERATIONS)
async def test_every_default_counter_exported_with_name_type_unit(compat: Compat) -> None:
    body = await body_of(compat)
    types = types_of(body)
    samples = parse(body.encode())
    rows = expected(compat)
    assert len(rows) >= 24
    for name, (kind, unit) in rows.items():
        naming = table_naming(name, compat)
        assert naming.default, f"{name}: a default row of {compat}, not marked default"
        assert naming.kind == kind, f"{name}: table says {naming.kind}, CSV says {kind}"
        if unit is not None:
            assert naming.unit == unit, f"{name}: table unit {naming.unit}, recorded {unit}"
        if name in NOT_SERVABLE:
            assert name not in samples
            continue
        assert name in samples, f"{compat}: default counter {name} not exported"
        assert types[name] == kind, f"{compat}: {name} typed {types[name]}, CSV says {kind}"
    # No default row of another generation leaks in (names differ across 4.8 / 4.9).
    others = {n for c in GENERATIONS for n in expected(c)} - set(rows)
    assert not others & set(samples), sorted(others & set(samples))


@pytest.mark.parametrize("compat", GENERATIONS)
async def test_labels_of_each_generation(compat: Compat) -> None:
    samples = parse((await body_of(compat)).encode())
    facts = generation(compat)
    util = BY_KEY["gpu_util"].naming(compat).name
    labels = samples[util][0][0]
    assert facts.hostname_key in labels and labels[facts.hostname_key] == "golden-node"
    other_key = {"Hostname": "hostname", "hostname": "Hostname"}[facts.hostname_key]
    assert other_key not in labels
    assert facts.driver_version_label == driver_label_row(compat)
    assert labels[driver_label_row(compat)] == "580.95.05"
    # kvscope_* families never change with the generation.
    up = samples["kvscope_gpu_up"][0][0]
    assert up["Hostname"] == "golden-node" and "DCGM_FI_DRIVER_VERSION" in up


def _by_gpu(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> dict[str, float]:
    return {lb["gpu"]: v for lb, v in samples[name]}


@pytest.mark.parametrize("compat", ["4.9", "4.10"])
async def test_values_scaled_to_the_release_units(compat: Compat) -> None:
    old = parse((await body_of("4.8")).encode())
    new = parse((await body_of(compat)).encode())
    checked = 0
    for entry in FIELDS:
        before, after = entry.naming("4.8"), entry.naming(compat)
        if before.name not in old:
            continue
        a, b = _by_gpu(old, before.name), _by_gpu(new, after.name)
        assert a.keys() == b.keys()
        for gpu, v48 in a.items():
            v = b[gpu]
            pair = (before.unit, after.unit)
            if pair == ("MHz", "Hz"):
                assert v == pytest.approx(v48 * 1e6)
            elif pair == ("mJ", "J"):
                assert v == pytest.approx(v48 / 1000)
            elif pair == ("%", "ratio"):
                assert v == pytest.approx(v48 / 100)
            elif pair == ("MiB", "bytes"):
                assert v // MIB == v48 and v != v48
            elif pair == ("MB/s", "bytes/s"):
                # A rate over the collectors' real-time poll gap: not equal across two runs.
                assert v > 0 and v48 > 0 and v == math.trunc(v)
                assert entry.convert(compat, 2_000_000.0) == 2_000_000 * 1024
                assert entry.convert("4.8", 2_000_999.0) == 2000
            else:
                assert before.unit == after.unit, pair
                assert v == v48, before.name
            checked += 1
    assert checked >= 8 * 30
    # Absolute anchors against the simulated hardware.
    clock = FrozenClock()
    ctx = sim_context("healthy", clock=clock)
    clock.advance(5)  # where exposition() read the node
    gpu0 = ctx.sim.gpus[0]
    assert _by_gpu(new, "DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL")["0"] == pytest.approx(
        ctx.sim.energy_mj(gpu0) / 1000)
    total = ctx.sim.memory_bytes(gpu0)[0]
    assert _by_gpu(new, "DCGM_FI_DEV_FB_CAPACITY_BYTES")["0"] == total
    assert _by_gpu(old, "DCGM_FI_DEV_FB_TOTAL")["0"] == total // MIB


def test_kvscope_collect_with_the_compat_flag() -> None:
    """The shipped command: `kvscope collect --dcgm.compat 4.10` on the simulated node."""
    result = kvscope("collect", "--scenario", "healthy", "--dcgm.compat", "4.10",
                     "--no-collector.rdma", "--no-collector.engines", "--no-collector.topology")
    assert result.returncode == 0, result.stderr
    samples = parse(result.stdout.encode())
    assert "DCGM_FI_DEV_GPU_UTIL" not in samples
    labels = samples["DCGM_FI_DEV_GPU_UTIL_RATIO"][0][0]
    assert labels["hostname"] == "e2e-node" and "DCGM_FI_SYSTEM_DRIVER_VERSION" in labels
    assert 0 <= samples["DCGM_FI_DEV_GPU_UTIL_RATIO"][0][1] <= 1
    assert "DCGM_FI_DEV_FB_CAPACITY_BYTES" in samples
    bad = kvscope("collect", "--scenario", "healthy", "--dcgm.compat", "4.7")
    assert bad.returncode == 2 and "4.7" in bad.stderr and "Traceback" not in bad.stderr
