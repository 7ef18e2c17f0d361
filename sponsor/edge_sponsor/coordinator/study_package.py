"""The package a federated study trains: its manifest, starting parameters and the
inference model the trained parameters are exported into.

The coordinator reads the archive without trusting it (the agents decide trust);
it only needs the manifest's parameter list and the optional ``model.onnx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from agent.durable import write_public
from agent.packages.archive import read_archive
from agent.packages.errors import PackageRejected
from agent.packages.inspection import inspect_package
from agent.packages.limits import PackageLimits
from agent.packages.manifest import Manifest, TaskKind
from agent.tasks.kinds.profile import TaskProfile
from agent.tasks.tensors import TensorDecl
from edge_sponsor.coordinator.optimizer import Parameters
from edge_sponsor.publisher.raw_columns import ScoringModelError, scoring_model


class StudyPackageError(Exception):
    """The package cannot be used for a study; the message names the file and the problem."""


@dataclass(frozen=True)
class StudyPackage:
    archive: bytes
    digest: str
    manifest: Manifest
    # model.onnx (inference, parameters as initializers), when the package ships one.
    inference_model: bytes | None

    @classmethod
    def from_archive(cls, archive: bytes, source: str = "the package") -> StudyPackage:
        limits = PackageLimits()
        try:
            summary = inspect_package(archive, limits)
            graphs = read_archive(archive, limits).graphs
        except PackageRejected as exc:
            raise StudyPackageError(f"{source}: {exc}") from None
        return cls(archive, summary.digest, summary.manifest, graphs.get("model"))

    @classmethod
    def from_file(cls, path: Path) -> StudyPackage:
        try:
            archive = path.read_bytes()
        except OSError as exc:
            raise StudyPackageError(f"{path}: cannot read the package: {exc.strerror}") from None
        return cls.from_archive(archive, str(path))

    def ordered(
        self, parameters: Mapping[str, npt.NDArray[np.floating[Any]]], task: TaskProfile
    ) -> list[tuple[str, npt.NDArray[np.generic]]]:
        """The ``parameters`` ``task`` takes, in the manifest's order and declared dtypes, as RunTask
        wants them: a model package's parameters for every kind, a plan model's coefficients for
        dp_glm only (``Manifest.task_parameters``). A strategy's float64 step of a float32 model is
        cast here rather than refused by the agent."""
        return [
            (p.name, np.asarray(parameters[p.name], p.dtype))
            for p in self.manifest.task_parameters(TaskKind(task.name))
        ]

    def result_declarations(self, task: TaskProfile) -> list[TensorDecl]:
        """The tensors an honest agent returns for ``task``, as its kind declares them: every
        parameter's shape for training (sums or deltas), none for evaluation (scalars only)."""
        return [TensorDecl(p.name, p.dtype, p.shape) for p in task.release(self.manifest).tensors]

    def check_exportable(self) -> None:
        """Raises StudyPackageError now if the trained parameters could not be exported later."""
        if self.inference_model is None:
            return
        model = _parse(self.inference_model)
        names = {init.name for init in model.graph.initializer}
        missing = {p.name for p in self.manifest.parameters} - names
        if missing:
            raise StudyPackageError(
                f"model.onnx of {self.manifest.name} has no initializer for {', '.join(sorted(missing))}; "
                "the trained model could not be exported"
            )
        self._scoring(model)

    def _scoring(self, model: onnx.ModelProto) -> onnx.ModelProto:
        try:
            return scoring_model(model, self.manifest)
        except (ScoringModelError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise StudyPackageError(f"model.onnx of {self.manifest.name} cannot take raw columns: {exc}") from None

    def initial_parameters(self) -> Parameters:
        """The initializers of ``model.onnx`` named like the parameters; zeros otherwise.

        Zero is a fine start for convex models; a network needs the publisher's random
        initialisation, which is why the zoo bakes it into ``model.onnx``.
        """
        found: dict[str, npt.NDArray[np.generic]] = {}
        if self.inference_model is not None:
            model = _parse(self.inference_model)
            found = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        parameters: Parameters = {}
        for decl in self.manifest.parameters:
            value = found.get(decl.name)
            if value is not None and tuple(value.shape) == decl.shape:
                parameters[decl.name] = np.asarray(value, np.float32)
            else:
                parameters[decl.name] = np.zeros(decl.shape, np.float32)
        return parameters

    def export(self, parameters: Parameters, path: Path) -> None:
        """Writes ``model.onnx`` with ``parameters`` in place of its initializers, behind the
        manifest's preprocessing: it scores raw columns, one input per feature column
        (:func:`edge_sponsor.publisher.raw_columns.scoring_model`)."""
        if self.inference_model is None:
            raise StudyPackageError(f"{self.manifest.name} ships no model.onnx to export the parameters into")
        model = _parse(self.inference_model)
        replaced: set[str] = set()
        for index, init in enumerate(model.graph.initializer):
            if init.name in parameters:
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(parameters[init.name], init.name))
                replaced.add(init.name)
        missing = {p.name for p in self.manifest.parameters} - replaced
        if missing:
            raise StudyPackageError(
                f"model.onnx of {self.manifest.name} has no initializer for {', '.join(sorted(missing))}"
            )
        write_public(path, self._scoring(model).SerializeToString())


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, or worse on hostile bytes
        raise StudyPackageError(f"model.onnx is not an ONNX model ({type(exc).__name__})") from None
    return model
