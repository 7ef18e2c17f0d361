"""The one refusal vocabulary: each refusal has its own gRPC status, documented as the code maps it."""

from __future__ import annotations

import re
from pathlib import Path

from agent.audit import events
from agent.refusal import Refusal
from agent.server.status import status_code

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_each_refusal_has_its_own_status() -> None:
    codes = [status_code(refusal) for refusal in Refusal]
    assert len(set(codes)) == len(codes)


def test_the_api_docs_show_the_mapping_the_server_uses() -> None:
    text = (DOCS / "api.md").read_text()
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| `([A-Z_]+)` \|$", text, flags=re.MULTILINE))
    assert documented == {refusal.value: status_code(refusal).name for refusal in Refusal}


def test_the_policy_docs_name_each_rule_s_refusal_with_its_status() -> None:
    pairs = re.findall(r"\| `([a-z_]+)` \(([A-Z_]+)\) \|", (DOCS / "policy.md").read_text())
    assert pairs
    for value, code in pairs:
        assert status_code(Refusal(value)).name == code


def test_the_audit_vocabulary_lists_every_refusal_as_an_outcome() -> None:
    for refusal in Refusal:
        assert f"`{refusal.value}`" in events.OUTCOME.meaning
