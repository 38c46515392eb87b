#!/usr/bin/env python3
"""Regenerate the kubelet pod-resources Python modules from their .proto with grpcio-tools.

    python3 -m pip install grpcio-tools && python3 scripts/regen_podresources.py

The generated api_pb2.py / api_pb2_grpc.py are committed, so running kvscope needs only
grpcio and protobuf. The .proto is compiled from the source root so that it registers under its
package path (not a bare "api.proto" that another library's descriptors could clash with) and
the _grpc module imports its messages as kvscope.sources.podresources.api_pb2.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "exporters"
PROTO = "kvscope/sources/podresources/api.proto"  # also its name in protobuf's descriptor pool


def main() -> int:
    try:
        from grpc_tools import protoc
    except ImportError:
        print("regen_podresources: grpcio-tools is not installed "
              "(python3 -m pip install grpcio-tools)", file=sys.stderr)
        return 2
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={ROOT}",
            f"--grpc_python_out={ROOT}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        print("regen_podresources: protoc failed", file=sys.stderr)
        return 1
    print(f"regenerated {ROOT / PROTO.replace('.proto', '_pb2.py')} and _pb2_grpc.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
