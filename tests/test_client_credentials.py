"""The coordinator client checks its credential files before dialling."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_sponsor.coordinator.client import ClientCredentials, CredentialsError
from tests.conftest import Pki


def test_good_credentials_load(pki: Pki) -> None:
    credentials = pki.credentials()
    assert credentials.cert.startswith(b"-----BEGIN CERTIFICATE-----")


def test_a_key_that_does_not_match_the_certificate_names_both_files(pki: Pki) -> None:
    with pytest.raises(CredentialsError) as failure:
        ClientCredentials.from_files(pki.path("ca.crt"), pki.path("coordinator.crt"), pki.path("cn-only.key"))
    assert str(failure.value) == (
        f"{pki.path('cn-only.key')}: does not match the client certificate in {pki.path('coordinator.crt')}"
    )


@pytest.mark.parametrize("which", ["ca", "cert", "key"])
def test_a_file_that_is_not_pem_is_named(pki: Pki, tmp_path: Path, which: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM at all\n")
    paths = {"ca": pki.path("ca.crt"), "cert": pki.path("coordinator.crt"), "key": pki.path("coordinator.key")}
    paths[which] = garbage
    with pytest.raises(CredentialsError) as failure:
        ClientCredentials.from_files(paths["ca"], paths["cert"], paths["key"])
    message = str(failure.value)
    assert message.startswith(f"{garbage}: not a") and "PEM" in message


def test_a_certificate_given_as_the_key_is_named(pki: Pki) -> None:
    with pytest.raises(CredentialsError, match="not an unencrypted PEM private key") as failure:
        ClientCredentials.from_files(pki.path("ca.crt"), pki.path("coordinator.crt"), pki.path("coordinator.crt"))
    assert str(failure.value).startswith(str(pki.path("coordinator.crt")))
