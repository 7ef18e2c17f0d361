"""Task kinds as profiles: one module per kind, registered once in :mod:`agent.tasks.kinds.registry`.

See :mod:`agent.tasks.kinds.profile` for what a profile owns and how to add a kind.
"""
