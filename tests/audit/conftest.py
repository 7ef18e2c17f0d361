"""Registers the audit fixtures; the helpers live in audit_fixtures (a unique module name)."""

from audit_fixtures import agent_key, log_dir, other_key

__all__ = ["agent_key", "log_dir", "other_key"]
