"""Fixtures of the package tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from package_builders import new_key, store_at, trust_for

from agent.identity.agent_key import AgentKey
from agent.packages import PackageStore, TrustStore


@pytest.fixture(scope="session")
def publisher_key() -> AgentKey:
    return new_key()


@pytest.fixture(scope="session")
def reviewer_key() -> AgentKey:
    return new_key()


@pytest.fixture(scope="session")
def trust(publisher_key: AgentKey) -> TrustStore:
    return trust_for(publisher_key)


@pytest.fixture
def store(tmp_path: Path) -> PackageStore:
    return store_at(tmp_path)
