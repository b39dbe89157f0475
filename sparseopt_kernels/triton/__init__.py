"""Triton kernels of the sparseopt ops (GPU, or CPU tensors under TRITON_INTERPRET=1)."""
