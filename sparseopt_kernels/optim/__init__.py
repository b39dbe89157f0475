"""Drop-in ``torch.optim`` optimizers backed by the fused kernels."""
from .ham import HAM
from .horst import HORST
from .nanoadam import NanoAdam
from .sparseopt import SparseOpt

__all__ = ["HAM", "HORST", "NanoAdam", "SparseOpt"]
