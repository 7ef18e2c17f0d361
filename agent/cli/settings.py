"""Which configuration a command runs with: a file, or the development defaults."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent.config import AgentConfig, development_config, load_config
from agent.config.development import DEFAULT_STATE_DIR
from agent.identity.agent_key import AgentKey, load_key_file, load_or_generate_key_file

CONFIG_ENV = "EDGE_AGENT_CONFIG"


class UsageError(Exception):
    """The command line is inconsistent; reported with exit code 2."""


class IdentityMismatchError(Exception):
    """The identity key is not the one agent.toml pins: replaced, or the pin not updated after a rotation."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"agent.toml to use (default: ${CONFIG_ENV}; without either, the development defaults)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"state directory of a development instance (default: {DEFAULT_STATE_DIR}); "
        "production takes it from the config",
    )


def resolve_config(args: argparse.Namespace, listen: str | None = None) -> AgentConfig:
    config_path: Path | None = args.config
    if config_path is None and os.environ.get(CONFIG_ENV):
        config_path = Path(os.environ[CONFIG_ENV])
    if config_path is not None:
        if args.state_dir is not None:
            raise UsageError("--state-dir is for development instances; a config file sets agent.state_dir")
        return load_config(config_path)
    config = development_config(
        state_dir=args.state_dir or DEFAULT_STATE_DIR,
        **({"listen": listen} if listen else {}),
    )
    return config


def identity_key(config: AgentConfig) -> tuple[AgentKey, bool]:
    """The agent's signing key and whether it was created just now.

    A development instance creates its key on first use; production never
    does: a missing key is an installation step that was skipped, not
    something to paper over.
    """
    if config.development:
        return load_or_generate_key_file(config.identity.key_file)
    return load_key_file(config.identity.key_file), False


def check_identity_pin(config: AgentConfig, key: AgentKey) -> None:
    """Raises IdentityMismatchError unless `key` is the key [identity] pinned_fingerprint names (if it names one).

    The pin lives in agent.toml, outside the state directory: whoever can write
    the state directory can replace the key file, but not the pin.
    """
    pinned = config.identity.pinned_fingerprint
    if pinned is None or key.fingerprint == pinned:
        return
    raise IdentityMismatchError(
        f"{config.identity.key_file}: the identity key's fingerprint is {key.fingerprint}, but {config.source} "
        f'pins [identity] pinned_fingerprint = "{pinned}": the key file was replaced, or the pin was not '
        'updated after `edge-agent keys rotate` (docs/operations.md, "Rotating the identity key")'
    )
