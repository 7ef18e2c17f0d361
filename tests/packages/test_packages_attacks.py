"""Every attack of issue 3 is refused with its own code and leaves nothing in the store."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from package_builders import (
    MANIFEST,
    NOW,
    NUM_FEATURES,
    SIGNATURES,
    assert_store_empty,
    canonical_rezip,
    good_package,
    manifest_and_graphs,
    members_of,
    new_key,
    raw_zip,
    rezip,
    trust_for,
    with_grad,
)

from agent.identity.agent_key import AgentKey
from agent.packages import (
    PackageLimits,
    PackageRejected,
    PackageStore,
    PackageStoreError,
    RejectionCode,
    TrustStore,
    verify_package,
)
from agent.packages.canonical import canonical_json
from agent.packages.envelope import parse_envelope
from edge_sponsor.publisher.packaging import assemble_package, complete_manifest
from edge_sponsor.publisher.zoo import build_linear_regression
from edge_sponsor.publisher.zoo.graph import FLOAT, GraphBuilder, linear_score

F = NUM_FEATURES


def logistic_like_grad(
    extra: Callable[[GraphBuilder, str], str] | None = None, *, grad_w_shape: int = F, opset: int = 17
) -> onnx.ModelProto:
    """A logistic-regression-shaped grad graph; ``extra`` may add nodes feeding ``grad_w``."""
    g = GraphBuilder("hostile", "test graph")
    w = g.add_input("w", FLOAT, [F])
    b = g.add_input("b", FLOAT, [])
    x = g.add_input("x", FLOAT, [F])
    y = g.add_input("y", FLOAT, [])
    dz = g.op("Sub", g.op("Sigmoid", linear_score(g, x, w, b)), y)
    grad_w = g.op("Mul", dz, x)
    if extra is not None:
        grad_w = extra(g, grad_w)
    if grad_w_shape != F:  # append the bias gradient: shape [F + 1]
        grad_w = g.op("Concat", grad_w, g.op("Unsqueeze", dz, g.int64s([0])), axis=0)
    g.add_output(grad_w, "grad_w", FLOAT, [grad_w_shape])
    g.add_output(dz, "grad_b", FLOAT, [])
    g.add_output(g.op("Mul", dz, dz), "loss", FLOAT, [])
    model = g.to_model()
    if opset != 17:
        model.opset_import[0].version = opset
    return model


def with_random_normal(g: GraphBuilder, value: str) -> str:
    return g.op("Add", value, g.op("RandomNormal", shape=[F], dtype=FLOAT))


def with_data_dependent_gather(g: GraphBuilder, value: str) -> str:
    """Fails exactly when the row's first feature exceeds 50: an index out of range (a membership oracle)."""
    first = g.op("Gather", "x", g.int64s([0]))
    flag = g.op("Cast", g.op("Greater", first, g.constant([50.0])), to=TensorProto.INT64)
    index = g.op("Mul", flag, g.int64s([997]))
    picked = g.op("Gather", value, index)
    return g.op("Add", value, g.op("Mul", picked, g.constant([0.0])))


def with_data_sized_range(g: GraphBuilder, value: str) -> str:
    """Runs long exactly when the row's first feature is large: a timing channel."""
    first = g.op("Squeeze", g.op("Gather", "x", g.int64s([0])), g.int64s([0]))
    length = g.op("Mul", first, g.constant(2e6))
    steps = g.op("Range", g.constant(0.0), length, g.constant(1.0))
    total = g.op("ReduceSum", steps, keepdims=1)
    return g.op("Add", value, g.op("Mul", total, g.constant([0.0])))


def with_integer_division(g: GraphBuilder, value: str) -> str:
    first = g.op("Cast", g.op("Gather", "x", g.int64s([0])), to=TensorProto.INT64)
    quotient = g.op("Div", g.int64s([1]), first)
    return g.op("Add", value, g.op("Cast", g.op("Mul", quotient, g.int64s([0])), to=FLOAT))


