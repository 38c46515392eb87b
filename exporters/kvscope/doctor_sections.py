"""Imports every doctor section so it registers itself, in report order."""

# Subsystem sections are added here: gpu, topology, then rdma.
from kvscope.doctor import gpu, topology  # noqa: F401
