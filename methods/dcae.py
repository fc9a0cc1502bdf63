"""Deep convolutional autoencoder (DCAE) baseline, plus torch helpers the image methods share.

The LeNet-type encoder/decoder follow Ruff et al. 2018 (Deep SVDD): 5x5 convolutions without
bias, batch norm without affine parameters, leaky ReLU and 2x2 max pooling; grey images use
widths (8, 4) and a 32-d code, colour images (32, 64, 128) and a 128-d code. Bias-free layers are
what Deep SVDD needs (a bias lets the network map everything to the centre); the DCAE shares
them so that it can pretrain Deep SVDD.

Score: mean squared reconstruction error per image (higher = more anomalous).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from occbench.harness.api import Context, Data, ImageData, Method, Resources
from occbench.methods._torch import select_device
from torch import nn

# -----------------------------------------------------------------------------------------------
# Shared helpers (kept here, not in a separate package module, so this file works on its own)
# -----------------------------------------------------------------------------------------------

#: What every torch image method asks the scheduler for: a quarter of a GPU packs four jobs.
TORCH_RESOURCES = Resources(cpus=1, gpus=0.25, memory_mb=4096)


def torch_device(context: Context) -> torch.device:
    """The context's device; a clear error when CUDA is asked for but absent."""
    return select_device(context.device)


