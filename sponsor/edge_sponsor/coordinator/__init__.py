"""The coordinator side: a client for agents (and later the federated training loop)."""
