"""Imports every doctor section so it registers itself, in report order."""

from kvscope.doctor import gpu  # noqa: F401
from kvscope.doctor import rdma  # noqa: F401

# Subsystem sections are added below: topology.
