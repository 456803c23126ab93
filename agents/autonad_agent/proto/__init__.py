"""Generated gRPC stubs for `autonad.agent.v1` (do not edit; `make protos` regenerates them)."""
