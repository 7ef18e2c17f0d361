"""Edge Agent: the hospital-side daemon of a federated-learning platform."""

from importlib import metadata

try:
    __version__ = metadata.version("edge-agent")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

API_VERSION = "edge_agent.v1"
