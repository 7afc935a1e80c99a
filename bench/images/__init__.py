"""The image benchmark: the bird API under the seed's load, a naive server and the ceiling."""
