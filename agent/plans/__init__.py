"""What an analysis plan releases (its layout of blocks, sensitivities and noise) and how a reviewer
reads it; the plan format itself is part of the package format (agent.packages.plan)."""
