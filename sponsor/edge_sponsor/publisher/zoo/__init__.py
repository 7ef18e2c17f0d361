"""Model zoo: hand-written ONNX graphs for the models publishers package most often.

Each builder returns a :class:`ZooModel` holding

* ``grad_graph``: the *single-example* gradient graph a package carries. Inputs are the
  parameters (float32, declared shapes), ``x`` (float32 ``[F]``) and ``y`` (see
  ``label_spec``); outputs are ``grad_<parameter>`` (same shape as the parameter) and
  ``loss`` (float32 scalar). The agent, not the package, wraps it to iterate over rows,
  clip, sum and add noise.
* ``eval_graph``: same inputs; float32 scalar metrics, each clamped into the range
  declared in ``eval_metric_ranges``.
* ``inference_model(params)``: a batched inference model (``x`` float32 ``[N, F]``) with
  the trained parameters baked in as initializers.
* ``init_parameters(rng)``: starting values.

Every graph uses opset 17 of the default domain only, IR version 8, no control flow, no
functions and no external data, and passes ``onnx.checker.check_model(full_check=True)``.
The loss, gradient and parametrisation of each model are documented in its module.
"""

from edge_sponsor.publisher.zoo.graph import IR_VERSION, OPSET_VERSION
from edge_sponsor.publisher.zoo.linear import build_linear_regression
from edge_sponsor.publisher.zoo.logistic import build_logistic_regression
from edge_sponsor.publisher.zoo.mlp import build_mlp_classifier
from edge_sponsor.publisher.zoo.spec import LabelSpec, ParameterSpec, ZooModel
from edge_sponsor.publisher.zoo.weibull import build_weibull_survival

__all__ = [
    "IR_VERSION",
    "OPSET_VERSION",
    "LabelSpec",
    "ParameterSpec",
    "ZooModel",
    "build_linear_regression",
    "build_logistic_regression",
    "build_mlp_classifier",
    "build_weibull_survival",
]
