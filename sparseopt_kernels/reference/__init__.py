"""Pure-PyTorch references: the numerical specification and the fallback of every op."""
