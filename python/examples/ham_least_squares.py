"""HAM's implicit bias on an underdetermined least-squares problem (ALGORITHMS.md §1).

    python python/examples/ham_least_squares.py

Gradient descent from a small initialization interpolates the data; the mirror step moves the
implicit bias from L2 (α = 0) towards L1 (large α): the interpolators found with larger α have a
smaller L1 norm and recover more of the sparse ground truth. Too large an α·lr diverges: the
mirror step scales the effective step by (1 + α|θ|). Runs on the CPU in seconds.
"""
import torch

from sparseopt_kernels.optim import HAM


def solve(alpha: float, steps: int = 6000, lr: float = 0.02, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n, d, k = 40, 100, 5
    A = torch.randn(n, d, generator=gen) / n ** 0.5
    truth = torch.zeros(d)
    truth[torch.randperm(d, generator=gen)[:k]] = torch.randn(k, generator=gen).sign() * 2
    y = A @ truth
    w = torch.full((1, d), 1e-3).requires_grad_()  # a 2-D weight, so HAM selects it
    opt = HAM(torch.optim.SGD([w], lr=lr), alpha=alpha, beta=0.0, clamp=5.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (A @ w[0] - y).pow(2).sum()
        loss.backward()
        opt.step()
    w = w.detach()[0]
    return loss.item(), w.abs().sum().item(), (w - truth).norm().item() / truth.norm().item()


if __name__ == "__main__":
    print(f"{'alpha':>8} {'loss':>10} {'L1 norm':>9} {'rel. error to truth':>20}")
    for alpha in (0.0, 3.0, 10.0, 30.0):
        loss, l1, err = solve(alpha)
        print(f"{alpha:>8g} {loss:>10.2e} {l1:>9.3f} {err:>20.3f}")
