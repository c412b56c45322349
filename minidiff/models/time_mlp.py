"""A time-embedded MLP noise model eps_theta(x_t, t) for point data (B, D), e.g. the toy 2-D sets (docs/score.md §4).

    e     = Linear(SiLU(Linear(sinusoidal(t))))                    time embedding, (B, H)
    h_0   = Linear(x_t) + e                                         (B, H)
    h_l   = h_{l-1} + Linear(SiLU(Linear(SiLU(h_{l-1})) + Linear(e)))   l = 1..depth, residual blocks
    out   = Linear(SiLU(h_depth))                                   zero-initialised, so eps_hat = 0 at start

The U-Net's counterpart for vectors: `DDPM(network="mlp")` builds it (models/ddpm.py NETWORKS).
"""
from minidiff import checks, nn, ops
from minidiff.autograd import Tensor, unwrap
from minidiff.nn import init


class TimeBlock(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(h)) + Linear(e))): one residual block with the time embedding added inside."""

    def __init__(self, hidden, dtype=None):
        super().__init__()
        self.lin1 = nn.Linear(hidden, hidden, dtype=dtype)
        self.emb = nn.Linear(hidden, hidden, dtype=dtype)
        self.lin2 = nn.Linear(hidden, hidden, dtype=dtype)

    def forward(self, h, e):
        return ops.add(h, self.lin2(ops.silu(ops.add(self.lin1(ops.silu(h)), self.emb(e)))))


class TimeMLP(nn.Module):
    """eps_theta(x_t, t): (B, D), (B,) -> (B, D)."""

    def __init__(self, dim=2, hidden=128, depth=3, dtype=None):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.time_embedding = nn.Sequential(nn.Linear(hidden, hidden, dtype=dtype), nn.SiLU(),
                                            nn.Linear(hidden, hidden, dtype=dtype))
        self.inp = nn.Linear(dim, hidden, dtype=dtype)
        self.blocks = nn.ModuleList([TimeBlock(hidden, dtype) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim, dtype=dtype)
        init.zeros_(self.out.weight)
        init.zeros_(self.out.bias)

    def forward(self, x, t):
        checks.shape("x", x, (None, self.dim), "TimeMLP")
        checks.shape("t", t, (x.shape[0],), "TimeMLP", because=" (one timestep per point)")
        x = x if isinstance(x, Tensor) else Tensor(x)
        e = self.time_embedding(Tensor(nn.sinusoidal_embedding(unwrap(t), self.hidden, dtype=x.dtype)))
        h = ops.add(self.inp(x), e)
        for block in self.blocks:
            h = block(h, e)
        return self.out(ops.silu(h))
