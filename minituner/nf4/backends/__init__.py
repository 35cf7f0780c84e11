"""Kernels behind the NF4 codec, one module per backend. They take plain tensors and
settings (never an NF4Tensor), never import the codec or each other; helpers they share
live here."""
