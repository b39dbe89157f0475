"""Drop-in ``torch.optim`` optimizers backed by the fused kernels."""
from .ham import HAM
from .horst import HORST

__all__ = ["HAM", "HORST"]
