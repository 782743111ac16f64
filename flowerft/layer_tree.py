"""Walking a Keras model's layers, nested models included (a base inside a classifier, blocks inside a base)."""

from __future__ import annotations


def all_layers(layer):
    """`layer` and every layer nested in it, depth first."""
    yield layer
    for sub in getattr(layer, "layers", []):
        yield from all_layers(sub)