def seed_torch(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init) and return a CPU generator for shuffling."""
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def require_images(data: Data, method: str) -> np.ndarray:
    """The ``uint8 (N, H, W, C)`` array of ``data``; a clear error for video input."""
    if not isinstance(data, ImageData):
        raise TypeError(f"{method} scores images only; got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{method}: no images")
    return data.images


def padded_size(h: int, w: int, multiple: int, minimum: int = 8) -> tuple[int, int]:
    """Smallest ``(H', W') >= (h, w)`` (and ``>= minimum``) divisible by ``multiple``."""
    def up(v: int) -> int:
        return max(minimum, math.ceil(v / multiple) * multiple)
    return up(h), up(w)


def to_tensor(images: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``uint8 (N, H, W, C)`` → ``float32 (N, C, H', W')`` in [0, 1], resized to ``size``."""
    # A copy: inputs may be read-only memmaps, which torch cannot wrap.
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
            batch_size: int = 512) -> np.ndarray:
    """Apply ``fn`` to ``x`` in batches on ``device`` without gradients; float64 numpy result."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(fn(x[i:i + batch_size].to(device)).double().cpu())
    return torch.cat(out).numpy()


def epochs_for(epochs: int, context: Context, fast_epochs: int = 2) -> int:
    """``epochs``, capped for ``context.fast`` (tests, CI)."""
    return min(epochs, fast_epochs) if context.fast else epochs


def cap_train(images: np.ndarray, context: Context, fast_n: int = 256) -> np.ndarray:
    """In fast mode train on at most ``fast_n`` images (the first ones: deterministic)."""
    return images[:fast_n] if context.fast else images


# -----------------------------------------------------------------------------------------------
# LeNet-type networks
# -----------------------------------------------------------------------------------------------


def default_widths(channels: int) -> tuple[int, ...]:
    return (8, 4) if channels == 1 else (32, 64, 128)


def default_rep_dim(channels: int) -> int:
    return 32 if channels == 1 else 128


class LeNetEncoder(nn.Module):
    """conv5x5 → BN → leaky ReLU → maxpool per width, then a linear map to ``rep_dim`` (no bias)."""

    def __init__(self, channels: int, size: tuple[int, int], widths: Sequence[int],
                 rep_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 5, padding=2, bias=False),
                       nn.BatchNorm2d(w, eps=1e-4, affine=False), nn.LeakyReLU(0.1),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        f = 2 ** len(widths)
        self.out_hw = (size[0] // f, size[1] // f)
        self.fc = nn.Linear(c * self.out_hw[0] * self.out_hw[1], rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class LeNetDecoder(nn.Module):
    """Mirror of :class:`LeNetEncoder`: linear → (upsample x2 → conv5x5 → BN → lrelu)* → sigmoid."""

    def __init__(self, channels: int, size: tuple[int, int], widths: Sequence[int],
                 rep_dim: int) -> None:
        super().__init__()
        f = 2 ** len(widths)
        self.start = (widths[-1], size[0] // f, size[1] // f)
        self.fc = nn.Linear(rep_dim, int(np.prod(self.start)), bias=False)
        layers: list[nn.Module] = []
        rev = list(widths[::-1])
        for i, w in enumerate(rev):
            nxt = rev[i + 1] if i + 1 < len(rev) else rev[-1]
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(w, nxt, 5, padding=2, bias=False),
                       nn.BatchNorm2d(nxt, eps=1e-4, affine=False), nn.LeakyReLU(0.1)]
        layers += [nn.Conv2d(rev[-1], channels, 5, padding=2, bias=False), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(F.leaky_relu(self.fc(z), 0.1).view(-1, *self.start))


class LeNetAE(nn.Module):
    def __init__(self, channels: int, size: tuple[int, int], widths: Sequence[int],
                 rep_dim: int) -> None:
        super().__init__()
        self.encoder = LeNetEncoder(channels, size, widths, rep_dim)
        self.decoder = LeNetDecoder(channels, size, widths, rep_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def train_autoencoder(ae: nn.Module, x: torch.Tensor, *, epochs: int, lr: float,
                      weight_decay: float, batch_size: int, device: torch.device,
                      generator: torch.Generator,
                      log: Callable[[str], Any] | None = None) -> list[float]:
    """Minimise the mean squared reconstruction error; returns the loss per epoch."""
    opt = torch.optim.Adam(ae.parameters(), lr=lr, weight_decay=weight_decay)
    ae.train()
    losses = []
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), batch_size):
            xb = x[perm[i:i + batch_size]].to(device)
            loss = F.mse_loss(ae(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
        losses.append(total / len(x))
        if log is not None:
            log(f"ae epoch {ep + 1}/{epochs} loss {losses[-1]:.5f}")
    ae.eval()
    return losses


class DCAE(Method):
    """Deep convolutional autoencoder; score = mean squared reconstruction error per image.

    Images are scaled to [0, 1] and, when needed, resized up to a multiple of ``2**len(widths)``.
    """

    name = "dcae"
    version = "1"
    modalities = frozenset({"image"})
    resources = TORCH_RESOURCES
    description = "Deep convolutional autoencoder (LeNet-type, Ruff et al. 2018); score = MSE"

    def __init__(self, epochs: int = 30, lr: float = 1e-3, weight_decay: float = 5e-7,
                 batch_size: int = 128, rep_dim: int | None = None) -> None:
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.rep_dim = rep_dim

    def fit(self, train: Data, context: Context) -> DCAE:
        images = cap_train(require_images(train, self.name), context)
        dev = torch_device(context)
        g = seed_torch(context.seed)
        c = images.shape[-1]
        widths = default_widths(c)
        self.size_ = padded_size(images.shape[1], images.shape[2], 2 ** len(widths))
        self.ae_ = LeNetAE(c, self.size_, widths, self.rep_dim or default_rep_dim(c)).to(dev)
        x = to_tensor(images, self.size_)
        self.losses_ = train_autoencoder(
            self.ae_, x, epochs=epochs_for(self.epochs, context), lr=self.lr,
            weight_decay=self.weight_decay, batch_size=self.batch_size, device=dev, generator=g,
            log=context.logger.debug)
        return self

    def score(self, test: Data, context: Context) -> np.ndarray:
        x = to_tensor(require_images(test, self.name), self.size_)
        self.ae_.eval()
        return batched(lambda xb: ((self.ae_(xb) - xb) ** 2).flatten(1).mean(1), x,
                       torch_device(context))

    def n_parameters(self) -> int | None:
        ae = getattr(self, "ae_", None)
        return None if ae is None else sum(p.numel() for p in ae.parameters())
