"""Imports every doctor section so it registers itself, in report order."""

# Report order: GPUs, topology and pods, then RDMA.
from kvscope.doctor import gpu, rdma, topology  # noqa: F401
