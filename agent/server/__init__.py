"""The gRPC side of the agent: services, interceptors, TLS and lifecycle."""
