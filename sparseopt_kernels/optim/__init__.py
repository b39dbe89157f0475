"""Drop-in ``torch.optim`` optimizers backed by the fused kernels."""
from .ham import HAM
from .horst import HORST
from .nanoadam import NanoAdam

__all__ = ["HAM", "HORST", "NanoAdam"]
