"""Building and signing Edge Agent packages (publisher side).

* :func:`zoo_manifest_fields` + :func:`build_package`: a package from a zoo model and
  the dataset columns it reads;
* :func:`build_package` alone: from any single-example gradient ONNX file (for example
  exported from PyTorch) and the manifest fields written by hand;
* :func:`sign_package`: add an Ed25519 signature to the envelope (the manifest and
  graphs are untouched; signing twice with one key replaces the earlier signature).

What a package says about itself, without trusting it, is
:func:`agent.packages.inspection.inspect_package` (the hospital's `edge-agent package
inspect` reads it too).

``build_package`` runs the same manifest and ONNX validation as the agent, so a
package that builds here is refused by an agent only for reasons of trust or policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from agent.identity.agent_key import AgentKey
from agent.packages.archive import MANIFEST, SIGNATURES, read_archive, write_archive
from agent.packages.canonical import CanonicalJsonError, canonical_json, parse_strict_json
from agent.packages.envelope import parse_envelope, unsigned_envelope
from agent.packages.errors import PackageInputError, PackageRejected, RejectionCode
from agent.packages.limits import PackageLimits
from agent.packages.manifest import (
    BATCH_DIM,
    FORMAT_VERSION,
    GRAPH_FILES,
    LabelKind,
    parse_manifest,
)
from agent.packages.onnx_validation import validate_graphs
from agent.tasks.kinds import registry
from edge_sponsor.publisher.zoo import ZooModel

DEFAULT_HYPERPARAMETERS: Mapping[str, Mapping[str, float]] = {
    "clip_norm": {"min": 0.001, "max": 1000.0},
    "noise_multiplier": {"min": 0.3, "max": 100.0},
    "sampling_rate": {"min": 1e-6, "max": 1.0},
    "local_steps": {"min": 1, "max": 1000},
    "learning_rate": {"min": 1e-6, "max": 10.0},
}
ALL_TASK_KINDS = registry.graph_kinds()


@dataclass(frozen=True)
class FeatureColumn:
    """A dataset column feeding ``x``: ``preprocessing`` is ``none``, ``standardise`` or ``one_hot``."""

    column: str
    dtype: str = "float64"
    preprocessing: str = "none"
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str | int | bool, ...] = ()
    impute: float | None = None
    """A missing value's replacement (the column's own units); None: a row missing it is dropped."""
    indicator: bool = False
    """One more slot of ``x``, 1.0 where the value was missing: with ``impute`` in a numeric
    column; alone in a one-hot column, whose missing value is then a category of its own."""

    def __post_init__(self) -> None:
        one_hot = self.preprocessing == "one_hot"
        if self.indicator and self.impute is None and not one_hot:
            raise ValueError(f"{self.column}: a missing indicator needs an imputed value")
        if self.impute is not None and (one_hot or self.dtype in ("string", "bool")):
            raise ValueError(
                f"{self.column}: missing values can be imputed in numeric columns only "
                "(a one-hot column takes an indicator alone)"
            )

    @property
    def width(self) -> int:
        return (len(self.categories) if self.preprocessing == "one_hot" else 1) + (1 if self.indicator else 0)

    def to_json(self) -> dict[str, Any]:
        pre: dict[str, Any] = {"kind": self.preprocessing}
        if self.preprocessing == "standardise":
            pre.update(mean=float(self.mean), std=float(self.std))
        elif self.preprocessing == "one_hot":
            pre["categories"] = list(self.categories)
        result = {"column": self.column, "dtype": self.dtype, "preprocessing": pre}
        if self.impute is not None:
            result["missing"] = {"value": float(self.impute), "indicator": self.indicator}
        elif self.indicator:
            result["missing"] = {"indicator": True}
        return result


def feature_width(features: Sequence[FeatureColumn]) -> int:
    return sum(feature.width for feature in features)


def _model_bytes(model: onnx.ModelProto) -> bytes:
    return bytes(model.SerializeToString())


def inference_outputs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """``graphs.model.outputs`` entries read from an inference model's declared outputs."""
    outputs: list[dict[str, Any]] = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        dtype = "int64" if tensor.elem_type == onnx.TensorProto.INT64 else "float32"
        dims: list[Any] = [BATCH_DIM]
        dims += [d.dim_value for d in list(tensor.shape.dim)[1:]]
        outputs.append({"name": value.name, "dtype": dtype, "shape": dims})
    return outputs


