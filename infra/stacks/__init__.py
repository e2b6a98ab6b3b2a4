"""The deployment's stacks, environment-agnostic, in dependency order."""
