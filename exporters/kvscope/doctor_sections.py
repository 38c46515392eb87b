"""Imports every doctor section so it registers itself, in report order."""

from kvscope.doctor import gpu, rdma  # noqa: F401

# Subsystem sections are added below: topology.
