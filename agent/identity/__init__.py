"""Keys and certificates: the agent's Ed25519 identity, TLS material, peer identity."""
