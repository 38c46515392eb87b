"""Following engine logs for QP failure lines: rotation, truncation, byte cap, partial lines."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from kvscope.parsers.qp_logs import classify, pod_from_path
from kvscope.sources.log_follow import LogFollower
from rdma_helpers import FIXTURES


def lines_of(batches: list[tuple[str, list[str]]]) -> list[str]:
    return [line for _, lines in batches for line in lines]


def test_fixture_logs_counted_per_framework_and_pod() -> None:
    follower = LogFollower((str(FIXTURES / "logs/pods/*/*/*.log"),), 1 << 20, from_start=True)
    counts: Counter[tuple[str, str, str]] = Counter()
    for path, lines in follower.poll():
        pod = pod_from_path(path)
        assert pod is not None
        for line in lines:
            failure = classify(line)
            if failure:
                counts[(failure.kind, failure.framework, pod.pod)] += 1
    assert counts == {
        ("create", "dlslime", "lmdeploy-prefill-0"): 2,
        ("modify", "mooncake", "sglang-decode-0"): 1,
        ("create", "mooncake", "sglang-decode-0"): 1,
        ("create", "perftest", "perftest-0"): 3,
        ("create", "ucx", "nixl-worker-0"): 2,
    }


def test_existing_files_start_at_end_new_files_from_start(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    old.write_text("history 1\nhistory 2\n")
    follower = LogFollower((str(tmp_path / "*.log"),), 1 << 20)
    assert follower.poll() == []
    with old.open("a") as f:
        f.write("fresh\n")
    (tmp_path / "new.log").write_text("new 1\n")
    assert sorted(lines_of(follower.poll())) == ["fresh", "new 1"]


def test_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text("a\n")
    follower = LogFollower((str(log),), 1 << 20, from_start=True)
    assert lines_of(follower.poll()) == ["a"]
    log.rename(tmp_path / "0.log.20260101")  # kubelet rotation: rename, then a new file
    log.write_text("b\n")
    assert lines_of(follower.poll()) == ["b"]
    with log.open("a") as f:
        f.write("c\n")
    assert lines_of(follower.poll()) == ["c"]
    log.write_text("d\n")  # copytruncate: same inode, shorter than our offset
    assert lines_of(follower.poll()) == ["d"]


def test_bytes_per_poll_are_capped_and_partial_lines_wait(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text("".join(f"line {i:03d}\n" for i in range(100)))  # 9 bytes a line
    follower = LogFollower((str(log),), 90, from_start=True)
    first = lines_of(follower.poll())
    assert first == [f"line {i:03d}" for i in range(10)]
    total = first
    for _ in range(20):
        total += lines_of(follower.poll())
    assert len(total) == 100
    with log.open("a") as f:
        f.write("half")
    assert follower.poll() == []
    with log.open("a") as f:
        f.write(" done\n")
    assert lines_of(follower.poll()) == ["half done"]


def test_files_that_disappear_are_forgotten(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "logs", tmp_path / "logs")
    follower = LogFollower((str(tmp_path / "logs/pods/*/*/*.log"),), 1 << 20, from_start=True)
    assert len(follower.poll()) == 4
    shutil.rmtree(tmp_path / "logs/pods")
    assert follower.poll() == []
