"""A hung eadm inside the RDMA slow tier: the tier's other sources are still served.

The slow tier reads eadm, `rdma -j resource show` and the engine-log follower concurrently.
Before the PollResult contract, one hung eadm made the whole poll fail, which also hid the
resource counts and the QP-failure counts; now only eadm's own series go, and
kvscope_collector_up{collector="rdma",tier="slow"} says the tier is down, with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

from rdma_helpers import FIXTURES, cli, fake_tool, samples, value


def test_hung_eadm_keeps_resources_and_log_counts(tmp_path: Path) -> None:
    eadm = fake_tool(tmp_path, "eadm", "time.sleep(3600)")
    resources = FIXTURES / "rdma_resource_show.json"
    rdma_tool = fake_tool(tmp_path, "rdma", (
        "assert sys.argv[1:] == ['-j', 'resource', 'show'], sys.argv\n"
        f"sys.stdout.write(pathlib.Path({str(resources)!r}).read_text())"))
    config = tmp_path / "kvscope.yaml"
    config.write_text(
        "collectors:\n  rdma:\n    eadm_timeout: 0.5\n"
        f"    rdma_tool_path: {rdma_tool}\n"
        "    log_follow: true\n"
        f"    log_paths: ['{FIXTURES / 'logs/pods/*/*/*.log'}']\n")
    started = time.monotonic()
    code, out = cli("collect", "--config", str(config), "--no-collector.gpu",
                    "--path.sysfs", str(FIXTURES / "erdma-alibaba"),
                    "--collector.rdma.eadm-path", str(eadm))
    assert code == 0
    assert time.monotonic() - started < 5.0  # one eadm timeout, not a stall
    found = samples(out)

    # The slow tier is down, and says why.
    assert value(found, "kvscope_collector_up", collector="rdma", tier="slow") == 0
    assert value(found, "kvscope_collector_errors_total", collector="rdma",
                 reason="eadm_timeout") == 1
    # The other tiers are up.
    assert value(found, "kvscope_collector_up", collector="rdma", tier="fast") == 1
    assert value(found, "kvscope_collector_up", collector="rdma", tier="static") == 1
    # The slow tier's other sources are served from this very poll.
    assert value(found, "kvscope_rdma_resources", device="erdma_0", type="qp") == 40
    assert value(found, "kvscope_rdma_app_qp_failures_total", framework="dlslime",
                 kind="create", pod="lmdeploy-prefill-0", namespace="inference") == 2
    # eadm's own series are absent, not zero.
    assert not any(name.startswith("kvscope_erdma_") for name in found)
