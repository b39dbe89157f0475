"""Sparsity structure for training: unstructured masks on dense weights, the dynamic sparse
training schedulers that update them (RigL, SET), block-sparse layers that store and multiply
only their kept blocks (BlockSparseLinear) with their schedulers (BlockRigL, BlockSET), and the
BN-skew diagnostic."""
from .block_dst import BlockRigL, BlockSET
from .dst import SET, RigL
from .layout import BlockLayout
from .linear import BlockSparseLinear
from .masks import SparseMasks, erk_densities
from .skew import SkewReport, gradient_skew

__all__ = ["BlockSparseLinear", "BlockLayout", "BlockRigL", "BlockSET", "SparseMasks",
           "erk_densities", "RigL", "SET", "gradient_skew", "SkewReport"]
