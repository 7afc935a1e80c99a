"""Model kinds: how to load a model from a spec and run one batch. Nothing here knows HTTP."""
