"""`edge-agent keys generate|rotate`: create an Ed25519 key pair; hand the audit log over to a new identity key."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent.audit.errors import AuditLogNotFoundError
from agent.audit.log import AuditLog
from agent.audit.verify import Trust, verify_log
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import UsageError, add_config_arguments, check_identity_pin, resolve_config
from agent.config import AgentConfig, ConfigError, load_config
from agent.durable import fsync_directory, write_private
from agent.identity.agent_key import AgentKey, KeyFileError, generate_key_file, load_key_file, public_key_path
from agent.state_lock import lock_state_directory


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="manage Ed25519 keys", description="Manage Ed25519 keys.")
    keys = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    generate = keys.add_parser(
        "generate",
        help="create a new Ed25519 key pair",
        description="Create an Ed25519 private key (PEM, mode 0600) and its public key beside it (.pub). "
        "Used for the agent's identity key (identity.key_file).",
    )
    generate.add_argument("--out", type=Path, required=True, help="path of the private key to write")
    generate.add_argument("--force", action="store_true", help="overwrite an existing key (destroys it)")
    generate.set_defaults(handler=run_generate)

    pin = keys.add_parser(
        "pin",
        help="pin the identity key's fingerprint in agent.toml (run as root)",
        description="Write [identity] pinned_fingerprint for the key at identity.key_file into the config file, "
        "which lives outside the state directory: from then on the agent refuses to start with any other key "
        "and `audit verify` trusts only this one. Run it once after `keys generate`, and with --replace after "
        "`keys rotate`. Comments and layout of the file are kept.",
    )
    add_config_arguments(pin)
    pin.add_argument("--replace", action="store_true", help="replace a pin already there (after `keys rotate`)")
    pin.set_defaults(handler=run_pin)

    rotate = keys.add_parser(
        "rotate",
        help="replace the agent's identity key, recording the change in the audit log",
        description="Replace identity.key_file with a new key. The audit log gets an audit.key_rotated entry "
        "signed by the old key that names the new one, so `audit verify` accepts the change of signer. "
        "The agent must be stopped. Afterwards set [identity] pinned_fingerprint in agent.toml to the new "
        "fingerprint (the agent refuses to start until the pin and the key agree).",
    )
    add_config_arguments(rotate)
    rotate.add_argument("--reason", default=None, help="why, recorded in the audit entry (e.g. 'yearly rotation')")
    rotate.set_defaults(handler=run_rotate)


def run_generate(args: argparse.Namespace) -> int:
    out: Path = args.out
    # Checked first: the write goes through a temp file beside `out`, and its
    # OSError would name that temp file instead of the path the user gave.
    if out.is_dir():
        raise KeyFileError(f"{out}: is a directory; --out takes the path of the key file to create")
    try:
        key = generate_key_file(out, overwrite=args.force)
    except OSError as exc:
        raise KeyFileError(f"{out}: cannot write the key: {exc.strerror or exc}") from None
    print(f"private key: {args.out}")
    print(f"public key:  {public_key_path(args.out)}")
    print(f"fingerprint: {key.fingerprint}")
    print("pin it, as root: edge-agent keys pin --config <the agent.toml whose identity.key_file this is>")
    return ExitCode.SUCCESS


def run_pin(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if config.source is None:
        raise UsageError("keys pin needs the agent's config file: pass --config FILE (a development instance has none)")
    key = load_key_file(config.identity.key_file)
    pinned = config.identity.pinned_fingerprint
    if pinned == key.fingerprint:
        print(f"{config.source}: already pins {key.fingerprint}")
        return ExitCode.SUCCESS
    if pinned is not None and not args.replace:
        raise UsageError(
            f'{config.source}: [identity] pinned_fingerprint is "{pinned}", but {config.identity.key_file} is '
            f"{key.fingerprint}; pass --replace only if the key was rotated with `edge-agent keys rotate`"
        )
    _write_pin(config.source, key.fingerprint)
    print(f"{config.source}: [identity] pinned_fingerprint = \"{key.fingerprint}\"")
    return ExitCode.SUCCESS


def _write_pin(source: Path, fingerprint: str) -> None:
    """Sets the pin in [identity], keeping every other line, the file's mode and its owner.

    The file must still load and pin what was meant; otherwise it is put back as it was.
    """
    original = source.read_bytes()
    lines = original.decode("utf-8").splitlines(keepends=True)
    line = f'pinned_fingerprint = "{fingerprint}"\n'
    table, header = None, None
    for index, text in enumerate(lines):
        stripped = text.strip()
        if stripped.startswith("["):
            table = stripped
            header = index if table == "[identity]" else header
        elif table == "[identity]" and stripped.split("=", 1)[0].strip() == "pinned_fingerprint":
            lines[index] = line
            break
    else:
        if header is None:
            lines += ["\n" if lines and not lines[-1].endswith("\n") else "", "\n[identity]\n", line]
        else:
            lines.insert(header + 1, line)
    status = source.stat()
    _rewrite(source, "".join(lines).encode("utf-8"), status)
    try:
        loaded = load_config(source)
    except ConfigError:
        _rewrite(source, original, status)
        raise
    if loaded.identity.pinned_fingerprint != fingerprint:
        _rewrite(source, original, status)
        raise UsageError(f"{source}: could not set [identity] pinned_fingerprint; set it by hand: {line.strip()}")


def _rewrite(source: Path, data: bytes, status: os.stat_result) -> None:
    """Replaces the file atomically with `data`, with the mode and owner it had (`status`)."""
    write_private(source, data, mode=status.st_mode & 0o777)
    os.chown(source, status.st_uid, status.st_gid)


def run_rotate(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    key_file = config.identity.key_file
    # A daemon still running would go on signing with the old key after the hand-over.
    lock = lock_state_directory(config.state_dir, "keys rotate")
    try:
        old = load_key_file(key_file)
        # Rotating away from a key that is not the pinned one would launder a swapped key.
        check_identity_pin(config, old)
        new, seq = _rotate(config, old, args.reason)
    finally:
        lock.release()
    print(f"old fingerprint: {old.fingerprint}")
    print(f"new fingerprint: {new.fingerprint}")
    print(f"identity key:    {key_file} (public key {public_key_path(key_file)})")
    if seq is not None:
        print(f"recorded in the audit log {config.audit.directory} at seq {seq} (audit.key_rotated)")
    else:
        print("finished a rotation that was interrupted after the audit log recorded it")
    where = config.source or "agent.toml"
    print(f'next, as root: set pinned_fingerprint = "{new.fingerprint}" in [identity] of {where}, then start the agent')
    return ExitCode.SUCCESS


def _rotate(config: AgentConfig, old: AgentKey, reason: str | None) -> tuple[AgentKey, int | None]:
    """Writes the new key beside the old, records the hand-over, then puts the new key in place.

    Returns the new key and the seq of the audit entry (None when an interrupted
    rotation is finished). Order matters for a crash: the new key is on disk
    before the log names it, and the key file is replaced only after the log
    has recorded the change, so a rerun finds `<key>.new` and finishes.
    """
    key_file = config.identity.key_file
    staged = key_file.with_name(key_file.name + ".new")
    if staged.exists():
        pending = load_key_file(staged)
        if not _handed_over(config, old, pending):
            # Whoever can write the state directory can leave a key here and a log signed by it:
            # only a hand-over the current key signed may put a staged key in place.
            raise KeyFileError(
                f"{staged}: a staged key that the audit log {config.audit.directory} does not show the current "
                f"key ({old.fingerprint}) handing over to; keep it for investigation, move it away, then rotate again"
            )
        _install(staged, key_file)
        return pending, None
    try:
        new = generate_key_file(staged, overwrite=True)
    except OSError as exc:
        raise KeyFileError(f"{staged}: cannot write the new key: {exc.strerror or exc}") from None
    with AuditLog.open(config.audit.directory, old, checkpoint_every=config.audit.checkpoint_every) as log:
        record = log.rotate_key(new, reason=reason)
    _install(staged, key_file)
    return new, record.seq


def _handed_over(config: AgentConfig, old: AgentKey, pending: AgentKey) -> bool:
    """True when the log verifies from the current key and its last change of signer is to `pending`."""
    trust = Trust(frozenset({old.fingerprint}), (old.public_key, pending.public_key), "the current identity key")
    try:
        result = verify_log(config.audit.directory, trust)
    except AuditLogNotFoundError:
        return False
    last = result.key_changes[-1] if result.key_changes else None
    return result.ok and last is not None and (last.old, last.new) == (old.fingerprint, pending.fingerprint)


def _install(staged: Path, key_file: Path) -> None:
    # Each rename is atomic; a rerun after a crash between them finds the private key still staged.
    staged_public = public_key_path(staged)
    if staged_public.exists():
        os.replace(staged_public, public_key_path(key_file))
    os.replace(staged, key_file)
    fsync_directory(key_file.parent)
