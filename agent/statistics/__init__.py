"""The agent's own statistical computations: a plan's patients, exact blocks and noisy release."""
