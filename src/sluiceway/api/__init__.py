"""The HTTP edge: one module per client contract, plus operations endpoints."""
