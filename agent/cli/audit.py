"""`edge-agent audit verify|show|report`: the compliance officer's tools.

Exit codes: 0 intact / done; 1 the log is broken (verify) or unreadable
(AuditDataError); 2 bad input (AuditInputError: no such directory, bad key
file, bad time) — see USAGE_ERRORS / FAILURE_ERRORS below for agent/cli/main.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.audit import events
from agent.audit.errors import AuditDataError, AuditError, AuditInputError, AuditKeyError
from agent.audit.keys import load_public_key
from agent.audit.query import AuditQuery, read_records, select
from agent.audit.record import AuditRecord
from agent.audit.report import ReportPeriod, render_html_report
from agent.audit.verify import Trust, VerificationResult, verify_log
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import add_config_arguments, resolve_config
from agent.identity.agent_key import fingerprint, public_key_path

# For agent/cli/main.py: input errors are exit 2, the rest of AuditError exit 1
# (list USAGE_ERRORS before FAILURE_ERRORS, as main() already does).
USAGE_ERRORS: tuple[type[Exception], ...] = (AuditInputError,)
FAILURE_ERRORS: tuple[type[Exception], ...] = (AuditError,)

# The column `audit show` gives who asked and about which dataset, in every kind.
_SHOW_HEADER_FIELDS = (*events.with_role(events.Role.COORDINATOR), *events.with_role(events.Role.DATASET))
_SHOW_HEADER_NAMES = frozenset(f.name for f in _SHOW_HEADER_FIELDS)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="verify, query and report on the tamper-evident audit log",
        description="Tools for compliance officers over the agent's audit log (docs/audit.md).",
    )
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    verify = commands.add_parser(
        "verify",
        help="check the hash chain, signatures and head record",
        description="Check that the audit log is intact: every entry chained to the one before, every checkpoint "
        "and the head record signed by a trusted key, no file missing, nothing cut off the end. "
        "Exit 0 only when intact; otherwise print where it breaks and exit 1.",
    )
    _add_location_arguments(verify)
    verify.set_defaults(handler=run_verify)

    show = commands.add_parser(
        "show",
        help="list entries, filtered",
        description="List audit entries as a table (or JSON lines), filtered. Does not verify: run `audit verify`.",
    )
    _add_location_arguments(show, keys=False)
    _add_time_arguments(show)
    show.add_argument("--coordinator", help="coordinator identity (caller / coordinator field)")
    show.add_argument("--dataset", help="dataset id")
    show.add_argument("--package", help="package digest (sha256:... or a prefix of the hex)")
    show.add_argument("--run", help="run id (a coordinator's training or study)")
    show.add_argument(
        "--kind",
        action="append",
        default=[],
        type=_kind,
        help="event kind, e.g. rpc.decision, or a family: task (repeatable); docs/audit.md lists them",
    )
    show.add_argument("--last", type=int, default=None, metavar="N", help="only the last N matching entries")
    show.add_argument("--json", action="store_true", help="one JSON object per line, exactly as stored")
    show.set_defaults(handler=run_show)

    report = commands.add_parser(
        "report",
        help="write a self-contained HTML report for a period",
        description="Write an HTML report (no scripts, no network): data use by coordinator, dataset and purpose, "
        "packages approved and rejected, denials, and the privacy budget spent per dataset over time. "
        "The log is verified first and the result shown in the report.",
    )
    _add_location_arguments(report)
    _add_time_arguments(report)
    report.add_argument("--html", type=Path, required=True, metavar="FILE", help="where to write the report")
    report.set_defaults(handler=run_report)


def _add_location_arguments(parser: argparse.ArgumentParser, keys: bool = True) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--dir", type=Path, default=None, help="audit directory (default: audit.directory of the config)"
    )
    if keys:
        parser.add_argument(
            "--public-key",
            type=Path,
            action="append",
            default=[],
            metavar="FILE",
            help="trusted Ed25519 public key (PEM or OpenSSH; repeatable), instead of the config's. "
            "Default: the key [identity] pinned_fingerprint names in agent.toml; without a pin, the .pub beside "
            "identity.key_file (else the private key's public half)",
        )


def _add_time_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=since_time, help="from this time (ISO 8601; a date means its start; UTC if no zone)"
    )
    parser.add_argument("--until", type=until_time, help="before this time (a date includes that whole day)")


def _kind(text: str) -> str:
    if text in events.KINDS or text.rstrip(".*") in events.FAMILIES:
        return text
    raise argparse.ArgumentTypeError(
        f"unknown event kind {text!r}; kinds: {', '.join(sorted(events.KINDS))}; "
        f"families: {', '.join(sorted(events.FAMILIES))}"
    )


def since_time(text: str) -> dt.datetime:
    return _parse_time(text, end_of_day=False)


def until_time(text: str) -> dt.datetime:
    return _parse_time(text, end_of_day=True)


def _parse_time(text: str, *, end_of_day: bool) -> dt.datetime:
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return moment + dt.timedelta(days=1) if end_of_day else moment
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------- resolution


def _directory(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    return resolve_config(args).audit.directory


def _trust(args: argparse.Namespace) -> Trust:
    """Whom the log must be signed by: --public-key, else the pin in agent.toml, else the key file beside the log."""
    if args.public_key:
        keys = [load_public_key(path) for path in args.public_key]
        given = ", ".join(f"{fingerprint(key)} ({path})" for key, path in zip(keys, args.public_key, strict=True))
        return Trust.of_keys(keys, f"the key given with --public-key: {given}")
    config = resolve_config(args)
    key_file = config.identity.key_file
    public = public_key_path(key_file)
    pinned = config.identity.pinned_fingerprint
    # The .pub, as before pinning; the private key's public half when the .pub is missing or (pinned)
    # not the pinned key. Either is only a key to check signatures with when a pin decides the trust.
    material = [load_public_key(public)] if public.exists() else []
    if key_file.exists() and (not material or (pinned is not None and fingerprint(material[0]) != pinned)):
        try:
            material.append(load_public_key(key_file))
        except AuditKeyError:
            if not material:
                raise
    if pinned is not None:
        if not material:
            raise AuditKeyError(
                f"the pinned key {pinned}: no public key at {public} or {key_file} to check it with; "
                "pass --public-key FILE"
            )
        return Trust(
            frozenset({pinned}),
            tuple(material),
            f"the pinned key {pinned} ([identity] pinned_fingerprint in {config.source})",
        )
    if not material:
        raise AuditKeyError(f"no agent key at {public} or {key_file}; pass --public-key FILE")
    where = public if public.exists() else key_file
    return Trust.of_keys(
        material[:1],
        f"the key in {where}, {fingerprint(material[0])} (NOT pinned: whoever can write the state directory can "
        "replace that file; set [identity] pinned_fingerprint in agent.toml, docs/audit.md)",
    )


# ---------------------------------------------------------------- commands


def run_verify(args: argparse.Namespace) -> int:
    directory = _directory(args)
    trust = _trust(args)
    result = verify_log(directory, trust)
    _print_verification(directory, result)
    print(f"verified against: {trust.described}")
    for change in result.key_changes:
        print(f"key rotated at seq {change.seq}: {change.old} -> {change.new} (signed by the old key)")
    return ExitCode.SUCCESS if result.ok else ExitCode.FAILURE


def _print_verification(directory: Path, result: VerificationResult) -> None:
    if result.ok:
        print(
            f"audit log {directory}: intact — {result.entries_checked} entries, last seq {result.last_seq}, "
            f"last signed checkpoint at seq {result.last_checkpoint_seq}"
        )
    else:
        print(f"audit log {directory}: NOT INTACT — {result.entries_checked} entries read")
        print(f"first break: {_safe(str(result.first_break))}")
        for problem in result.problems[1:]:
            print(f"problem: {_safe(str(problem))}")
    for notice in result.notices:
        print(f"notice: {_safe(str(notice))}")


def run_show(args: argparse.Namespace) -> int:
    query = AuditQuery(
        since=args.since,
        until=args.until,
        coordinator=args.coordinator,
        dataset=args.dataset,
        package=args.package,
        run=args.run,
        kinds=tuple(args.kind),
    )
    records: Iterable[AuditRecord] = select(read_records(_directory(args)), query)
    if args.last is not None:
        records = deque(records, maxlen=max(args.last, 0))
    if args.json:
        for record in records:
            print(json.dumps(record.as_dict(), ensure_ascii=True))
        return ExitCode.SUCCESS
    print(f"{'SEQ':>7}  {'TIME (UTC)':<19}  {'KIND':<28}  {'COORDINATOR / DATASET':<40}  DETAILS")
    for record in records:
        fields = events.normalised(record)
        who = " / ".join(str(fields[f.name]) for f in _SHOW_HEADER_FIELDS if fields.get(f.name) is not None)
        details = " ".join(
            f"{name}={_compact(value)}"
            for name, value in fields.items()
            if name not in _SHOW_HEADER_NAMES and value is not None
        )
        time = record.time[:19].replace("T", " ")
        print(f"{record.seq:>7}  {time:<19}  {_safe(record.kind):<28}  {_safe(who):<40}  {_safe(details)}")
    return ExitCode.SUCCESS


def run_report(args: argparse.Namespace) -> int:
    directory = _directory(args)
    verification: VerificationResult | None
    try:
        verification = verify_log(directory, _trust(args))
    except AuditKeyError as exc:
        if args.public_key:
            raise
        print(f"edge-agent: warning: the report will say the log was not verified: {exc}", file=sys.stderr)
        verification = None
    records = list(read_records(directory))
    agent_id: str | None = None
    if args.dir is None:
        agent_id = resolve_config(args).agent_id
    html = render_html_report(
        records, ReportPeriod(args.since, args.until), agent_id=agent_id, verification=verification
    )
    try:
        args.html.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise AuditDataError(f"{args.html}: cannot write the report: {exc.strerror}") from None
    status = "not verified" if verification is None else ("intact" if verification.ok else "NOT INTACT")
    print(f"report written to {args.html} (log {status})")
    return ExitCode.SUCCESS if verification is None or verification.ok else ExitCode.FAILURE


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _safe(text: str) -> str:
    """No terminal control sequences from coordinator-supplied strings reach the screen."""
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}" for ch in text
    )
