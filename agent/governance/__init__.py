"""Governance: the hospital's policy and the decisions taken against it.

Decisions are pure functions of (request, policy, state): no I/O, no clock
reads, no globals, so each rule can be tested on its own and explained.
"""
