"""Regenerate the gRPC stubs in `autonad_agent.proto` from `protos/` (run by `make protos`).

    python -m autonad_agent.protogen [--out-dir DIR]

protoc names generated modules after the .proto path (`autonad/agent/v1/...`), which is not
an importable package here, so the imports are rewritten to `autonad_agent.proto`. The
output depends only on the .proto files and the grpcio-tools version; a test regenerates
into a temporary directory and fails if the committed stubs differ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The repository root, when running from a source checkout (editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "protos"
PROTO_FILES = ("autonad/agent/v1/latency_agent.proto",)
# Package the stubs are generated into, and the protoc-derived module path it replaces.
TARGET_PACKAGE = "autonad_agent.proto"
SOURCE_PACKAGE = "autonad.agent.v1"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "proto"


def generated_names(proto_file: str) -> list[str]:
    """File names protoc produces for one .proto (messages, type stubs, gRPC service)."""
    stem = Path(proto_file).stem
    return [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc for PROTO_FILES and write the import-fixed stubs into `out_dir`."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto_file in PROTO_FILES:
            args = [
                "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(proto_dir / proto_file),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {proto_file}")
            generated_dir = Path(tmp) / Path(proto_file).parent
            for name in generated_names(proto_file):
                text = (generated_dir / name).read_text()
                text = text.replace(f"from {SOURCE_PACKAGE} import", f"from {TARGET_PACKAGE} import")
                # The module name protobuf records on the message classes (not the service name).
                module = Path(name).name.split(".")[0]
                text = text.replace(f"'{SOURCE_PACKAGE}.{module}'", f"'{TARGET_PACKAGE}.{module}'")
                target = out_dir / name
                target.write_text(text)
                written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--proto-dir", type=Path, default=PROTO_DIR)
    args = parser.parse_args(argv)
    if not args.proto_dir.is_dir():
        print(f"protogen: no proto directory at {args.proto_dir} (run from a source checkout)", file=sys.stderr)
        return 2
    for path in generate(args.out_dir, args.proto_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
