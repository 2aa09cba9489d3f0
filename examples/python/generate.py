"""Generates the Python stubs from proto/ (they are not committed)."""
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"


def generate():
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
        f"--python_out={HERE}", f"--grpc_python_out={HERE}",
        str(PROTO_ROOT / "batchhistory/v1/batch_history.proto"),
    ])
    if code != 0:
        sys.exit(f"protoc failed with {code}")


if __name__ == "__main__":
    generate()
