"""One module per `cxr` sub-command; each exposes ``register(subparsers)``."""