def with_loop(g: GraphBuilder, value: str) -> str:
    body = helper.make_graph(
        [helper.make_node("Identity", ["v_in"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", FLOAT, [F]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", FLOAT, [F]),
        ],
    )
    trips = g.constant(3, dtype=np.int64)
    return g.op("Loop", trips, "", value, body=body)


def custom_domain_grad(import_domain: bool) -> onnx.ModelProto:
    model = logistic_like_grad()
    node = helper.make_node("Exfiltrate", ["x"], ["leak"], domain="com.evil")
    model.graph.node.append(node)
    if import_domain:
        model.opset_import.append(helper.make_opsetid("com.evil", 1))
    return model


def external_data_grad(in_constant: bool) -> onnx.ModelProto:
    model = logistic_like_grad()
    tensor = numpy_helper.from_array(np.zeros(F, "float32"), "secret")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/shadow"
    if in_constant:
        model.graph.node.append(helper.make_node("Constant", [], ["secret_out"], value=tensor))
    else:
        model.graph.initializer.append(tensor)
    return model


def dynamic_x_grad() -> onnx.ModelProto:
    model = logistic_like_grad()
    model.graph.input[2].type.tensor_type.shape.dim[0].dim_param = "F"
    return model


@dataclass
class Attack:
    build: Callable[[AgentKey], bytes]
    code: RejectionCode
    trust: Callable[[AgentKey], TrustStore] = field(default=trust_for)
    limits: PackageLimits = field(default_factory=PackageLimits)


def _edit_manifest_after_signing(key: AgentKey, *, also_payload: bool) -> bytes:
    archive = good_package(key)
    members = members_of(archive)
    manifest = json.loads(members[MANIFEST])
    manifest["hyperparameters"]["noise_multiplier"]["min"] = 0.0001
    edited = canonical_json(manifest)
    replace = {MANIFEST: edited}
    if also_payload:
        envelope = parse_envelope(members[SIGNATURES])
        forged = type(envelope)(envelope.payload_type, edited, envelope.signatures)
        replace[SIGNATURES] = forged.to_bytes()
    return canonical_rezip(archive, replace)


def _swap_graph(key: AgentKey) -> bytes:
    linear = build_linear_regression(F)  # same interface as logistic: w[F], b, x[F], y
    return canonical_rezip(good_package(key), {"grad.onnx": linear.grad_graph.SerializeToString()})


def _unix_entry(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (kind | 0o777) << 16
    return info


def _bomb(key: AgentKey) -> bytes:
    members = members_of(good_package(key))
    zero_bytes = b"\0" * (4 * 1024 * 1024)
    entries = [(name, data) for name, data in members.items() if name != "grad.onnx"]
    return raw_zip([*entries, ("grad.onnx", zero_bytes)], compression=zipfile.ZIP_DEFLATED)


def _deflated(key: AgentKey) -> bytes:
    """Deflated members within every size limit: refused all the same (a bomb whose headers
    understate its sizes is never decompressed)."""
    return raw_zip(list(members_of(good_package(key)).items()), compression=zipfile.ZIP_DEFLATED)


def _duplicate(key: AgentKey) -> bytes:
    with pytest.warns(UserWarning, match="Duplicate name"):
        return rezip(good_package(key), extra=[(MANIFEST, b"{}")])


def _version(key: AgentKey, version: str) -> bytes:
    return good_package(key, version=version)


def _schema_error(key: AgentKey) -> bytes:
    manifest, graphs = manifest_and_graphs()
    del manifest["inputs"]["label"]["column"]
    return assemble_package(manifest, graphs, [key])


def _undeclared_graph(key: AgentKey) -> bytes:
    manifest, graphs = manifest_and_graphs(inference=False)
    archive = assemble_package(manifest, graphs, [key])
    return canonical_rezip(archive, {"model.onnx": manifest_and_graphs()[1]["model"]})


ATTACKS: dict[str, Attack] = {
    "unsigned": Attack(lambda key: good_package(None), RejectionCode.UNSIGNED),
    "unknown key": Attack(lambda key: good_package(new_key()), RejectionCode.UNKNOWN_KEY),
    "expired key": Attack(
        good_package, RejectionCode.KEY_EXPIRED, trust=lambda key: trust_for(key, not_after=NOW - timedelta(days=1))
    ),
    "revoked key": Attack(good_package, RejectionCode.KEY_REVOKED, trust=lambda key: trust_for(key, revoked=True)),
    "manifest edited after signing": Attack(
        lambda key: _edit_manifest_after_signing(key, also_payload=False), RejectionCode.MANIFEST_MISMATCH
    ),
    "manifest and payload edited after signing": Attack(
        lambda key: _edit_manifest_after_signing(key, also_payload=True), RejectionCode.SIGNATURE_INVALID
    ),
    "graph file swapped": Attack(_swap_graph, RejectionCode.GRAPH_DIGEST_MISMATCH),
    "undeclared graph file": Attack(_undeclared_graph, RejectionCode.UNEXPECTED_MEMBER),
    "extra archive member": Attack(
        lambda key: rezip(good_package(key), extra=[("run.py", b"import os")]), RejectionCode.UNEXPECTED_MEMBER
    ),
    "../ path": Attack(
        lambda key: rezip(good_package(key), extra=[("../../etc/cron.d/x", b"x")]), RejectionCode.UNSAFE_PATH
    ),
    "absolute path": Attack(
        lambda key: rezip(good_package(key), extra=[("/etc/passwd", b"x")]), RejectionCode.UNSAFE_PATH
    ),
    "backslash path": Attack(
        lambda key: rezip(good_package(key), extra=[("..\\evil", b"x")]), RejectionCode.UNSAFE_PATH
    ),
    "symlink member": Attack(
        lambda key: raw_zip(
            [(n, d) for n, d in members_of(good_package(key)).items() if n != "eval.onnx"]
            + [(_unix_entry("eval.onnx", stat.S_IFLNK), b"/etc/shadow")]
        ),
        RejectionCode.LINK_MEMBER,
    ),
    "device member": Attack(
        lambda key: raw_zip(
            [(n, d) for n, d in members_of(good_package(key)).items() if n != "model.onnx"]
            + [(_unix_entry("model.onnx", stat.S_IFCHR), b"")]
        ),
        RejectionCode.SPECIAL_MEMBER,
    ),
    "duplicate member": Attack(_duplicate, RejectionCode.DUPLICATE_MEMBER),
    "archive bomb (total size)": Attack(
        _bomb, RejectionCode.ARCHIVE_BOMB, limits=PackageLimits(max_total_uncompressed_bytes=2 * 1024 * 1024)
    ),
    "archive bomb (ratio)": Attack(_bomb, RejectionCode.ARCHIVE_BOMB),
    "compressed members": Attack(_deflated, RejectionCode.UNSUPPORTED_COMPRESSION),
    "oversized archive": Attack(
        good_package, RejectionCode.ARCHIVE_TOO_LARGE, limits=PackageLimits(max_archive_bytes=4096)
    ),
    "not a zip": Attack(lambda key: b"MZ\x90\x00" + b"\0" * 100, RejectionCode.ARCHIVE_MALFORMED),
    "trailing data": Attack(lambda key: good_package(key) + b"trailing bytes", RejectionCode.ARCHIVE_NOT_CANONICAL),
    "disallowed operator": Attack(
        lambda key: with_grad(key, logistic_like_grad(with_random_normal)), RejectionCode.DISALLOWED_OPERATOR
    ),
    "custom domain (imported)": Attack(
        lambda key: with_grad(key, custom_domain_grad(True)), RejectionCode.CUSTOM_DOMAIN
    ),
    "custom domain (node only)": Attack(
        lambda key: with_grad(key, custom_domain_grad(False)), RejectionCode.CUSTOM_DOMAIN
    ),
    "control flow": Attack(lambda key: with_grad(key, logistic_like_grad(with_loop)), RejectionCode.CONTROL_FLOW),
    "gather index computed from a row": Attack(
        lambda key: with_grad(key, logistic_like_grad(with_data_dependent_gather)), RejectionCode.DATA_DEPENDENT_INDEX
    ),
    "tensor sized by a row (Range)": Attack(
        lambda key: with_grad(key, logistic_like_grad(with_data_sized_range)), RejectionCode.DYNAMIC_SHAPE
    ),
    "integer division by a row": Attack(
        lambda key: with_grad(key, logistic_like_grad(with_integer_division)), RejectionCode.DATA_DEPENDENT_INDEX
    ),
    "external data (initializer)": Attack(
        lambda key: with_grad(key, external_data_grad(False)), RejectionCode.EXTERNAL_DATA
    ),
    "external data (constant)": Attack(
        lambda key: with_grad(key, external_data_grad(True)), RejectionCode.EXTERNAL_DATA
    ),
    "gradient shape F+1": Attack(
        lambda key: with_grad(key, logistic_like_grad(grad_w_shape=F + 1)), RejectionCode.GRADIENT_SHAPE_MISMATCH
    ),
    "dynamic input dimension": Attack(
        lambda key: with_grad(key, dynamic_x_grad()), RejectionCode.GRAPH_INTERFACE_MISMATCH
    ),
    "opset out of range": Attack(
        lambda key: with_grad(key, logistic_like_grad(opset=11)), RejectionCode.OPSET_UNSUPPORTED
    ),
    "too many nodes": Attack(good_package, RejectionCode.ONNX_TOO_LARGE, limits=PackageLimits(max_nodes=10)),
    "manifest schema": Attack(_schema_error, RejectionCode.MANIFEST_INVALID),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_refused_and_leaves_nothing(name: str, publisher_key: AgentKey, store: PackageStore) -> None:
    attack = ATTACKS[name]
    archive = attack.build(publisher_key)
    with pytest.raises(PackageRejected) as refused:
        store.add(archive, attack.trust(publisher_key), attack.limits, NOW, require_approval=True)
    assert refused.value.code is attack.code, refused.value
    assert "/tmp" not in refused.value.message and str(store.root) not in refused.value.message
    assert_store_empty(store)


def test_schema_errors_name_the_field(publisher_key: AgentKey, trust: TrustStore, store: PackageStore) -> None:
    with pytest.raises(PackageRejected) as refused:
        store.add(_schema_error(publisher_key), trust, PackageLimits(), NOW, require_approval=True)
    assert "inputs.label.column" in refused.value.message


def test_lower_version_than_accepted(publisher_key: AgentKey, trust: TrustStore, store: PackageStore) -> None:
    accepted = store.add(_version(publisher_key, "1.4.0"), trust, PackageLimits(), NOW, require_approval=True)
    with pytest.raises(PackageRejected) as refused:
        store.add(_version(publisher_key, "1.3.9"), trust, PackageLimits(), NOW, require_approval=True)
    assert refused.value.code is RejectionCode.ROLLBACK
    assert [p.digest for p in store.list()] == [accepted.digest]
    assert len(list((store.root / "blobs" / "sha256").iterdir())) == 1
    assert list((store.root / "staging").iterdir()) == []


def test_truncated_and_oversized_uploads(publisher_key: AgentKey, trust: TrustStore, store: PackageStore) -> None:
    archive = good_package(publisher_key)
    limits = PackageLimits()
    digest = "sha256:" + hashlib.sha256(archive).hexdigest()

    staged = store.begin_upload(len(archive), digest, limits)
    staged.write(archive[:-10])
    with pytest.raises(PackageRejected) as truncated:
        store.commit(staged, trust, limits, NOW, require_approval=True)
    assert truncated.value.code is RejectionCode.UPLOAD_TRUNCATED
    assert_store_empty(store)

    with pytest.raises(PackageRejected) as oversized:
        store.begin_upload(limits.max_archive_bytes + 1, None, limits)
    assert oversized.value.code is RejectionCode.ARCHIVE_TOO_LARGE

    staged = store.begin_upload(len(archive) - 1, None, limits)
    with pytest.raises(PackageRejected) as beyond:
        for start in range(0, len(archive), 1000):
            staged.write(archive[start : start + 1000])
    assert beyond.value.code is RejectionCode.UPLOAD_EXCEEDS_DECLARED_SIZE
    with pytest.raises(PackageStoreError, match="already finished or aborted"):
        staged.write(b"more")
    assert_store_empty(store)

    with store.begin_upload(len(archive), "sha256:" + "0" * 64, limits) as staged:
        staged.write(archive)
        with pytest.raises(PackageRejected) as wrong:
            store.commit(staged, trust, limits, NOW, require_approval=True)
    assert wrong.value.code is RejectionCode.UPLOAD_DIGEST_MISMATCH
    assert_store_empty(store)

    with store.begin_upload(len(archive), digest, limits) as staged:
        for start in range(0, len(archive), 777):
            staged.write(archive[start : start + 777])
        stored = store.commit(staged, trust, limits, NOW, require_approval=True)
    assert stored.digest == digest
    assert list((store.root / "staging").iterdir()) == []


def test_unchanged_helpers_are_valid(publisher_key: AgentKey, trust: TrustStore) -> None:
    """The hostile graphs differ from a valid one only in the attack itself."""
    verify_package(with_grad(publisher_key, logistic_like_grad()), trust, PackageLimits(), NOW)
    manifest, graphs = manifest_and_graphs()
    assert complete_manifest(manifest, graphs) == manifest
