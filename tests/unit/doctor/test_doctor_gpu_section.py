"""The doctor's GPU section on hand-made snapshots: its thresholds at their edges, a lost GPU,
MIG instances summed, dcgm-exporter 4.10's names and units, and a node without GPUs."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from kvscope.config import load
from kvscope.doctor import Severity, Snapshot
from kvscope.doctor.gpu import FB_FULL_RATIO, IMBALANCE_POINTS, gpu_section

Row = tuple[str, dict[str, str], float]


def _snapshot(rows: Iterable[Row]) -> Snapshot:
    return Snapshot.from_samples(load(None), "http://127.0.0.1:9400/metrics", rows)


def _gpus(
    util: dict[str, float],
    used_mib: dict[str, float] | None = None,
    free_mib: dict[str, float] | None = None,
    lost: tuple[str, ...] = (),
) -> list[Row]:
    rows: list[Row] = []
    for gpu, value in util.items():
        labels = {"gpu": gpu, "modelName": "NVIDIA H200"}
        rows.append(("kvscope_gpu_up", labels, 0.0 if gpu in lost else 1.0))
        rows.append(("DCGM_FI_DEV_GPU_UTIL", labels, value))
        if used_mib is not None and free_mib is not None:
            rows.append(("DCGM_FI_DEV_FB_USED", labels, used_mib[gpu]))
            rows.append(("DCGM_FI_DEV_FB_FREE", labels, free_mib[gpu]))
    return rows


async def test_imbalance_warns_from_its_threshold_on() -> None:
    at = await gpu_section(_snapshot(_gpus({"0": 40.0 + IMBALANCE_POINTS, "1": 40.0})))
    below = await gpu_section(_snapshot(_gpus({"0": 40.0 + IMBALANCE_POINTS - 0.5, "1": 40.0})))
    assert [f.severity for f in at.findings] == [Severity.WARNING]
    assert at.findings[0].title.startswith("GPU load imbalance: GPU 0 at 70% while GPU 1 at 40%")
    assert below.findings == []


async def test_a_single_gpu_is_never_imbalanced() -> None:
    section = await gpu_section(_snapshot(_gpus({"0": 100.0})))
    assert section.findings == []
    assert len(section.lines) == 2  # header and the one GPU


async def test_framebuffer_full_warns_at_its_ratio() -> None:
    total = 1000.0
    full = total * FB_FULL_RATIO
    section = await gpu_section(
        _snapshot(
            _gpus(
                {"0": 50.0, "1": 50.0},
                used_mib={"0": full, "1": full - 1},
                free_mib={"0": total - full, "1": total - full + 1},
            )
        )
    )
    assert [f.title.split(" framebuffer")[0] for f in section.findings] == ["GPU 0"]
    assert "95.0% full" in section.findings[0].title
    assert section.lines[1].split() == ["0", "NVIDIA", "H200", "50", "95.0%", "up"]


async def test_a_lost_gpu_is_critical_and_shown_lost() -> None:
    section = await gpu_section(_snapshot(_gpus({"0": 10.0, "3": 10.0}, lost=("3",))))
    assert [(f.severity, f.title) for f in section.findings] == [
        (Severity.CRITICAL, "GPU 3 is lost (NVML: GPU_IS_LOST)")
    ]
    assert section.lines[-1].endswith("LOST") and section.lines[1].endswith("up")


async def test_gpus_are_listed_in_numeric_order() -> None:
    section = await gpu_section(_snapshot(_gpus({"10": 5.0, "2": 5.0, "1": 5.0})))
    assert [line.split()[0] for line in section.lines[1:]] == ["1", "2", "10"]


async def test_mig_instances_of_a_gpu_are_summed() -> None:
    rows: list[Row] = [("kvscope_gpu_up", {"gpu": "7"}, 1.0)]
    for instance, (used, free) in enumerate(((9000.0, 0.0), (9000.0, 100.0))):
        labels = {"gpu": "7", "GPU_I_ID": str(instance)}
        rows += [("DCGM_FI_DEV_FB_USED", labels, used), ("DCGM_FI_DEV_FB_FREE", labels, free)]
    section = await gpu_section(_snapshot(rows))
    # 18000 of 18100 MiB: full only when the instances are added up (each alone is 100% / 98.9%).
    assert "99.4% full" in section.findings[0].title


async def test_dcgm_410_names_are_read_in_the_48_units() -> None:
    """Under dcgm.compat 4.10 utilisation is a 0-1 ratio and memory is in bytes."""
    mib = 1 << 20
    rows: list[Row] = []
    for gpu, ratio, used in (("0", 0.9, 990 * mib), ("1", 0.1, 100 * mib)):
        labels = {"gpu": gpu}
        rows += [
            ("kvscope_gpu_up", labels, 1.0),
            ("DCGM_FI_DEV_GPU_UTIL_RATIO", labels, ratio),
            ("DCGM_FI_DEV_FB_USED_BYTES", labels, used),
            ("DCGM_FI_DEV_FB_FREE_BYTES", labels, 1000 * mib - used),
        ]
    section = await gpu_section(_snapshot(rows))
    titles = [f.title for f in section.findings]
    assert titles[0] == (
        "GPU 0 framebuffer 99.0% full: next KV-cache growth or batch spike will OOM this rank first"
    )
    assert titles[1].startswith("GPU load imbalance: GPU 0 at 90% while GPU 1 at 10%")
    assert section.lines[1].split()[1] == "90"


@pytest.mark.parametrize(
    ("rows", "line"),
    [
        ([], "no GPUs found"),
        ([("kvscope_gpu_nvml_available", {}, 0.0)], "no GPUs found (NVML not available)"),
        ([("kvscope_gpu_nvml_available", {}, 1.0)], "no GPUs found"),
    ],
)
async def test_no_gpus(rows: list[Row], line: str) -> None:
    section = await gpu_section(_snapshot(rows))
    assert section.lines == [line] and section.findings == []


async def test_missing_readings_show_a_dash_not_a_zero() -> None:
    section = await gpu_section(_snapshot([("kvscope_gpu_up", {"gpu": "0"}, 1.0)]))
    assert section.lines[1].split() == ["0", "-", "up"]
    assert section.findings == []


async def test_nvml_not_answering_is_one_finding_not_eight_lost_gpus() -> None:
    snap = _snapshot([*_gpus({str(g): 0.0 for g in range(8)}, lost=tuple(map(str, range(8)))),
                      ("kvscope_collector_up", {"collector": "gpu", "tier": "fast"}, 0.0),
                      ("kvscope_collector_errors_total",
                       {"collector": "gpu", "reason": "busy"}, 12.0)])
    section = await gpu_section(snap)
    (finding,) = section.findings
    assert finding.severity is Severity.CRITICAL
    assert finding.title.startswith("NVML does not answer for any GPU")
    assert all(line.endswith("NO ANSWER") for line in section.lines[1:])
