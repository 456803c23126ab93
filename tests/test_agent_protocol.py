"""The committed gRPC stubs match the .proto, and the agent never needs torch."""

from __future__ import annotations

import importlib.metadata
import re
import textwrap
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from autonad_agent import protogen
from autonad_agent.proto import latency_agent_pb2

COMMITTED = Path(protogen.__file__).parent / "proto"


def _clear_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)


def test_committed_descriptor_matches_the_proto(tmp_path: Path):
    """Version-independent drift check: the schema compiled now equals the committed one."""
    from grpc_tools import protoc

    descriptor_set = tmp_path / "set.pb"
    well_known = Path(protoc.__file__).parent / "_proto"
    assert protoc.main([
        "protoc", f"-I{protogen.PROTO_DIR}", f"-I{well_known}", f"--descriptor_set_out={descriptor_set}",
        str(protogen.PROTO_DIR / protogen.PROTO_FILES[0]),
    ]) == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    _clear_json_names(compiled.message_type)  # protoc adds them; the Python generator does not
    committed = descriptor_pb2.FileDescriptorProto.FromString(latency_agent_pb2.DESCRIPTOR.serialized_pb)
    assert compiled == committed, "protos/ changed: run `make protos` and commit the stubs"


def test_committed_stubs_are_exactly_what_protogen_writes(tmp_path: Path):
    committed_grpc = (COMMITTED / "latency_agent_pb2_grpc.py").read_text()
    generated_with = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", committed_grpc).group(1)
    installed = importlib.metadata.version("grpcio-tools")
    if installed != generated_with:
        pytest.skip(f"stubs were generated with grpcio-tools {generated_with}, {installed} is installed")
    written = protogen.generate(tmp_path)
    assert written
    for path in written:
        assert path.read_text() == (COMMITTED / path.name).read_text(), (
            f"{path.name} drifted from protos/: run `make protos` and commit the stubs"
        )


_IMPORT_EVERYTHING_WITHOUT_TORCH = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import autonad_agent
    # Optional GPU runtimes may be absent here; only torch counts as a failure.
    OPTIONAL = ("tensorrt", "pycuda", "cuda")
    imported, skipped = [], []
    names = ["autonad_agent"] + [m.name for m in pkgutil.walk_packages(autonad_agent.__path__, "autonad_agent.")]
    names += ["autonad_edge.latency", "autonad_edge.latency.client", "autonad_edge.latency.pool",
              "autonad_edge.latency.table", "autonad_edge.latency.targets", "autonad_edge.latency.fingerprint",
              "autonad_edge.cli.latency"]
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except ImportError as exc:
            if "torch is blocked" in str(exc) or not any(o in str(exc) for o in OPTIONAL + (name,)):
                raise
            skipped.append(name)
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
    print("imported", len(imported), "skipped", skipped)
    """
)


def test_every_agent_module_imports_without_torch(run_without_torch):
    result = run_without_torch(_IMPORT_EVERYTHING_WITHOUT_TORCH)
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout
