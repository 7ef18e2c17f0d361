"""Publisher tooling: model builders and packaging for Edge Agent packages.

Needs the ``publisher`` extra (``onnx``); the daemon itself never imports this package.
"""
