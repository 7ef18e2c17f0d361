"""Logs (and later metrics) that operators watch the agent with."""
