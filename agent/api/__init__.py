"""Generated protobuf and gRPC code for the public API (see protos/).

Do not edit files below edge_agent/: run `make protos`.
"""
