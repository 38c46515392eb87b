"""The eadm and rdma-tool sources run real programs (small scripts standing in for the tools):
the argv they pass, eadm's per-device calls running side by side, and absent tools."""

from __future__ import annotations

import sys
from pathlib import Path

from kvscope.sources.command import Outcome
from kvscope.sources.eadm import Eadm
from kvscope.sources.rdma_tool import RdmaTool


def _program(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_eadm_reads_every_device_concurrently(tmp_path: Path) -> None:
    """Each `stat` call waits until every device's call has started: run one after the other,
    the first would wait alone and be killed at the timeout."""
    started = tmp_path / "started"
    started.mkdir()
    eadm = Eadm(
        _program(
            tmp_path / "eadm",
            f"""
args = sys.argv[1:]
if args == ["ver"]:
    print("erdma driver 0.2.38")
    sys.exit(0)
assert args[:2] == ["stat", "-d"], args
open(os.path.join({str(started)!r}, args[2]), "w").close()
while len(os.listdir({str(started)!r})) < 3:
    time.sleep(0.01)
print("tx_packets_cnt: 7 (" + args[2] + ")")
""",
        ),
        timeout=20,
    )
    assert eadm.available
    out = await eadm.read(["erdma_0", "erdma_1", "erdma_2"], want_version=True)
    assert {dev: (r.outcome, r.returncode) for dev, r in out.stats.items()} == dict.fromkeys(
        ("erdma_0", "erdma_1", "erdma_2"), (Outcome.EXITED, 0)
    )
    assert out.stats["erdma_1"].stdout == "tx_packets_cnt: 7 (erdma_1)\n"
    assert out.version is not None and out.version.stdout == "erdma driver 0.2.38\n"


async def test_eadm_without_version_and_a_failing_device(tmp_path: Path) -> None:
    eadm = Eadm(
        _program(
            tmp_path / "eadm",
            """
if sys.argv[3] == "erdma_9":
    sys.exit("eadm: no such device erdma_9")
print("ok")
""",
        ),
        timeout=20,
    )
    out = await eadm.read(["erdma_0", "erdma_9"], want_version=False)
    assert out.version is None
    assert out.stats["erdma_0"].ok
    bad = out.stats["erdma_9"]
    assert not bad.ok and bad.returncode == 1
    assert bad.first_error_line() == "eadm: no such device erdma_9"


def test_absent_tools_are_off(tmp_path: Path) -> None:
    assert not Eadm(str(tmp_path / "no-eadm"), timeout=1).available
    assert not Eadm(None, timeout=1).available
    assert RdmaTool(None, timeout=1).path is None


async def test_rdma_tool_asks_for_the_resource_summary_in_json(tmp_path: Path) -> None:
    tool = RdmaTool(
        _program(
            tmp_path / "rdma",
            """
print('[{"argv": %r}]' % (sys.argv[1:],))
""",
        ),
        timeout=20,
    )
    result = await tool.resources()
    assert result is not None and result.ok
    assert result.stdout == "[{\"argv\": ['-j', 'resource', 'show']}]\n"


async def test_rdma_tool_absent_is_no_result(tmp_path: Path) -> None:
    assert await RdmaTool(str(tmp_path / "missing-rdma"), timeout=1).resources() is None


async def test_rdma_tool_that_hangs_is_killed_at_its_timeout(tmp_path: Path) -> None:
    tool = RdmaTool(_program(tmp_path / "rdma", "time.sleep(600)"), timeout=0.5)
    result = await tool.resources()
    assert result is not None and result.outcome is Outcome.TIMEOUT
    assert result.describe(0.5).endswith("rdma -j resource show: no answer in 0.5s; killed")
