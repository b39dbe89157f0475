"""Sparsity structure for training: unstructured masks on dense weights, the dynamic sparse
training schedulers that update them (RigL, SET), and the BN-skew diagnostic."""
from .dst import SET, RigL
from .masks import SparseMasks, erk_densities
from .skew import SkewReport, gradient_skew

__all__ = ["SparseMasks", "erk_densities", "RigL", "SET", "gradient_skew", "SkewReport"]
