"""OCLR: one-class latent-regularised adversarial dual autoencoder (Chen et al., ICASSP 2021).

Networks (DCGAN-style, images resized to ``image_size`` square):

* G = (G_e, G_d): generator autoencoder, ``x' = G(x)``, latent ``z = G_e(x)``.
* D: discriminator (real ``x`` vs ``G(x)``).
* G′ = (G′_e, G′_d): auxiliary autoencoder of the same architecture, used as a second
  discriminator in the manner of BEGAN / Vu et al.'s adversarial dual autoencoders.

Losses, weights from the paper (w_i=1, w_a=5, w_z=1, w_c=0.05, w_d=1, k=0.4)::

    L_irec = ‖x − G(x)‖₁                    L_c     = ‖G_e(x) − c‖²  (c = mean initial code)
    L_adv  = log D(x) + log(1 − D(G(x)))    L_zrec  = ‖G_e(x) − G′_e(G(x))‖₂
    L_dual = ‖x − G′(x)‖₁ − k ‖G(x) − G′(G(x))‖₁

The paper writes one total ``L = w_i L_irec + w_a L_adv + w_z L_zrec + w_c L_c + w_d L_dual``
without saying which network minimises which term; we read it the usual GAN way:

* D maximises L_adv (binary cross-entropy on real vs generated);
* G minimises ``w_i L_irec + w_a BCE(D(G(x)), real) + w_z L_zrec + w_c L_c
  + w_d ‖G(x) − G′(G(x))‖₁`` (it wants G′ to accept its reconstructions, as the generator of
  BEGAN/ADAE does);
* G′ minimises ``w_z L_zrec + w_d L_dual`` with G's outputs detached.

Score (as the paper states): the reconstruction error between ``x`` and ``G′(G(x))``, mean
absolute difference per image; ``score_mode="g"`` uses ``‖x − G(x)‖₁`` instead (diagnostic).
Higher = more anomalous.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from occbench.harness.api import Context, Data, Method
from occbench.methods.dcae import (
    TORCH_RESOURCES,
    batched,
    cap_train,
    epochs_for,
    require_images,
    seed_torch,
    to_tensor,
    torch_device,
)
from torch import nn


def _encoder(channels: int, width: int, nz: int, size: int) -> nn.Sequential:
    """DCGAN encoder: stride-2 4x4 convolutions down to 4x4, then a 4x4 conv to ``nz``x1x1."""
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False),
                               nn.LeakyReLU(0.2, inplace=True)]
    s, c = size // 2, width
    while s > 4:
        layers += [nn.Conv2d(c, c * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c * 2),
                   nn.LeakyReLU(0.2, inplace=True)]
        s, c = s // 2, c * 2
    layers += [nn.Conv2d(c, nz, 4, 1, 0, bias=False)]
    return nn.Sequential(*layers)


def _decoder(channels: int, width: int, nz: int, size: int) -> nn.Sequential:
    """Mirror of :func:`_encoder` ending in a sigmoid (images in [0, 1])."""
    n_up = int(np.log2(size // 4))
    c = width * 2 ** (n_up - 1)
    layers: list[nn.Module] = [nn.ConvTranspose2d(nz, c, 4, 1, 0, bias=False),
                               nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    for _ in range(n_up - 1):
        layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2),
                   nn.ReLU(inplace=True)]
        c //= 2
    layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.Sigmoid()]
    return nn.Sequential(*layers)


class _AE(nn.Module):
    def __init__(self, channels: int, width: int, nz: int, size: int) -> None:
        super().__init__()
        self.enc = _encoder(channels, width, nz, size)
        self.dec = _decoder(channels, width, nz, size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.enc(x)
        return self.dec(z), z.flatten(1)


class _Disc(nn.Module):
    def __init__(self, channels: int, width: int, size: int) -> None:
        super().__init__()
        self.body = _encoder(channels, width, 1, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten()  # logits


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute difference, ``(N,)``."""
    return (a - b).abs().flatten(1).mean(1)


