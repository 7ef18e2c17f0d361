"""The DP runtime: the agent's isolation wrapper around package graphs, the data path and
the task computations (``dp_gradient``, ``dp_local_training``, ``dp_evaluate``).

* :mod:`agent.runtime.namespace` / :mod:`agent.runtime.isolation`: the wrapper graph
  (package graph renamed into ``package::*``, inside a ``Scan``; agent-owned clipping);
* :mod:`agent.runtime.sessions`: the onnxruntime session of a wrapper (:class:`CompiledWrapper`);
* :mod:`agent.runtime.preprocessing` / :mod:`agent.runtime.rows`: Arrow datasets streamed
  into the graphs' ``x`` and ``y``;
* :mod:`agent.runtime.parameters`: checks of a request's parameter tensors;
* :mod:`agent.runtime.tasks`: the computations, with sampling and noise from
  :mod:`agent.privacy.sampling` and :mod:`agent.privacy.noise`.

Nothing here imports grpc, the ledger or the worker process.
"""
