"""Small constructs the stacks are composed of."""