class OCLR(Method):
    """Adversarial dual autoencoder with latent centre loss; score = ‖x − G′(G(x))‖₁."""

    name = "oclr"
    version = "1"
    modalities = frozenset({"image"})
    resources = TORCH_RESOURCES
    description = "OCLR (Chen et al. 2021): adversarial dual AE with latent regulariser"

    def __init__(self, epochs: int = 15, batch_size: int = 64, lr: float = 2e-4,
                 beta1: float = 0.5, nz: int = 100, width: int = 32, image_size: int = 32,
                 w_i: float = 1.0, w_a: float = 5.0, w_z: float = 1.0, w_c: float = 0.05,
                 w_d: float = 1.0, k: float = 0.4, score_mode: str = "dual") -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta1 = beta1
        self.nz = nz
        self.width = width
        self.image_size = image_size
        self.w_i = w_i
        self.w_a = w_a
        self.w_z = w_z
        self.w_c = w_c
        self.w_d = w_d
        self.k = k
        self.score_mode = score_mode

    def fit(self, train: Data, context: Context) -> OCLR:
        if self.score_mode not in ("dual", "g"):
            raise ValueError(f"oclr: score_mode must be 'dual' or 'g', got {self.score_mode!r}")
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise ValueError(f"oclr: image_size must be a power of two >= 8, got {s}")
        images = cap_train(require_images(train, self.name), context)
        dev = torch_device(context)
        g = seed_torch(context.seed)
        ch = images.shape[-1]
        x = to_tensor(images, (s, s))
        G = _AE(ch, self.width, self.nz, s).to(dev)
        G2 = _AE(ch, self.width, self.nz, s).to(dev)
        D = _Disc(ch, self.width, s).to(dev)
        betas = (self.beta1, 0.999)
        opt_g = torch.optim.Adam(G.parameters(), lr=self.lr, betas=betas)
        opt_g2 = torch.optim.Adam(G2.parameters(), lr=self.lr, betas=betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=self.lr, betas=betas)

        # Centre of the latent codes from an initial forward pass on all training data.
        G.eval()
        c = torch.from_numpy(batched(lambda xb: G(xb)[1], x, dev)).float().mean(0).to(dev)

        epochs = epochs_for(self.epochs, context)
        self.history_: list[dict[str, float]] = []
        for ep in range(epochs):
            G.train()
            G2.train()
            D.train()
            perm = torch.randperm(len(x), generator=g)
            sums = np.zeros(4)
            n = 0
            for i in range(0, len(x), self.batch_size):
                xb = x[perm[i:i + self.batch_size]].to(dev)
                if len(xb) < 2:
                    continue
                # --- D: real vs generated (BCE) ---
                fake, z = G(xb)
                d_real, d_fake = D(xb), D(fake.detach())
                loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                          + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                # --- G′: reconstruct real inputs, fail on generated ones; recover z ---
                rec_real, _ = G2(xb)
                rec_fake, z2 = G2(fake.detach())
                l_zrec2 = (z.detach() - z2).norm(dim=1).mean()
                loss_g2 = (self.w_d * (_l1(xb, rec_real).mean() - self.k * _l1(fake.detach(),
                                                                                rec_fake).mean())
                           + self.w_z * l_zrec2)
                opt_g2.zero_grad(set_to_none=True)
                loss_g2.backward()
                opt_g2.step()
                # --- G: reconstruct, fool D, be accepted by G′, stay near the centre ---
                d_fake = D(fake)
                rec_fake, z2 = G2(fake)
                l_irec = _l1(xb, fake).mean()
                l_adv = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
                l_zrec = (z - z2).norm(dim=1).mean()
                l_c = ((z - c) ** 2).sum(1).mean()
                l_dual_g = _l1(fake, rec_fake).mean()
                loss_g = (self.w_i * l_irec + self.w_a * l_adv + self.w_z * l_zrec
                          + self.w_c * l_c + self.w_d * l_dual_g)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                # Re-initialise D when it wins outright (GANomaly's remedy for a collapsed game).
                if float(loss_d.detach()) < 1e-5:
                    D = _Disc(ch, self.width, s).to(dev)
                    opt_d = torch.optim.Adam(D.parameters(), lr=self.lr, betas=betas)
                sums += [float(v.detach()) for v in (loss_g, loss_d, loss_g2, l_irec)]
                n += 1
            h = dict(zip(["loss_g", "loss_d", "loss_g2", "l_irec"], (sums / max(n, 1)).tolist(),
                         strict=True))
            h["epoch"] = ep + 1
            self.history_.append(h)
            context.logger.debug("oclr epoch %d: %s", ep + 1, h)
        G.eval()
        G2.eval()
        self.G_, self.G2_ = G, G2
        return self

    def score(self, test: Data, context: Context) -> np.ndarray:
        s = self.image_size
        x = to_tensor(require_images(test, self.name), (s, s))

        def f(xb: torch.Tensor) -> torch.Tensor:
            fake = self.G_(xb)[0]
            if self.score_mode == "g":
                return _l1(xb, fake)
            return _l1(xb, self.G2_(fake)[0])

        return batched(f, x, torch_device(context))

    def n_parameters(self) -> int | None:
        if getattr(self, "G_", None) is None:
            return None
        return sum(p.numel() for m in (self.G_, self.G2_) for p in m.parameters())
