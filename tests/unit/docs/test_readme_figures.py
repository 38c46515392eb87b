"""Every series count and body size the README states, recomputed from real `kvscope collect`
runs of the simulated node: change the exporter and this test tells you the new figure."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import timeouts
from agent import REPO, kvscope

NVLINK = re.compile(r"^(kvscope_nvlink_|DCGM_FI_DEV_NVLINK_)")
# What the nvlink and topology collectors export (README "NVLink, GPU topology and PD paths").
NVLINK_AND_TOPOLOGY = re.compile(r"^(kvscope_nvlink_|DCGM_FI_DEV_NVLINK_|kvscope_gpu_p2p_|"
                                 r"kvscope_gpu_cpu_affinity|kvscope_gpu_nic_affinity|kvscope_pd_|"
                                 r"kvscope_pod_|kvscope_node_network_)")


def _collect(tmp_path: Path, nvlink: str = "") -> bytes:
    """`kvscope collect` of the healthy node, with the nvlink options in `nvlink` (YAML flow
    mapping body) and timeouts no busy test machine reaches (figures count series, not load)."""
    settings = timeouts.nested(timeouts.GENEROUS)
    if nvlink:
        settings["collectors"]["nvlink"].update(yaml.safe_load(f"{{{nvlink}}}"))
    config = tmp_path / f"kvscope-{abs(hash(nvlink))}.yml"
    config.write_text(yaml.safe_dump(settings))
    args = ["collect", "--scenario", "healthy", "--config", str(config)]
    result = kvscope(*args, "--log.level", "error", timeout=300)
    assert result.returncode == 0, result.stderr
    return str(result.stdout).encode()


def _series(body: bytes, pattern: re.Pattern[str] | None = None, per_link: bool = False) -> int:
    lines = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
    if pattern is not None:
        lines = [ln for ln in lines if pattern.match(ln)]
    if per_link:
        lines = [ln for ln in lines if 'link="' in ln]
    return len(lines)


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("figures")
    variants = {"default": "", "per_link": "per_link: true",
                "per_link_bytes": "per_link_bytes: true"}
    # Side by side: each collect mostly waits on the simulated NVML's modelled latency.
    with ThreadPoolExecutor(len(variants)) as pool:
        bodies = {name: pool.submit(_collect, tmp, nvlink) for name, nvlink in variants.items()}
        return {name: body.result() for name, body in bodies.items()}


Figure = tuple[str, Callable[[dict[str, bytes]], float], float]

# (README text with the figure as a group, how to compute it, allowed relative difference: 0 for
# exact counts, 0.1 where the README says "about" or "~").
FIGURES: list[Figure] = [
    (r"one\s+scrape is about ([\d,]+) series", lambda b: _series(b["default"]), 0.1),
    (r"about (\d+) KB of text", lambda b: len(b["default"]) / 1000, 0.1),
    (r"about (\d+) KB gzipped", lambda b: len(gzip.compress(b["default"], 5)) / 1000, 0.15),
    (r"about (\d+) NVLink series on an 8-GPU HGX node",
     lambda b: _series(b["default"], NVLINK), 0.1),
    (r"\(~(\d+) on the same node\)", lambda b: _series(b["per_link"], NVLINK), 0.1),
    (r"(\d+) more series on 8 GPUs",
     lambda b: _series(b["per_link_bytes"], NVLINK) - _series(b["default"], NVLINK), 0),
    (r"The two\s+collectors export about (\d+) series by default",
     lambda b: _series(b["default"], NVLINK_AND_TOPOLOGY), 0.1),
    (r"with `per_link: true` about ([\d,]+), \d+ of them",
     lambda b: _series(b["per_link"], NVLINK_AND_TOPOLOGY), 0.1),
    (r"with `per_link: true` about [\d,]+, (\d+) of them\s+per link",
     lambda b: _series(b["per_link"], NVLINK, per_link=True), 0),
]


def test_readme_figures_match_a_real_collect(bodies: dict[str, bytes]) -> None:
    readme = (REPO / "README.md").read_text()
    rows, wrong = [], []
    for pattern, compute, tolerance in FIGURES:
        match = re.search(pattern, readme)
        assert match, f"README no longer says {pattern!r}: update FIGURES with the text"
        stated = float(match.group(1).replace(",", ""))
        actual = compute(bodies)
        ok = abs(actual - stated) <= tolerance * actual
        rows.append(f"{'ok ' if ok else 'BAD'} {pattern[:60]:<60} README {stated:>8g}  "
                    f"actual {actual:>8.1f}")
        if not ok:
            wrong.append(rows[-1])
    print("\n".join(rows))
    assert not wrong, "README figures out of step with `kvscope collect`:\n" + "\n".join(wrong)
