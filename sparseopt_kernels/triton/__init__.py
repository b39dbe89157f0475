"""Triton kernels of the sparseopt ops (GPU, or CPU tensors under TRITON_INTERPRET=1)."""

# Every launch asks for floating-point contraction (a·b + c as one FMA) explicitly, as the CUDA
# C++ (nvcc's default) and the CPU kernels (fp-contract=fast) do: triton 3.9 defaults to it but
# warns that 3.10 will not, and the kernels' rounding must not change with the installed triton.
FP_FUSION = True
