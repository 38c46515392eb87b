"""The index page against a real `kvscope demo` over HTTP, and its doctor cache in-process."""

from __future__ import annotations

import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent import Agent, kvscope
from conftest import FrozenClock, parse, sim_context
from kvscope import doctor
from kvscope.app import build_runtime, node_facts
from kvscope.collectors.base import Collector, CollectorError, PollResult, Pool, Schedule, Tier
from kvscope.doctor import Finding, Section, Severity, Snapshot
from kvscope.runtime import Runtime
from kvscope.web.server import build_app
from kvscope.web.status_page import DoctorCache, explain

HOSTILE = "<script>alert(1)</script>&node"


class Page(HTMLParser):
    """Tables as lists of rows of cell texts, headed by the <h2> before them; <li> texts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.items: list[str] = []
        self._heading = ""
        self._open: dict[str, str] = {}  # h2, cell, li -> text so far (nested tags included)
        self._row: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        kind = "cell" if tag in ("td", "th") else tag
        if kind in ("h2", "cell", "li"):
            self._open[kind] = ""
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        kind = "cell" if tag in ("td", "th") else tag
        text = self._open.pop(kind, "").strip()
        if kind == "h2":
            self._heading = text
            self.tables[text] = []
        elif kind == "cell":
            self._row.append(text)
        elif kind == "li":
            self.items.append(text)
        elif tag == "tr":
            self.tables.setdefault(self._heading, []).append(self._row)

    def handle_data(self, data: str) -> None:
        for kind in self._open:
            self._open[kind] += data


def _titles(lines: list[str]) -> set[str]:
    """Finding titles with their numbers blanked: the page and the CLI read moments apart."""
    return {re.sub(r"\d+", "N", line) for line in lines}


def test_index_page_of_a_real_demo(tmp_path: Path) -> None:
    config = tmp_path / "kvscope.yml"
    config.write_text(f"node_name: {HOSTILE!r}\n".replace("'", '"'))
    with Agent("demo", "--scenario", "gpu0-hotspot", "--config", str(config)) as agent:
        agent.wait_ready()
        status, raw, headers = agent.get("/")
        metrics = parse(agent.get("/metrics")[1])
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    text = raw.decode()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;node" in text
    page = Page(text)

    node = {row[0]: row[1] for row in page.tables["Node"] if len(row) == 2}
    assert node["node"] == HOSTILE
    assert node["source"].startswith("simulated node, scenario gpu0-hotspot: GPU 0 syndrome")
    assert node["GPUs"].startswith("8 x NVIDIA H100 80GB HBM3, driver ")

    header, *rows = page.tables["GPUs"]
    assert header == ["GPU", "model", "state", "util", "memory used / total", "temperature",
                      "pods"]
    assert [r[0] for r in rows] == [str(i) for i in range(8)]
    util = {lb["gpu"]: v for lb, v in metrics["DCGM_FI_DEV_GPU_UTIL"]}
    used = {lb["gpu"]: v for lb, v in metrics["DCGM_FI_DEV_FB_USED"]}
    total = {lb["gpu"]: v for lb, v in metrics["DCGM_FI_DEV_FB_TOTAL"]}
    temp = {lb["gpu"]: v for lb, v in metrics["DCGM_FI_DEV_GPU_TEMP"]}
    for gpu, model, state, u, memory, t, pods in rows:
        assert model == "NVIDIA H100 80GB HBM3" and state == "up"
        # The page and the scrape may straddle one fast poll: the simulated values drift a bit.
        assert abs(float(u.removesuffix(" %")) - util[gpu]) <= 5, (gpu, u, util[gpu])
        shown_used, shown_total = (float(x) for x in memory.removesuffix(" GiB").split(" / "))
        assert shown_total == pytest.approx(total[gpu] / 1024, abs=0.05)
        assert shown_used == pytest.approx(used[gpu] / 1024, abs=1.0)
        assert abs(float(t.removesuffix(" °C")) - temp[gpu]) <= 3
        role = "prefill" if int(gpu) < 4 else "decode"
        assert pods == f"inference/sglang-{role}-0 ({role})"

    states = {row[0]: row[1] for row in page.tables["Collectors"][1:]}
    assert states == dict.fromkeys(("engines", "gpu", "nvlink", "rdma", "self", "topology"), "up")

    # The doctor's findings are the ones `kvscope doctor` prints for this node.
    report = kvscope("doctor", "--scenario", "gpu0-hotspot").stdout
    cli = [m.group(2) for m in re.finditer(r"\[(WARN|CRIT|info)\] (.*)", report)]
    shown = [re.sub(r"^(warning|critical|info) \[[^]]+\] ", "", item).split("fix:")[0].strip()
             for item in page.items if item.startswith(("warning", "critical", "info"))]
    assert cli and _titles(shown) == _titles(cli)
    assert any("GPU load imbalance: GPU 0" in s for s in shown)


def test_busy_tier_is_explained_in_plain_words(tmp_path: Path) -> None:
    config = tmp_path / "kvscope.yml"
    config.write_text("collectors:\n  gpu: {timeout: 0.5, cadence: {fast: 1}}\n")
    # The driver wedges a second after boot, once the GPUs are enumerated: the fast reads hang.
    with Agent("demo", "--scenario", "nvml-hang", "--sim.fault-delay", "1",
               "--config", str(config)) as agent:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            page = Page(agent.get("/")[1].decode())
            gpu = next((r for r in page.tables.get("Collectors", []) if r[:1] == ["gpu"]), [])
            if "fast: busy" in "".join(gpu):
                break
            time.sleep(0.3)
    assert gpu[1] == "down"
    assert ("fast: busy: fast tier: the previous read of this tier is still running (a read "
            "hung in the driver, sysfs or a subprocess), so this poll was skipped") in gpu[2]


def test_explanations() -> None:
    assert explain("slow: timeout").startswith("slow tier: the poll took longer than")
    assert explain("static: stale").startswith("static tier (identity): no successful poll")
    assert explain("slow: kube_forbidden") == ("slow tier: the Kubernetes API could not be read "
                                               "(forbidden)")
    assert explain("slow: eadm_timeout").startswith("slow tier: Alibaba's eadm tool did not")
    assert explain("fast: KeyError").startswith("fast tier: unexpected KeyError inside the")
    assert explain("fast: nvml_unavailable").startswith("fast tier: NVML could not be loaded")


class Failing(Collector):
    """A collector whose every poll fails with a reason that is not safe HTML."""

    name = "fragile"

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(3600, 1)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        raise CollectorError("<b>bad</b>", "broken on purpose")


async def test_doctor_runs_off_the_loop_cached_and_never_for_metrics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kvscope.doctor import sections as _registers  # noqa: F401 - the real sections register first

    threads: list[str] = []

    async def recording_section(snap: Snapshot) -> Section:
        threads.append(threading.current_thread().name)
        section = Section("Probe")
        section.findings.append(Finding(Severity.CRITICAL, "<img src=x onerror=alert(1)>",
                                        "a & b"))
        return section

    monkeypatch.setattr(doctor, "SECTIONS", [*doctor.SECTIONS, recording_section])
    ctx = sim_context("healthy")
    runtime = Runtime([*build_runtime(ctx).collectors, Failing()])
    await runtime.poll_all_once()
    clock = FrozenClock()
    cache = DoctorCache(ctx, max_age=15, clock=clock)
    runner = web.AppRunner(build_app(runtime, None, node_facts(ctx), cache))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(f"{base}/metrics") as resp:
                    assert resp.status == 200
            assert cache.runs == 0 and not threads  # scrapes never run the doctor
            async with session.get(f"{base}/") as resp:
                text = await resp.text()
            async with session.get(f"{base}/") as resp:
                await resp.text()
            assert cache.runs == 1  # cached: the second page reused the findings
            clock.advance(16)
            async with session.get(f"{base}/") as resp:
                await resp.text()
            assert cache.runs == 2
    finally:
        await runner.cleanup()
        await runtime.stop()
    assert threads and threading.main_thread().name not in threads
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "fix: a &amp; b" in text
    assert "<b>bad</b>" not in text and "&lt;b&gt;bad&lt;/b&gt;" in text
    assert "scenario <code>healthy</code>" in text


async def test_doctor_on_default_series_still_sees_down_nvlinks() -> None:
    """The served agent exports per-GPU NVLink totals by default, not per-link series: the
    index page's doctor must still report down links and retraining from those."""
    ctx = sim_context("nvlink-degraded", overrides={"collectors.nvlink.enabled": True})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    try:
        assert not any(s.name == "kvscope_nvlink_link_up" for f in runtime.families()
                       for s in f.samples)  # per-link series are off by default
        cache = DoctorCache(ctx, wait=30)
        await cache.get(runtime)
    finally:
        await runtime.stop()
    titles = [f.title for f in cache.findings or []]
    assert "GPU 5: 2 of 18 NVLinks down: NVLink bandwidth to every peer is reduced" in titles
    assert any(t.startswith("GPU 5: 12 NVLink recoveries") for t in titles)
