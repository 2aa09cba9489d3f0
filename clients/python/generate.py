"""Generates the Python stubs in src/batchhistory from proto/.

They are committed, so that `pip install` needs no protoc; CI runs
`generate.py --check`, which fails if they differ from what proto/ makes,
or if the package's major version is not the proto package's (v1 → 1.x).
"""
import ast
import pathlib
import re
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
OUT = HERE / "src"
PACKAGE = pathlib.Path("batchhistory/v1")


def generate(out):
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
        str(PROTO_ROOT / PACKAGE / "batch_history.proto"),
    ])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    for package in (out / "batchhistory", out / PACKAGE):
        (package / "__init__.py").touch()


def main():
    if sys.argv[1:] != ["--check"]:
        generate(OUT)
        return
    with tempfile.TemporaryDirectory() as scratch:
        fresh = pathlib.Path(scratch)
        generate(fresh)
        stale = [str(path.relative_to(fresh)) for path in sorted(fresh.rglob("*.py*"))
                 if not (OUT / path.relative_to(fresh)).is_file()
                 or (OUT / path.relative_to(fresh)).read_bytes() != path.read_bytes()]
    if stale:
        sys.exit(f"stubs out of date with proto/: {', '.join(stale)}; run python generate.py")
    proto = (PROTO_ROOT / PACKAGE / "batch_history.proto").read_text()
    contract = re.search(r"^package batchhistory\.v(\d+);", proto, re.M).group(1)
    version = next(node.value.value for node in ast.parse(
        (OUT / "batch_history_client/__init__.py").read_text()).body
        if isinstance(node, ast.Assign)
        and getattr(node.targets[0], "id", None) == "__version__")
    if version.split(".")[0] != contract:
        sys.exit(f"batch_history_client {version} is not a version of contract v{contract}: "
                 f"its major version must be {contract}")
    print(f"stubs match proto/; client {version} is of contract v{contract}")


if __name__ == "__main__":
    main()
