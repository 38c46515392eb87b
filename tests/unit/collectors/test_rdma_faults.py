"""Faults of one device, one file or one value stay that size.

- A number of 310+ digits in a sysfs counter, an eadm line or the rdma tool's JSON used to fail
  the float conversion of the exposition and with it the whole tier, for every device. Now it is
  one parse error; every other value is served.
- A sysfs read that never returns used to hold the fast tier's one worker thread, so no device's
  counters updated. Now each device is read on its own thread under `sysfs_timeout`.
- A counter file that vanished between listing and reading used to drop its series for a poll,
  with nothing counted. Now it keeps its previous value for that poll and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvscope.collectors.base import PollResult, Tier
from kvscope.collectors.rdma import RdmaCollector
from kvscope.config import ConfigError, load
from kvscope.render.exposition import render_text
from kvscope.runtime import BlockingPool
from kvscope.sources import rdma_sysfs
from rdma_helpers import FIXTURES, cli, fake_tool, samples, value

HUGE = "9" * 310  # beyond float range: float(int(HUGE)) raises OverflowError
Found = dict[str, list[tuple[dict[str, str], float]]]


def _tree(tmp_path: Path, name: str = "mlx5-ib") -> Path:
    tree = tmp_path / "sys"
    shutil.copytree(FIXTURES / name, tree, symlinks=True)
    return tree


def _port(tree: Path, device: str) -> Path:
    return tree / "class" / "infiniband" / device / "ports" / "1"


def _collector(tree: Path, **rdma: object) -> RdmaCollector:
    settings = {
        "paths.sysfs": str(tree),
        "collectors.gpu.enabled": False,
        "collectors.rdma.eadm_path": None,
        "collectors.rdma.verbs": False,
        **{f"collectors.rdma.{key}": v for key, v in rdma.items()},
    }
    return RdmaCollector(SimpleNamespace(config=load(None, settings), oneshot=True))  # type: ignore[arg-type]


def _poll(
    collector: RdmaCollector,
    pool: BlockingPool,
    tier: Tier = Tier.FAST,
) -> tuple[PollResult, Found]:
    # The bound stands in for the runtime's tier timeout: a poll that hangs fails the test.
    result = asyncio.run(asyncio.wait_for(collector.poll(tier, pool), 5.0))
    return result, samples(render_text(list(result.families)).decode())


def _reasons(result: PollResult) -> list[str]:
    return [e.reason for e in result.errors]


# ---- absurd numbers --------------------------------------------------------------------------


def test_a_310_digit_sysfs_counter_is_one_parse_error(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (_port(tree, "mlx5_0") / "counters" / "port_rcv_errors").write_text(HUGE + "\n")
    (_port(tree, "mlx5_1") / "state").write_text(HUGE + ": ACTIVE\n")
    (_port(tree, "mlx5_1") / "rate").write_text(HUGE + " Gb/sec (4X HDR)\n")
    code, out = cli(
        "collect",
        "--path.sysfs",
        str(tree),
        "--no-collector.gpu",
        "--collector.rdma.eadm-path",
        "/nonexistent/eadm",
    )
    assert code == 0
    found = samples(out)
    assert value(found, "kvscope_collector_up", collector="rdma", tier="fast") == 1
    assert value(found, "kvscope_rdma_parse_errors_total", source="sysfs") == 3
    counters = {
        lb["counter"]
        for lb, _ in found["kvscope_rdma_port_counter_total"]
        if lb["device"] == "mlx5_0"
    }
    assert "port_rcv_errors" not in counters and "port_xmit_data" in counters
    assert (
        value(found, "kvscope_rdma_port_transmit_bytes_total", device="mlx5_0") == 4 * 2880761508848
    )
    assert value(found, "kvscope_rdma_port_state", device="mlx5_0") == 4
    assert not [lb for lb, _ in found["kvscope_rdma_port_state"] if lb["device"] == "mlx5_1"]
    assert value(found, "kvscope_rdma_port_physical_state", device="mlx5_1") == 3  # kept


@pytest.mark.parametrize("digits", [310, 5000])  # 5000: past int()'s 4300-digit limit too
def test_an_absurd_eadm_value_is_one_malformed_line(tmp_path: Path, digits: int) -> None:
    stat = (FIXTURES / "eadm" / "stat_erdma_0.txt").read_text()
    lines = [
        f"hw_bps_limit_drop_cnt : {'7' * digits}" if line.startswith("hw_bps_limit_drop") else line
        for line in stat.splitlines()
    ]
    fixtures = tmp_path / "fixtures"
    (fixtures / "eadm").mkdir(parents=True)
    (fixtures / "eadm" / "stat_huge.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(FIXTURES / "eadm" / "ver.txt", fixtures / "eadm" / "ver.txt")
    eadm = fake_tool(
        tmp_path,
        "eadm",
        (
            f"text = pathlib.Path({str(fixtures / 'eadm')!r}, 'ver.txt' if sys.argv[1] == 'ver' "
            "else 'stat_huge.txt').read_text()\nsys.stdout.write(text)"
        ),
    )
    code, out = cli(
        "collect",
        "--path.sysfs",
        str(FIXTURES / "erdma-alibaba"),
        "--no-collector.gpu",
        "--collector.rdma.eadm-path",
        str(eadm),
    )
    assert code == 0
    found = samples(out)
    assert value(found, "kvscope_collector_up", collector="rdma", tier="slow") == 1
    assert value(found, "kvscope_rdma_parse_errors_total", source="eadm") == 1
    assert "kvscope_erdma_hw_bps_limit_drop_total" not in found
    assert value(found, "kvscope_erdma_verbs_create_qp_failed_total", device="erdma_0") == 8
    assert value(found, "kvscope_erdma_driver_info", version="0.2.38") == 1


def test_an_absurd_resource_count_is_one_bad_field(tmp_path: Path) -> None:
    doc = (
        '[{"ifname":"mlx5_0","qp":' + HUGE + ',"cq":27},'
        '{"ifname":"mlx5_1","qp":1,"cq":3,"srq":' + "1" * 5000 + "}]"
    )
    tool = fake_tool(tmp_path, "rdma", f"sys.stdout.write({doc!r})")
    config = tmp_path / "kvscope.yaml"
    config.write_text(f"collectors:\n  rdma:\n    rdma_tool_path: {tool}\n")
    code, out = cli(
        "collect",
        "--config",
        str(config),
        "--path.sysfs",
        str(FIXTURES / "mlx5-ib"),
        "--no-collector.gpu",
        "--collector.rdma.eadm-path",
        "/nonexistent/eadm",
    )
    assert code == 0
    found = samples(out)
    assert value(found, "kvscope_collector_up", collector="rdma", tier="slow") == 1
    assert value(found, "kvscope_rdma_parse_errors_total", source="rdma_tool") == 2
    got = {(lb["device"], lb["type"]): v for lb, v in found["kvscope_rdma_resources"]}
    assert got == {("mlx5_0", "cq"): 27, ("mlx5_1", "qp"): 1, ("mlx5_1", "cq"): 3}


# ---- a hung device ---------------------------------------------------------------------------


@pytest.fixture
def hung_tree(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """mlx5-ib with mlx5_0's `rate` a FIFO nobody writes: opening it blocks, like a sysfs read
    stuck behind a wedged firmware command. `release()` answers the reader and puts a regular
    file back."""
    tree = _tree(tmp_path)
    rate = _port(tree, "mlx5_0") / "rate"
    rate.unlink()
    os.mkfifo(rate)

    def release() -> None:
        if not rate.is_fifo():
            return
        try:
            fd = os.open(rate, os.O_WRONLY | os.O_NONBLOCK)  # succeeds: a reader is waiting
        except OSError:  # no reader (nothing hung): nothing to answer
            fd = -1
        replacement = rate.with_name("rate.new")
        replacement.write_text("200 Gb/sec (4X HDR)\n")
        replacement.replace(rate)
        if fd >= 0:
            os.write(fd, b"200 Gb/sec (4X HDR)\n")
            os.close(fd)

    yield tree, release
    release()


def _threads_for(device: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.endswith(f"-{device}"))


def test_one_hung_device_leaves_the_others_updating(
    hung_tree: tuple[Path, Callable[[], None]],
) -> None:
    tree, release = hung_tree
    collector = _collector(tree, sysfs_timeout=0.3, timeout=2.0)
    pool = BlockingPool("test-rdma-fast")
    xmit = _port(tree, "mlx5_1") / "counters" / "port_xmit_data"
    try:
        started = time.monotonic()
        result, found = _poll(collector, pool)
        assert time.monotonic() - started < 2.0
        assert _reasons(result) == ["sysfs_timeout"]
        assert "mlx5_0" in str(result.errors[0])
        assert (
            value(found, "kvscope_rdma_port_transmit_bytes_total", device="mlx5_1")
            == 4 * 4294967295
        )
        assert not [lb for lb, _ in found["kvscope_rdma_port_state"] if lb["device"] == "mlx5_0"]

        xmit.write_text("5000000000\n")  # the healthy device moves on
        result, found = _poll(collector, pool)
        assert _reasons(result) == ["sysfs_timeout"]
        assert value(found, "kvscope_rdma_port_transmit_bytes_total", device="mlx5_1") == 2e10
        assert (
            value(found, "kvscope_rdma_sysfs_read_errors_total", device="mlx5_0", reason="timeout")
            == 2
        )
        assert _threads_for("mlx5_0") == 1  # the second poll started none behind the hung one
    finally:
        release()
    deadline = time.monotonic() + 5
    while _threads_for("mlx5_0") and time.monotonic() < deadline:
        time.sleep(0.05)
    result, found = _poll(collector, pool)  # released: the device is back
    assert result.errors == ()
    assert value(found, "kvscope_rdma_port_state", device="mlx5_0") == 4
    pool.shutdown()


def test_a_hung_device_in_the_static_tier_keeps_the_others_identity(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    fw = tree / "class/infiniband/mlx5_0/fw_ver"
    collector = _collector(tree, sysfs_timeout=0.3, timeout=2.0)
    pool = BlockingPool("test-rdma-static")

    def identities() -> tuple[list[str], list[str]]:
        result, found = _poll(collector, pool, Tier.STATIC)
        return _reasons(result), [lb["device"] for lb, _ in found["kvscope_rdma_device_info"]]

    fd = -1
    try:
        assert identities() == ([], ["mlx5_0", "mlx5_1"])
        fw.unlink()
        os.mkfifo(fw)
        # Hung now: mlx5_0 keeps the identity it had (it has not moved), the tier says why.
        assert identities() == (["sysfs_timeout"], ["mlx5_0", "mlx5_1"])
        fresh = _collector(tree, sysfs_timeout=0.3, timeout=2.0)
        result, found = _poll(fresh, pool, Tier.STATIC)  # hung from the start: nothing to keep
        assert _reasons(result) == ["sysfs_timeout"]
        assert [lb["device"] for lb, _ in found["kvscope_rdma_device_info"]] == ["mlx5_1"]
    finally:
        with contextlib.suppress(OSError):
            fd = os.open(fw, os.O_WRONLY | os.O_NONBLOCK)  # answers both hung readers
        fw.unlink(missing_ok=True)
        if fd >= 0:
            os.close(fd)
        pool.shutdown()


def test_sysfs_timeout_must_leave_room_in_the_poll() -> None:
    with pytest.raises(ConfigError, match=r"sysfs_timeout \(5.0\) must be below timeout \(4.0\)"):
        load(None, {"collectors.rdma.sysfs_timeout": 5.0, "collectors.rdma.timeout": 4.0})


# ---- files vanishing mid-read ----------------------------------------------------------------


def test_a_vanished_counter_keeps_its_value_once_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _tree(tmp_path)
    target = _port(tree, "mlx5_0") / "hw_counters" / "out_of_sequence"
    target.write_text("41\n")
    real_open = rdma_sysfs._open_read
    vanish = {"on": False}

    def open_read(path: Path) -> str:
        if vanish["on"] and path == target:
            path.unlink(missing_ok=True)  # gone between the listing and the open: a real ENOENT
        return real_open(path)

    monkeypatch.setattr(rdma_sysfs, "_open_read", open_read)
    collector = _collector(tree)
    pool = BlockingPool("test-rdma-vanish")

    def poll() -> tuple[float | None, float]:
        """out_of_sequence of mlx5_0 (None when absent) and mlx5_0's vanished count."""
        _, found = _poll(collector, pool)
        got = [
            v
            for lb, v in found["kvscope_rdma_hw_counter_total"]
            if lb["device"] == "mlx5_0" and lb["counter"] == "out_of_sequence"
        ]
        counted = [
            v
            for lb, v in found.get("kvscope_rdma_sysfs_read_errors_total", [])
            if lb == {"device": "mlx5_0", "reason": "vanished"}
        ]
        return (got[0] if got else None), (counted[0] if counted else 0)

    assert poll() == (41, 0)
    vanish["on"] = True
    assert poll() == (41, 1)  # listed, gone when opened: the previous value, no flap
    target.write_text("42\n")
    assert poll() == (None, 2)  # gone twice in a row: dropped, not carried on and on
    vanish["on"] = False
    target.write_text("44\n")
    assert poll() == (44, 2)
    pool.shutdown()
