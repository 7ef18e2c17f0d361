"""atheris harness: the package verifier on arbitrary bytes.

Every input must end in a verified package or a PackageRejected (a rejection
code and a message); anything else is a crash. Seeded with a valid signed
package, which the fuzzer mutates.

    python fuzz/package_verifier.py -runs=3000          # what CI runs
    python fuzz/package_verifier.py -max_total_time=600 # make fuzz
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["agent"]):
    from agent.identity.agent_key import generate_key_file
    from agent.packages import TrustStore
    from agent.packages.errors import PackageRejected
    from agent.packages.limits import PackageLimits
    from agent.packages.trust import TrustedKey
    from agent.packages.verification import verify_package
    from edge_sponsor.publisher.packaging import FeatureColumn, build_package, zoo_graphs, zoo_manifest_fields
    from edge_sponsor.publisher.zoo.logistic import build_logistic_regression

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def seed_package() -> tuple[bytes, TrustStore]:
    with tempfile.TemporaryDirectory() as scratch:
        key = generate_key_file(Path(scratch) / "publisher.key")
    model = build_logistic_regression(2)
    features = [FeatureColumn("age", "float64", "standardise", 60.0, 10.0), FeatureColumn("bmi")]
    fields = zoo_manifest_fields(
        model, name="fuzz/model", version="1.0.0", publisher="fuzz", features=features, label_columns=["outcome"]
    )
    archive = build_package(fields, zoo_graphs(model, inference_seed=0), signers=[key])
    return archive, TrustStore([TrustedKey.create(key.public_key, "Fuzz Pharma")])


SEED, TRUST = seed_package()
LIMITS = PackageLimits()


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(PackageRejected):
        verify_package(data, TRUST, LIMITS, NOW)


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-package-"))
    (corpus / "seed.zip").write_bytes(SEED)
    atheris.Setup([*sys.argv, str(corpus)], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