def zoo_manifest_fields(
    model: ZooModel,
    *,
    name: str,
    version: str,
    publisher: str,
    features: Sequence[FeatureColumn],
    label_columns: Sequence[str],
    description: str | None = None,
    task_kinds: Sequence[str] = ALL_TASK_KINDS,
    hyperparameters: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Manifest fields (everything but ``graphs``) for a zoo model.

    ``label_columns`` is one column, or ``(time, event)`` for the survival model.
    """
    if feature_width(features) != model.num_features:
        raise PackageInputError(
            f"the features give {feature_width(features)} graph inputs, the model was built for {model.num_features}"
        )
    spec = model.label_spec
    label: dict[str, Any] = {"dtype": spec.dtype, "shape": list(spec.shape)}
    if spec.shape == (2,):
        if len(label_columns) != 2:
            raise PackageInputError(f"{model.name} needs two label columns: time,event")
        label.update(kind=LabelKind.SURVIVAL.value, time_column=label_columns[0], event_column=label_columns[1])
    else:
        if len(label_columns) != 1:
            raise PackageInputError(f"{model.name} needs exactly one label column")
        label["column"] = label_columns[0]
        if spec.dtype == "int64":
            label.update(kind=LabelKind.CLASS_INDEX.value, num_classes=model.parameters[-1].shape[-1])
        else:
            label["kind"] = (LabelKind.BINARY if "logistic" in model.name else LabelKind.REGRESSION).value
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "publisher": publisher,
        "description": description if description is not None else f"{model.name} (edge-agent model zoo)",
        "task_kinds": list(task_kinds),
        "parameters": [{"name": p.name, "dtype": p.dtype, "shape": list(p.shape)} for p in model.parameters],
        "inputs": {"features": [f.to_json() for f in features], "label": label},
        "metrics": [
            {"name": m, "range": [lo, hi]}
            | ({"group": model.eval_metric_groups[m]} if m in model.eval_metric_groups else {})
            for m, (lo, hi) in model.eval_metric_ranges.items()
        ],
        "hyperparameters": {k: dict(v) for k, v in (hyperparameters or DEFAULT_HYPERPARAMETERS).items()},
    }


def zoo_graphs(model: ZooModel, *, inference_seed: int | None = None) -> dict[str, bytes]:
    """The zoo model's grad and eval graphs, plus an inference model with initial
    parameters (from ``inference_seed``) when a seed is given."""
    graphs = {"grad": _model_bytes(model.grad_graph), "eval": _model_bytes(model.eval_graph)}
    if inference_seed is not None:
        params = model.init_parameters(np.random.default_rng(inference_seed))
        graphs["model"] = _model_bytes(model.inference_model(params))
    return graphs


def complete_manifest(fields: Mapping[str, Any], graphs: Mapping[str, bytes]) -> dict[str, Any]:
    """``fields`` with ``format_version`` defaulted and ``graphs`` filled in (file names and
    sha256 digests; the inference model's ``outputs`` are read from it unless given)."""
    manifest = dict(fields)
    manifest.setdefault("format_version", FORMAT_VERSION)
    declared = dict(manifest.get("graphs") or {})
    completed: dict[str, Any] = {}
    for role, data in graphs.items():
        if role not in GRAPH_FILES:
            raise PackageInputError(f"unknown graph role {role!r} (grad, eval, model)")
        entry: dict[str, Any] = {"file": GRAPH_FILES[role], "sha256": hashlib.sha256(data).hexdigest()}
        if role == "model":
            outputs = (declared.get("model") or {}).get("outputs")
            if outputs is None:
                parsed = onnx.ModelProto()
                try:
                    parsed.ParseFromString(data)
                except Exception as exc:
                    raise PackageInputError(f"model.onnx is not an ONNX model ({type(exc).__name__})") from None
                outputs = inference_outputs(parsed)
            entry["outputs"] = outputs
        completed[role] = entry
    manifest["graphs"] = completed
    return manifest


def assemble_package(
    manifest: Mapping[str, Any], graphs: Mapping[str, bytes], signers: Sequence[AgentKey] = ()
) -> bytes:
    """Writes the archive for ``manifest`` (complete, as is) and ``graphs`` with no validation.

    For tests and tools that need packages the agent must refuse; publishers use
    :func:`build_package`.
    """
    try:
        payload = canonical_json(manifest)
    except CanonicalJsonError as exc:
        raise PackageInputError(f"the manifest cannot be written as canonical JSON: {exc}") from None
    envelope = unsigned_envelope(payload)
    for key in signers:
        envelope = envelope.with_signature(key)
    members = {MANIFEST: payload, SIGNATURES: envelope.to_bytes()}
    members.update({GRAPH_FILES[role]: data for role, data in graphs.items()})
    return write_archive(members)


def build_package(
    fields: Mapping[str, Any],
    graphs: Mapping[str, bytes],
    *,
    signers: Sequence[AgentKey] = (),
    limits: PackageLimits | None = None,
) -> bytes:
    """A validated package archive (unsigned unless ``signers`` are given).

    Raises ``PackageInputError`` naming the first problem (manifest field, graph).
    """
    manifest = complete_manifest(fields, graphs)
    try:
        parsed = parse_manifest(parse_strict_json(canonical_json(manifest)))
        validate_graphs(parsed, graphs, limits or PackageLimits())
    except CanonicalJsonError as exc:
        raise PackageInputError(f"the manifest cannot be written as canonical JSON: {exc}") from None
    except PackageRejected as exc:
        raise PackageInputError(f"the package would be refused: {exc}") from None
    return assemble_package(manifest, graphs, signers)


def sign_package(archive: bytes, key: AgentKey, limits: PackageLimits | None = None) -> bytes:
    """``archive`` with a signature by ``key`` added to its envelope."""
    contents = read_archive(archive, limits or PackageLimits())
    envelope = parse_envelope(contents.envelope)
    if envelope.payload != contents.manifest:
        raise PackageRejected(
            RejectionCode.MANIFEST_MISMATCH, "manifest.json differs from the payload in signatures.json"
        )
    members = {MANIFEST: contents.manifest, SIGNATURES: envelope.with_signature(key).to_bytes()}
    members.update({GRAPH_FILES[role]: data for role, data in contents.graphs.items()})
    return write_archive(members)
