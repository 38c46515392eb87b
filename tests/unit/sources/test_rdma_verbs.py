"""pyverbs on a node without RDMA devices means "no hardware", never a crash."""

from __future__ import annotations

import pytest

from kvscope.sources.verbs import VerbsSource, VerbsUnavailableError, errno_name, load_pyverbs
from rdma_helpers import FIXTURES, cli, collector_up, samples, value


def test_real_pyverbs_without_a_device_is_no_hardware() -> None:
    # pyverbs 56.0rc1 imports here and raises PyverbsRDMAError("Failed to get devices list");
    # without the wheel the import fails. Both must read as "no hardware".
    with pytest.raises(VerbsUnavailableError):
        VerbsSource(load_pyverbs()).query()


def test_collector_reports_verbs_unavailable_and_stays_up() -> None:
    code, out = cli("collect", "--path.sysfs", str(FIXTURES / "erdma-upstream"),
                    "--no-collector.gpu", "--collector.rdma.eadm-path", "/nonexistent/eadm")
    found = samples(out)
    assert code == 0
    assert value(found, "kvscope_rdma_verbs_available") == 0
    assert collector_up(found, "rdma") == 1
    assert "kvscope_rdma_qp_profile_fits" not in found  # no limits: no verdict, not a guess


def test_errno_names() -> None:
    assert errno_name(22) == "EINVAL"
    assert errno_name(12) == "ENOMEM"
    assert errno_name(-1) == "unknown"
