"""Running tasks: admission, the privacy charge, the worker process, and the result stream."""
