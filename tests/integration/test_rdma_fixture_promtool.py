"""Real `promtool check metrics` over what kvscope exports for every RDMA sysfs fixture tree
(mlx4 legacy, mlx5 IB/RoCE, irdma, bnxt_re, EFA, both eRDMA drivers): the driver layouts that no
simulated scenario has, the hw_counters level gauge included."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from test_promtool import COUNTER_IN_NAME

from rdma_helpers import FIXTURES, cli

pytestmark = pytest.mark.integration

TREES = sorted(p.name for p in FIXTURES.iterdir() if (p / "class" / "infiniband").is_dir())


def test_every_driver_layout_has_a_tree() -> None:
    assert {"mlx4-legacy", "mlx5-ib", "irdma-roce", "bnxt-re", "efa"} <= set(TREES)


@pytest.mark.parametrize("tree", TREES)
def test_promtool_accepts_rdma_fixture_exposition(tree: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with Debian's prometheus (tests/run.sh)"
    code, out = cli("collect", "--path.sysfs", str(FIXTURES / tree), "--no-collector.gpu",
                    "--collector.rdma.eadm-path", "/nonexistent/eadm")
    assert code == 0 and "kvscope_rdma_port_state" in out
    lint = subprocess.run([promtool, "check", "metrics"], input=out, text=True,
                          capture_output=True, check=False, timeout=60)
    allowed = {f"{name} metric name should not include type 'counter'" for name in COUNTER_IN_NAME}
    problems = {line.strip() for line in (lint.stdout + lint.stderr).splitlines()
                if line.strip() and line.strip() not in allowed}
    assert not problems, "\n".join(sorted(problems))
