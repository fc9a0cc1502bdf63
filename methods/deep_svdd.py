"""Deep SVDD (Ruff et al., ICML 2018): one-class and soft-boundary objectives.

A bias-free LeNet-type network φ (see :mod:`occbench.methods.dcae`) maps images to a code; the
centre ``c`` is the mean code of the training data after an initial forward pass (entries closer
than ``eps`` to zero are pushed to ``±eps``, as in the paper's code, so that a trivial all-zero
code cannot reach ``c``).

* ``objective="one-class"``: minimise the mean ``‖φ(x) − c‖²``; score = ``‖φ(x) − c‖²``.
* ``objective="soft-boundary"``: minimise ``R² + 1/ν · mean(max(0, ‖φ(x) − c‖² − R²))``; ``R`` is
  re-solved every epoch after ``warm_up_epochs`` as the (1 − ν) quantile of the training
  distances; score = ``‖φ(x) − c‖² − R²``.

Optional DCAE pretraining (``pretrain_epochs > 0``) initialises φ with the encoder of an
autoencoder of the same architecture, as in the paper. Higher score = more anomalous.
"""

from __future__ import annotations

import numpy as np
import torch
from occbench.harness.api import Context, Data, Method
from occbench.methods.dcae import (
    TORCH_RESOURCES,
    LeNetAE,
    LeNetEncoder,
    batched,
    cap_train,
    default_rep_dim,
    default_widths,
    epochs_for,
    padded_size,
    require_images,
    seed_torch,
    to_tensor,
    torch_device,
    train_autoencoder,
)


class DeepSVDD(Method):
    """Deep SVDD with the one-class or soft-boundary objective; score = squared distance to c."""

    name = "deep-svdd"
    version = "1"
    modalities = frozenset({"image"})
    resources = TORCH_RESOURCES
    description = "Deep SVDD (Ruff et al. 2018), LeNet-type net, optional DCAE pretraining"

    def __init__(self, objective: str = "one-class", nu: float = 0.1, epochs: int = 30,
                 pretrain_epochs: int = 10, lr: float = 1e-4, pretrain_lr: float = 1e-3,
                 weight_decay: float = 5e-7, batch_size: int = 128, rep_dim: int | None = None,
                 warm_up_epochs: int = 5, eps: float = 0.1) -> None:
        self.objective = objective
        self.nu = nu
        self.epochs = epochs
        self.pretrain_epochs = pretrain_epochs
        self.lr = lr
        self.pretrain_lr = pretrain_lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.rep_dim = rep_dim
        self.warm_up_epochs = warm_up_epochs
        self.eps = eps

    def fit(self, train: Data, context: Context) -> DeepSVDD:
        if self.objective not in ("one-class", "soft-boundary"):
            raise ValueError(f"deep-svdd: objective must be 'one-class' or 'soft-boundary', "
                             f"got {self.objective!r}")
        if not 0 < self.nu <= 1:
            raise ValueError(f"deep-svdd: nu must be in (0, 1], got {self.nu}")
        images = cap_train(require_images(train, self.name), context)
        dev = torch_device(context)
        g = seed_torch(context.seed)
        ch = images.shape[-1]
        widths = default_widths(ch)
        rep = self.rep_dim or default_rep_dim(ch)
        self.size_ = padded_size(images.shape[1], images.shape[2], 2 ** len(widths))
        x = to_tensor(images, self.size_)
        net = LeNetEncoder(ch, self.size_, widths, rep).to(dev)
        pre = epochs_for(self.pretrain_epochs, context, 1)
        if pre > 0:
            ae = LeNetAE(ch, self.size_, widths, rep).to(dev)
            train_autoencoder(ae, x, epochs=pre, lr=self.pretrain_lr,
                              weight_decay=self.weight_decay, batch_size=self.batch_size,
                              device=dev, generator=g, log=context.logger.debug)
            net.load_state_dict(ae.encoder.state_dict())

        net.eval()  # centre from an initial forward pass in eval mode
        z = torch.from_numpy(batched(net, x, dev)).float()
        c = z.mean(0)
        c[(c.abs() < self.eps) & (c < 0)] = -self.eps
        c[(c.abs() < self.eps) & (c >= 0)] = self.eps
        c = c.to(dev)

        soft = self.objective == "soft-boundary"
        r2 = torch.zeros((), device=dev)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        epochs = epochs_for(self.epochs, context)
        self.losses_: list[float] = []
        for ep in range(epochs):
            net.train()
            perm = torch.randperm(len(x), generator=g)
            total = 0.0
            dists = []
            for i in range(0, len(x), self.batch_size):
                xb = x[perm[i:i + self.batch_size]].to(dev)
                d = ((net(xb) - c) ** 2).sum(1)
                loss = (r2 + (1 / self.nu) * torch.clamp(d - r2, min=0).mean() if soft
                        else d.mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
                dists.append(d.detach())
            if soft and ep >= self.warm_up_epochs:
                r = torch.quantile(torch.cat(dists).sqrt(), 1 - self.nu)
                r2 = r ** 2
            self.losses_.append(total / len(x))
            context.logger.debug("deep-svdd epoch %d/%d loss %.5f", ep + 1, epochs,
                                 self.losses_[-1])
        net.eval()
        self.net_, self.c_, self.r2_ = net, c, float(r2)
        return self

    def score(self, test: Data, context: Context) -> np.ndarray:
        x = to_tensor(require_images(test, self.name), self.size_)
        dev = torch_device(context)
        c = self.c_.to(dev)
        d = batched(lambda xb: ((self.net_(xb) - c) ** 2).sum(1), x, dev)
        return d - self.r2_ if self.objective == "soft-boundary" else d

    def n_parameters(self) -> int | None:
        net = getattr(self, "net_", None)
        return None if net is None else sum(p.numel() for p in net.parameters())
