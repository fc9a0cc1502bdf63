"""Reconstruction-based video anomaly detectors of the seed papers, on a 3D convolutional AE.

Methods (entry points in ``pyproject.toml``):

* ``ae3d`` — the papers' baseline: a 3D conv autoencoder in the style of Gong et al. (MemAE
  without its memory), trained to reconstruct 16-frame grey clips.
* ``lntra-patch`` / ``lntra-skip`` — *Learning Not to Reconstruct Anomalies* (Astrid et al.,
  BMVC 2021; ``papers/002``): with probability ``p`` a training input is replaced by a pseudo
  anomaly while the target stays the normal clip.
* ``lcon-inside`` / ``lcon-onsphere`` — latent constriction (Astrid et al., ``papers/000``):
  reconstruction loss plus ``lam`` times a penalty on the norm of each latent feature vector.

Shared conventions (all five):

* Input: clips of ``clip_len`` (16) consecutive grey frames at ``size`` x ``size`` (256), scaled
  from uint8 to [-1, 1] (``x / 127.5 - 1``, as the LNTRA release). Colour frames are converted
  with ITU-R 601 luma weights; frames of another size are resized once with OpenCV bilinear.
* Training as in the LNTRA release: Adam, ``lr`` 1e-4, ``batch_size`` 4, ``epochs`` 60, MSE over
  all frames of the clip; one epoch = every clip start of every training video once, shuffled,
  last incomplete batch dropped (Ped2: 2,310 clips, 577 steps). The last epoch's weights are
  used (no checkpoint selection on test data).
* Score: for the clip starting at frame ``k`` the frame ``k + clip_len // 2`` (the 9th of 16) is
  scored by ``-PSNR`` between it and its reconstruction, with PSNR computed on [0, 1] intensities,
  ``10 log10(1 / MSE)`` (the MNAD/LNTRA evaluation code). Higher = more anomalous. The score is
  **raw**: per-video min-max normalisation (LNTRA eq. 10) is the scoring protocol's job
  (``video-minmax``), and it makes the [0, 1] vs [-1, 1] choice irrelevant (a constant shift).
  The first ``clip_len // 2`` and last ``clip_len - clip_len // 2 - 1`` frames of each video
  (8 and 7) cannot be scored and are NaN; ``temporal_context`` declares (8, 7).

Speed (GPU): all training frames live on the device as one uint8 tensor and clips are gathered
by indexing (no per-step decoding or host transfer: a whole epoch's indices go over at once);
``precision="bf16"`` autocast, channels-last 3D, fused Adam and optional ``compile=True``;
``precision="fp32"`` (TF32 off) is the exactness switch. CPU runs are deterministic per seed.
No convolution followed by BatchNorm has a bias (version 3). Several models of one architecture
and schedule (seeds; variants that differ only in inputs or loss) can train as one stacked
computation (:meth:`Ae3dMethod.fit_stacked`, ``torch.func`` ``vmap``), each ending as if
trained alone; the harness uses it to group jobs. ``snapshot_every`` reports test scores of
intermediate epochs (a per-epoch AUC curve; the headline stays the last epoch).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from occbench.harness.api import (
    Context,
    Data,
    ImageData,
    Method,
    Resources,
    VideoData,
    frames_of,
)
from occbench.methods import _torch as T
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

#: Channel widths of the Gong et al. 3D AE (encoder; the decoder mirrors them).
BASE_CHANNELS = (96, 128, 256, 256)
#: Training steps excluded from ``train_stats_["steady_clips_per_s_all"]`` (compile, autotune).
TIMING_WARMUP_STEPS = 5
#: Frame size and channel multiplier used under ``Context.fast`` (at most).
FAST_SIZE = 32
FAST_WIDTH = 0.125


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class AE3D(nn.Module):
    """3D conv autoencoder, input/output ``(B, 1, T, S, S)`` in [-1, 1].

    Encoder: Conv3d k3 p1, strides (1,2,2), 2, 2, 2 with ``channels`` = (96, 128, 256, 256) at
    ``width=1``, each followed by BatchNorm3d and LeakyReLU(0.2). Decoder: ConvTranspose3d
    mirrors (strides 2, 2, 2, (1,2,2), output_padding so sizes double exactly), BN + LeakyReLU
    except the last layer, which ends in Tanh. Only the last layer has a bias (every other one is
    followed by BatchNorm, which removes it). Needs ``T % 8 == 0`` and ``S % 16 == 0``.
    Latent: ``(B, 256·width, T/8, S/16, S/16)``.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = [max(1, round(ch * width)) for ch in BASE_CHANNELS]
        strides = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        enc: list[nn.Module] = []
        cin = 1
        for cout, s in zip(c, strides, strict=True):
            # no bias: the BatchNorm right after subtracts any constant per channel anyway (and a
            # half-precision cuDNN bias path is slow)
            enc += [nn.Conv3d(cin, cout, 3, stride=s, padding=1, bias=False),
                    nn.BatchNorm3d(cout), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        outs = [c[2], c[1], c[0], 1]  # mirror of the encoder: 256 → 256 → 128 → 96 → 1
        for i, (cout, s) in enumerate(zip(outs, reversed(strides), strict=True)):
            op = (s[0] - 1, s[1] - 1, s[2] - 1)  # output_padding: 1 where stride 2, else 0
            last = i == len(outs) - 1
            dec.append(nn.ConvTranspose3d(cin, cout, 3, stride=s, padding=1, output_padding=op,
                                          bias=last))  # a bias only where no BatchNorm follows
            dec += [nn.Tanh()] if last else [nn.BatchNorm3d(cout), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(reconstruction, latent)``."""
        z = self.encoder(x)
        return self.decoder(z), z


def train_flops_per_clip(width: float = 1.0, clip_len: int = 16, size: int = 256) -> float:
    """FLOPs of one training step per clip (forward + backward ≈ 3 × forward multiply-adds × 2).

    Counted from the layer shapes on the meta device (nothing is computed); the default AE on a
    16x256x256 clip costs about 193 GFLOP, the figure the speed targets are quoted against.
    """
    net = AE3D(width).to("meta").eval()  # eval: BatchNorm accepts the 1-clip batch at any size
    macs = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        k = int(math.prod(mod.kernel_size))  # type: ignore[arg-type]
        if isinstance(mod, nn.ConvTranspose3d):  # every input position meets the whole kernel
            macs += inp[0][0].numel() * int(mod.out_channels) * k  # type: ignore[arg-type]
        else:
            macs += out[0].numel() * int(mod.in_channels) * k  # type: ignore[arg-type]

    for m in net.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.empty(1, 1, clip_len, size, size, device="meta"))
    return float(6 * macs)


# --------------------------------------------------------------------------------------------
# Data on the device
# --------------------------------------------------------------------------------------------


def to_grey(frames: np.ndarray, size: int) -> np.ndarray:
    """``(N, H, W, C)`` uint8 → ``(N, size, size)`` uint8 grey (601 luma; bilinear resize)."""
    if frames.shape[-1] == 3:
        f = frames.astype(np.float32)
        grey = np.rint(f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114)
        g = np.clip(grey, 0, 255).astype(np.uint8)
    else:
        g = np.asarray(frames[..., 0])
    if g.shape[1:] != (size, size):
        g = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in g])
    return np.ascontiguousarray(g, dtype=np.uint8)


@dataclass
class FrameBank:
    """All frames of a :class:`VideoData` as one ``(N, S, S)`` uint8 tensor on a device.

    ``video_of[i]`` / ``end_of[i]``: the video and the exclusive end (global index) of frame i.
    """

    frames: torch.Tensor
    index: list[tuple[str, int]]
    starts: np.ndarray  # global index of each video's first frame
    lengths: np.ndarray

    @classmethod
    def build(cls, data: VideoData, size: int, device: torch.device) -> FrameBank:
        arr, index = frames_of(data)
        grey = to_grey(arr, size)
        lengths = np.array([n for _, n in index], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(torch.from_numpy(grey).to(device), index, starts, lengths)

    def clip_starts(self, clip_len: int) -> np.ndarray:
        """Global start index of every full clip, video by video (``(n_clips,)`` int64)."""
        out = [s + np.arange(n - clip_len + 1) for s, n in zip(self.starts, self.lengths,
                                                                strict=True) if n >= clip_len]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def video_bounds(self, global_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, end-exclusive) global frame index of the video holding each start."""
        v = np.searchsorted(self.starts, global_start, side="right") - 1
        return self.starts[v], self.starts[v] + self.lengths[v]

    def gather(self, idx: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
        """``idx`` ``(B, L)`` global frame indices → ``(B, 1, L, S, S)`` float in [-1, 1]."""
        x = self.frames[idx].unsqueeze(1).float().mul_(1.0 / 127.5).sub_(1.0)
        return x.contiguous(memory_format=fmt)


def psnr01(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per sample of ``(B, H, W)`` images given in [-1, 1], computed on [0, 1]."""
    mse = ((recon.float() - target.float()) * 0.5).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


# --------------------------------------------------------------------------------------------
# Pseudo anomalies (LNTRA)
# --------------------------------------------------------------------------------------------


def value_noise_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` procedural grey textures ``(n, size, size)`` uint8: value noise of 3 octaves.

    The default intruder set when no image file is given: smooth random blobs with the spatial
    frequencies of upsampled 32x32 images (what CIFAR patches look like after LNTRA's resize),
    generated from the job's seed, so no download is needed.
    """
    out = np.zeros((n, size, size), dtype=np.float32)
    for cells, weight in ((4, 0.5), (8, 0.3), (32, 0.2)):
        coarse = rng.uniform(0, 255, size=(n, cells, cells)).astype(np.float32)
        out += weight * np.stack(
            [cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    lo = out.min(axis=(1, 2), keepdims=True)
    hi = out.max(axis=(1, 2), keepdims=True)
    return ((out - lo) / np.maximum(hi - lo, 1e-6) * 255).round().astype(np.uint8)


#: ``intruder`` values that are not a registered dataset's name
_INTRUDER_BUILTINS = ("noise", "self")


def intruder_is_dataset(spec: str) -> bool:
    """Whether ``intruder=spec`` names a registered image dataset (resolved by the harness)."""
    return spec not in _INTRUDER_BUILTINS and not spec.endswith(".npy")


def _to_grey(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 ``(M, h, w)``, ``(M, h, w, 1)`` or ``(M, h, w, 3)`` images as ``(M, h, w)`` grey."""
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4
                                                           and arr.shape[-1] not in (1, 3)):
        raise ValueError(f"{where}: intruder images must be uint8 (M, h, w) or (M, h, w, 1|3), "
                         f"got {arr.dtype} {arr.shape}; convert with astype(np.uint8)")
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 4:  # PIL's "L" conversion weights, as the LNTRA release's Grayscale()
        arr = np.rint(arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114)
    return np.ascontiguousarray(np.clip(arr, 0, 255).astype(np.uint8))


def load_intruders(spec: str, bank: FrameBank, rng: np.random.Generator,
                   auxiliary: Mapping[str, ImageData] | None = None,
                   n_noise: int = 512) -> np.ndarray:
    """The intruder image set as ``(M, h, w)`` uint8 grey.

    ``spec``: ``"noise"`` (default; :func:`value_noise_images`), ``"self"`` (the training frames
    themselves, as LNTRA's Ped2-as-intruder ablation), the name of a registered image dataset
    (e.g. ``"cifar100"``, the paper's choice: its training images of every class, which the
    harness hands over as ``auxiliary["intruder"]``), or a path to an ``.npy`` of uint8 images
    ``(M, h, w)`` or ``(M, h, w, 3)``.
    """
    if spec == "noise":
        return value_noise_images(n_noise, 32, rng)
    if spec == "self":
        return bank.frames.cpu().numpy()
    if intruder_is_dataset(spec):
        pool = (auxiliary or {}).get("intruder")
        if pool is None:
            raise ValueError(
                f"intruder={spec!r} names a dataset, but the harness passed no auxiliary "
                "'intruder' images: run the method through occbench (a spec or `occbench "
                "validate`), or give 'noise', 'self' or a .npy file")
        return _to_grey(pool.images, f"dataset {spec}")
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"intruder={spec!r}: no such file; expected 'noise', 'self', a registered image "
            "dataset (`occbench list datasets`) or an existing .npy file of uint8 images "
            "(M, h, w[, 3])")
    return _to_grey(np.load(path, mmap_mode="r"), str(path))


def smoothmix_masks(cx: torch.Tensor, cy: torch.Tensor, cw: torch.Tensor, ch: torch.Tensor,
                    size: int) -> torch.Tensor:
    """SmoothMixS masks ``(B, L, S, S)`` in [0, 1] for boxes centred at ``cx, cy`` ``(B, L)``.

    A box of ``cw`` x ``ch`` pixels ``(B,)`` is 1 inside (clipped to the frame) and falls off
    linearly to 0 over 10 % of its half-size outside each edge (SmoothMix's "S" mask, as the
    LNTRA release builds it), the x and y profiles multiplied.
    """
    pos = torch.arange(size, device=cx.device, dtype=torch.float32)

    def profile(c: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        half = torch.div(extent, 2, rounding_mode="floor").unsqueeze(1)  # (B, 1)
        lo_in = (c - half).clamp(0, size)
        hi_in = (c + half).clamp(0, size)
        ramp = (half * 0.1).clamp_min(1e-3)
        p = pos.view(1, 1, -1)
        up = (p - (lo_in - ramp).unsqueeze(-1)) / ramp.unsqueeze(-1)
        down = ((hi_in + ramp).unsqueeze(-1) - p) / ramp.unsqueeze(-1)
        return torch.where(p < c.unsqueeze(-1), up, down).clamp(0, 1)  # (B, L, S)

    return profile(cy, ch).unsqueeze(-1) * profile(cx, cw).unsqueeze(-2)


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@dataclass
class _Schedule:
    """What :meth:`Ae3dMethod._begin` prepares for one model before training starts."""

    rng: np.random.Generator  # the model's own data order and pseudo anomalies
    starts: np.ndarray  # global start index of every training clip
    per_epoch: int  # optimiser steps per epoch
    total: int  # optimiser steps in all
    width: float  # channel multiplier actually used (Context.fast may shrink it)


class Ae3dMethod(Method):
    """3D conv AE baseline (Gong et al. style); score = −PSNR of the clip's middle frame.

    Parameters (defaults = the LNTRA release on Ped2): ``epochs`` 60, ``batch_size`` 4, ``lr``
    1e-4, ``size`` 256, ``clip_len`` 16, ``width`` 1.0 (channel multiplier; tests use ~0.1).
    ``max_steps`` > 0 caps optimiser steps (0 = no cap); ``Context.fast`` caps them at
    ``fast_steps`` and shrinks frames to at most 32 px and ``width`` to at most 1/8.
    ``precision`` "bf16" | "fp32", ``channels_last``, ``compile``: speed switches (GPU only).
    ``device`` "auto" (the harness's choice) | "cpu" | "cuda[:N]"; ``gpus`` is the GPU share one
    job asks the scheduler for (e.g. 0.25 to run four jobs on one GPU).
    ``snapshot_every`` K > 0: keep the weights after every K-th epoch and, in ``score``, report
    each copy's raw test scores through ``Context.snapshot(epoch, scores)`` (the final model is
    reported too, as the last epoch), so the run stores a per-epoch AUC curve; 0 = none. The
    returned scores are always the final model's.

    Stacking (:meth:`fit_stacked`): several instances with the same architecture and schedule
    (:meth:`stack_key`; seeds, and the variants below, which differ only in inputs or loss) train
    as one computation — ``torch.func.stack_module_state`` + ``vmap`` over ``functional_call`` —
    each with its own initialisation, data order, pseudo anomalies, Adam state and BatchNorm
    statistics, ending with the weights it would have had alone (to float tolerance).
    """

    name: ClassVar[str] = "ae3d"
    # 2: decoder fixed to mirror the encoder (256→256→128→96→1); version 1 had 256→256→256→128→1
    # 3: no convolution bias before BatchNorm (different parameters and initialisation draws)
    version: ClassVar[str] = "3"
    modalities = frozenset({"video"})
    temporal_context: ClassVar[tuple[int, int]] = (8, 7)
    resources: ClassVar[Resources] = Resources(cpus=2, gpus=1.0, memory_mb=12000)
    description: ClassVar[str] = "3D conv autoencoder (Gong et al. w/o memory); −PSNR score"

    def __init__(self, epochs: int = 60, batch_size: int = 4, lr: float = 1e-4,
                 size: int = 256, clip_len: int = 16, width: float = 1.0, max_steps: int = 0,
                 fast_steps: int = 2, score_batch_size: int = 16, precision: str = "bf16",
                 channels_last: bool = True, compile: bool = False, device: str = "auto",
                 gpus: float = 1.0, snapshot_every: int = 0) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.size = size
        self.clip_len = clip_len
        self.width = width
        self.max_steps = max_steps
        self.fast_steps = fast_steps
        self.score_batch_size = score_batch_size
        self.precision = precision
        self.channels_last = channels_last
        self.compile = compile
        self.device = device
        self.gpus = gpus
        self.snapshot_every = snapshot_every

    # ---- hooks for the variants -------------------------------------------------------------

    def _prepare(self, bank: FrameBank, rng: np.random.Generator, dev: torch.device,
                 context: Context) -> None:
        """Set up variant state once before training (intruder images, ...)."""

    def _plan_epoch(self, bank: FrameBank, starts: np.ndarray, rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        """Per-step input/target frame indices for one epoch: arrays ``(steps, B, L)``."""
        offs = np.arange(self.clip_len)
        idx = starts.reshape(-1, self.batch_size)[..., None] + offs
        return {"input": idx, "target": idx}

    def _make_input(self, x: torch.Tensor, plan: dict[str, torch.Tensor],
                    step: int) -> torch.Tensor:
        """Turn the gathered input clips into the network input (pseudo anomalies go here)."""
        return x

    def _extra_loss(self, latent: torch.Tensor) -> torch.Tensor | None:
        """An additional loss on the latent features (None = none)."""
        return None

    # ---- Method API ---------------------------------------------------------------------------

    def resources_for(self) -> Resources:
        if not T.wants_gpu(self.device):
            return Resources(cpus=2, gpus=0.0, memory_mb=6000)
        return Resources(cpus=2, gpus=float(self.gpus), memory_mb=12000)

    def _check(self) -> None:
        T.check_precision(self.precision)
        if self.clip_len % 8 or not 8 <= self.clip_len <= 16:
            raise ValueError(f"clip_len must be 8 or 16 (temporal strides 2x2x2), "
                             f"got {self.clip_len}")
        if self.size % 16 or self.size < 16:
            raise ValueError(f"size must be a multiple of 16, got {self.size}")
        if self.batch_size < 1 or self.epochs < 1 or self.width <= 0:
            raise ValueError("batch_size and epochs must be >= 1 and width > 0")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0 = no snapshots), "
                             f"got {self.snapshot_every}")

    def stack_key(self) -> tuple[object, ...]:
        """Everything two instances must share to train as one computation: the network, the
        training schedule and the speed switches; not the seed, the variant or its parameters."""
        return ("occbench.video_ae.AE3D", self.epochs, self.batch_size, float(self.lr),
                self.size, self.clip_len, float(self.width), self.max_steps, self.fast_steps,
                self.precision, self.channels_last, self.compile, self.device,
                self.snapshot_every)

    def _begin(self, train: Data, context: Context, bank: FrameBank | None = None
               ) -> tuple[FrameBank, _Schedule]:
        """Checks, device, seeding, the training frames (``bank``, shared when stacked) and the
        schedule: everything of ``fit`` before the model exists."""
        if not isinstance(train, VideoData):
            raise TypeError(f"{self.name} needs VideoData, got {type(train).__name__}")
        self._check()
        dev = T.select_device(context.device, self.device)
        T.seed_everything(context.seed, dev)
        rng = np.random.default_rng(context.seed)
        self._fmt = T.memory_format(dev, self.channels_last, 5)
        self._dev = dev
        # Context.fast (tests, CI): a small model on small frames for a few steps; the clip length
        # stays, so the declared temporal context still holds
        self._S = min(self.size, FAST_SIZE) if context.fast else self.size
        width = min(self.width, FAST_WIDTH) if context.fast else self.width
        if bank is None:
            bank = FrameBank.build(train, self._S, dev)
        starts = bank.clip_starts(self.clip_len)
        per_epoch = len(starts) // self.batch_size
        if per_epoch == 0:
            raise ValueError(f"{self.name}: training videos give {len(starts)} clips of "
                             f"{self.clip_len} frames, fewer than one batch of {self.batch_size}")
        total = per_epoch * self.epochs
        if self.max_steps > 0:
            total = min(total, self.max_steps)
        if context.fast:
            total = min(total, self.fast_steps)
        self._prepare(bank, rng, dev, context)
        return bank, _Schedule(rng, starts, per_epoch, total, width)

    def _new_model(self, seed: int, width: float) -> AE3D:
        # re-seeded here so that a model's initial weights depend on its own seed only, whether
        # it is built alone or after the other members of a stack
        torch.manual_seed(seed)
        return AE3D(width).to(self._dev)

    def _epoch_plan(self, bank: FrameBank, sched: _Schedule
                    ) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
        perm = sched.rng.permutation(sched.starts)[: sched.per_epoch * self.batch_size]
        plan_np = self._plan_epoch(bank, perm, sched.rng)
        # one host→device copy per epoch, so steps never wait on the host
        plan = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self._dev, non_blocking=False)
                for k, v in plan_np.items()}
        return plan_np, plan

    def _step_inputs(self, bank: FrameBank, plan_np: dict[str, np.ndarray],
                     plan: dict[str, torch.Tensor], step: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, target) clips ``(B, 1, L, S, S)`` of one step, gathered on the device
        from the resident uint8 frames."""
        target = bank.gather(plan["target"][step], self._fmt)
        same = plan_np["input"] is plan_np["target"]
        x = target if same else bank.gather(plan["input"][step], self._fmt)
        return self._make_input(x, plan, step), target

    def _loss(self, recon: torch.Tensor, latent: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
        # in the target's dtype (fp32): under bf16 autocast the reconstruction comes out bf16
        loss = F.mse_loss(recon.to(target.dtype), target)
        extra = self._extra_loss(latent)
        return loss if extra is None else loss + extra

    def fit(self, train: Data, context: Context) -> Ae3dMethod:
        """Train on the normal videos of ``train``; returns ``self``."""
        bank, sched = self._begin(train, context)
        model = self._new_model(context.seed, sched.width)
        model = model.to(memory_format=self._fmt)  # type: ignore[call-overload]
        opt = torch.optim.Adam(model.parameters(), lr=self.lr,
                               fused=True if self._dev.type == "cuda" else None)
        step_model = T.maybe_compile(model, self.compile, self._dev)
        model.train()

        def forward(xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [step_model(xs[0])]

        def state(i: int) -> dict[str, torch.Tensor]:
            return dict(model.state_dict())

        _train_members([self], [context], [sched], bank, forward, opt, state)
        self.model_ = model
        self._step_model = step_model
        return self

    @classmethod
    def fit_stacked(cls, methods: Sequence[Method], train: Data,
                    contexts: Sequence[Context]) -> None:
        """Train ``methods`` (equal :meth:`stack_key`) as one stacked computation.

        Each member keeps its own seed (initial weights), data order, pseudo anomalies, Adam
        state (one stacked tensor per parameter; Adam is elementwise, so each slice evolves as
        alone) and BatchNorm statistics (stacked buffers under ``vmap``). The loss is the sum of
        the members' losses, whose gradient with respect to one member's weights is that member's
        own gradient. Afterwards each member holds its slice as an ordinary model, so ``score``
        works as after ``fit``. One member: plain :meth:`fit`.
        """
        members = list(methods)
        if len(members) != len(contexts):
            raise ValueError("fit_stacked needs one context per method")
        if not all(isinstance(m, Ae3dMethod) for m in members):
            raise TypeError("fit_stacked: every method must be an Ae3dMethod variant")
        ms: list[Ae3dMethod] = [m for m in members if isinstance(m, Ae3dMethod)]
        if len({m.stack_key() for m in ms}) != 1:
            raise ValueError("fit_stacked: the methods differ in architecture or schedule "
                             f"({[m.name for m in ms]}); group them by stack_key()")
        if len(ms) == 1:
            ms[0].fit(train, contexts[0])
            return
        bank: FrameBank | None = None
        scheds = []
        for m, c in zip(ms, contexts, strict=True):
            bank, sc = m._begin(train, c, bank)
            scheds.append(sc)
        assert bank is not None
        lead, dev = ms[0], ms[0]._dev
        models = [m._new_model(c.seed, sc.width) for m, c, sc in zip(ms, contexts, scheds,
                                                                     strict=True)]
        for mod in models:
            mod.train()
        params, buffers = stack_module_state(models)  # type: ignore[arg-type]
        # the stateless template: its own tensors are never used (functional_call swaps them)
        template = copy.deepcopy(models[0]).to("meta")

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out: tuple[torch.Tensor, torch.Tensor] = functional_call(template, (p, b), (x,))
            return out

        batched = vmap(one)
        step_fn = torch.compile(batched) if lead.compile and dev.type == "cuda" else batched
        opt = torch.optim.Adam(list(params.values()), lr=lead.lr,
                               fused=True if dev.type == "cuda" else None)

        def forward(xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            recon, latent = step_fn(params, buffers, torch.stack(xs))
            return [(recon[g], latent[g]) for g in range(len(xs))]

        def state(i: int) -> dict[str, torch.Tensor]:
            return {k: v[i] for k, v in (*params.items(), *buffers.items())}

        _train_members(ms, list(contexts), scheds, bank, forward, opt, state)
        with torch.no_grad():
            for i, (m, mod) in enumerate(zip(ms, models, strict=True)):
                mod.load_state_dict({k: v.detach() for k, v in state(i).items()})
                m.model_ = mod.to(memory_format=m._fmt)  # type: ignore[call-overload]
                m._step_model = m.model_  # scoring uses the plain module (no per-member compile)

    @torch.no_grad()
    def _score_model(self, model: nn.Module | object, bank: FrameBank) -> dict[str, np.ndarray]:
        dev = self._dev
        fmt = T.memory_format(dev, self.channels_last, 5)
        L, mid = self.clip_len, self.clip_len // 2
        starts = bank.clip_starts(L)
        out = np.full(int(bank.lengths.sum()), np.nan, dtype=np.float64)
        bs = self.score_batch_size
        offs = torch.arange(L, device=dev)
        for i in range(0, len(starts), bs):
            chunk = starts[i:i + bs]
            n = len(chunk)
            # pad the last batch to full size so a compiled model sees one shape only
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n)]) if n < bs else chunk
            idx = torch.from_numpy(padded).to(dev).unsqueeze(1) + offs
            x = bank.gather(idx, fmt)
            with T.autocast(dev, self.precision):
                recon, _ = model(x)  # type: ignore[operator]
            p = psnr01(recon[:n, 0, mid], x[:n, 0, mid])
            out[chunk + mid] = -p.double().cpu().numpy()
        scores: dict[str, np.ndarray] = {}
        for (vid, n), s0 in zip(bank.index, bank.starts, strict=True):
            scores[vid] = out[s0:s0 + n]
        return scores

    @torch.no_grad()
    def score(self, test: Data, context: Context) -> dict[str, np.ndarray]:
        """Per video a ``(T,)`` array of −PSNR (dB) of each frame's reconstruction; NaN borders.

        With ``snapshot_every`` > 0 also reports every kept snapshot's scores, and the final
        model's as the last epoch, through ``context.snapshot``.
        """
        if not isinstance(test, VideoData):
            raise TypeError(f"{self.name} needs VideoData, got {type(test).__name__}")
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{self.name}: score() called before fit()")
        bank = FrameBank.build(test, self._S, self._dev)
        self.model_.eval()
        scores = self._score_model(self._step_model, bank)
        if self.snapshot_every > 0:
            final = int(self.train_stats_["epochs"])
            scratch = copy.deepcopy(self.model_)
            for epoch, sd in sorted(self.snapshots_.items()):
                if epoch == final:
                    continue
                scratch.load_state_dict(sd)
                scratch.eval()
                context.snapshot(epoch, self._score_model(scratch, bank))
            context.snapshot(final, scores)
        self.model_.train()
        return scores

    def n_parameters(self) -> int | None:
        if not hasattr(self, "model_"):
            return None
        return int(sum(p.numel() for p in self.model_.parameters()))


def _train_members(ms: Sequence[Ae3dMethod], contexts: Sequence[Context],
                   scheds: Sequence[_Schedule], bank: FrameBank,
                   forward: Callable[[list[torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]],
                   opt: torch.optim.Optimizer,
                   state: Callable[[int], dict[str, torch.Tensor]]) -> None:
    """The training loop of one model (``fit``) or of a stack (``fit_stacked``).

    ``forward`` maps the members' input clips to their ``(reconstruction, latent)``; ``opt``
    holds every member's weights; ``state(i)`` is member i's state dict (for snapshots). Each
    member draws its epochs from its own schedule; all share the number of steps (stack_key).
    Sets ``train_stats_`` and ``snapshots_`` (epoch → CPU state dict) on every member.
    """
    lead, dev = ms[0], ms[0]._dev
    per_epoch, total = scheds[0].per_epoch, scheds[0].total
    for m in ms:
        m.snapshots_ = {}
    T.reset_peak_memory(dev)
    t0 = t_warm = time.perf_counter()
    done = epoch = 0
    loss_sums = torch.zeros(len(ms), device=dev)
    while done < total:
        plans = [m._epoch_plan(bank, sc) for m, sc in zip(ms, scheds, strict=True)]
        loss_sums.zero_()
        n_ep = min(per_epoch, total - done)
        for s in range(n_ep):
            pairs = [m._step_inputs(bank, pn, pt, s) for m, (pn, pt) in zip(ms, plans,
                                                                             strict=True)]
            with T.autocast(dev, lead.precision):
                outs = forward([x for x, _ in pairs])
                losses = [m._loss(r, z, tgt) for m, (r, z), (_, tgt) in zip(ms, outs, pairs,
                                                                            strict=True)]
                loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            loss_sums += torch.stack(losses).detach()
            if done + s + 1 == TIMING_WARMUP_STEPS:
                T.synchronize(dev)  # once: compilation and autotuning end inside the warm-up
                t_warm = time.perf_counter()
        done += n_ep
        epoch += 1
        rate = done * lead.batch_size / (time.perf_counter() - t0)
        for c, ls in zip(contexts, loss_sums.tolist(), strict=True):
            c.logger.info("epoch %d: %d steps, mean loss %.6f, %.1f clips/s%s", epoch, n_ep,
                          ls / max(n_ep, 1), rate,
                          f" per model, {len(ms)} stacked" if len(ms) > 1 else "")
        if lead.snapshot_every > 0 and n_ep == per_epoch and epoch % lead.snapshot_every == 0:
            for i, m in enumerate(ms):  # a CPU copy: a 60-epoch run keeps 12 of ~24 MB each
                m.snapshots_[epoch] = {k: v.detach().to("cpu", copy=True)
                                       for k, v in state(i).items()}
    T.synchronize(dev)
    t_end = time.perf_counter()
    wall = t_end - t0
    steady = None  # clips/s of all stacked models together, after the warm-up steps
    if done >= 2 * TIMING_WARMUP_STEPS:
        steady = round((done - TIMING_WARMUP_STEPS) * lead.batch_size * len(ms)
                       / max(t_end - t_warm, 1e-9), 2)
    for m, c in zip(ms, contexts, strict=True):
        m.train_stats_ = {
            "steps": done, "epochs": epoch, "clips": done * lead.batch_size,
            "train_s": round(wall, 3),
            "clips_per_s": round(done * lead.batch_size / max(wall, 1e-9), 2),
            "steady_clips_per_s_all": steady, "stacked": len(ms),
            "peak_gpu_mb": T.peak_memory_mb(dev),
        }
        c.logger.info("trained: %s", m.train_stats_)


class LntraSkip(Ae3dMethod):
    """LNTRA skip-frame pseudo anomalies (Astrid et al. 2021, sec. 3.3.2).

    With probability ``p`` (0.2) a training input clip ``(I_n, I_n+1, …)`` is replaced by
    ``(I_n, I_n+s, …, I_n+(L-1)s)`` with ``s`` drawn uniformly from ``skips`` (2, 3, 4, 5); the
    target stays the normal clip starting at ``n``. When a skip clip would run past its video's
    end, ``n`` is redrawn among the starts of that video where it fits (the release re-samples
    too); a video too short for any ``s`` clip repeats its last frame.
    """

    name: ClassVar[str] = "lntra-skip"
    description: ClassVar[str] = "LNTRA: 3D AE trained not to reconstruct skip-frame clips"

    def __init__(self, epochs: int = 60, batch_size: int = 4, lr: float = 1e-4,
                 size: int = 256, clip_len: int = 16, width: float = 1.0, max_steps: int = 0,
                 fast_steps: int = 2, score_batch_size: int = 16, precision: str = "bf16",
                 channels_last: bool = True, compile: bool = False, device: str = "auto",
                 gpus: float = 1.0, snapshot_every: int = 0, p: float = 0.2,
                 skips: Sequence[int] = (2, 3, 4, 5)) -> None:
        super().__init__(epochs, batch_size, lr, size, clip_len, width, max_steps, fast_steps,
                         score_batch_size, precision, channels_last, compile, device, gpus,
                         snapshot_every)
        self.p = p
        self.skips = skips

    def _plan_epoch(self, bank: FrameBank, starts: np.ndarray, rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        skips = np.asarray(list(self.skips), dtype=np.int64)
        if skips.size == 0 or (skips < 1).any():
            raise ValueError(f"skips must be positive integers, got {self.skips!r}")
        n = starts.copy()
        pseudo = rng.random(n.size) < self.p
        s = np.where(pseudo, rng.choice(skips, size=n.size), 1)
        first, end = bank.video_bounds(n)
        span = (self.clip_len - 1) * s
        bad = n + span >= end
        # redraw the start inside the same video where the skip clip fits
        room = end - span - first  # number of valid starts for this s
        redraw = first + np.floor(rng.random(n.size) * np.maximum(room, 1)).astype(np.int64)
        n = np.where(bad & (room > 0), redraw, n)
        offs = np.arange(self.clip_len)
        inp = np.minimum(n[:, None] + s[:, None] * offs, end[:, None] - 1)
        tgt = np.minimum(n[:, None] + offs, end[:, None] - 1)
        B, L = self.batch_size, self.clip_len
        return {"input": inp.reshape(-1, B, L), "target": tgt.reshape(-1, B, L)}


class LntraPatch(Ae3dMethod):
    """LNTRA patch pseudo anomalies (Astrid et al. 2021, sec. 3.3.1), SmoothMixS-blended.

    With probability ``p`` (0.2) an intruder image, resized to the frame size (bilinear,
    ``align_corners=True`` as the release), is blended into every frame of the clip through a
    SmoothMixS mask of a box ``cw x ch`` with ``cw, ch = max(10, int(U(0, alpha) * size))``
    (``alpha`` 0.5), centred uniformly in the frame and moving by an integer in
    ``[-beta, beta]`` per frame in x and y (``beta`` 10 on Ped2, 25 elsewhere), clamped to the
    frame. The target stays the normal clip.

    ``intruder``: ``"noise"`` (default: procedural 3-octave value-noise textures of 32x32,
    generated from the seed — no download; the paper uses CIFAR-100 and shows other intruder sets
    also help), ``"self"`` (the training frames, the paper's Ped2-as-intruder ablation), the name
    of any registered image dataset — ``"cifar100"`` is the paper's setting; its training images
    of every class are used, converted to grey — or a path to an ``.npy`` of uint8 images
    ``(M, h, w[, 3])``.
    """

    name: ClassVar[str] = "lntra-patch"
    description: ClassVar[str] = "LNTRA: 3D AE trained not to reconstruct SmoothMixS patches"

    def __init__(self, epochs: int = 60, batch_size: int = 4, lr: float = 1e-4,
                 size: int = 256, clip_len: int = 16, width: float = 1.0, max_steps: int = 0,
                 fast_steps: int = 2, score_batch_size: int = 16, precision: str = "bf16",
                 channels_last: bool = True, compile: bool = False, device: str = "auto",
                 gpus: float = 1.0, snapshot_every: int = 0, p: float = 0.2,
                 alpha: float = 0.5, beta: int = 10, intruder: str = "noise") -> None:
        super().__init__(epochs, batch_size, lr, size, clip_len, width, max_steps, fast_steps,
                         score_batch_size, precision, channels_last, compile, device, gpus,
                         snapshot_every)
        self.p = p
        self.alpha = alpha
        self.beta = beta
        self.intruder = intruder

    def auxiliary_datasets(self) -> dict[str, str]:
        return {"intruder": self.intruder} if intruder_is_dataset(self.intruder) else {}

    def _prepare(self, bank: FrameBank, rng: np.random.Generator, dev: torch.device,
                 context: Context) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        intr = load_intruders(self.intruder, bank, rng, context.auxiliary)
        self._intr = torch.from_numpy(intr).to(dev)

    def _plan_epoch(self, bank: FrameBank, starts: np.ndarray, rng: np.random.Generator
                    ) -> dict[str, np.ndarray]:
        plan = super()._plan_epoch(bank, starts, rng)
        n, B, L, S = starts.size, self.batch_size, self.clip_len, self._S
        pseudo = rng.random(n) < self.p
        cw = np.maximum(10, (rng.uniform(0, self.alpha, n) * S).astype(np.int64))
        ch = np.maximum(10, (rng.uniform(0, self.alpha, n) * S).astype(np.int64))
        cx = np.empty((n, L), np.int64)
        cy = np.empty((n, L), np.int64)
        cx[:, 0] = rng.integers(0, S, n)
        cy[:, 0] = rng.integers(0, S, n)
        for t in range(1, L):  # the centre random-walks, clamped to the frame
            cx[:, t] = np.clip(cx[:, t - 1] + rng.integers(-self.beta, self.beta + 1, n), 0, S)
            cy[:, t] = np.clip(cy[:, t - 1] + rng.integers(-self.beta, self.beta + 1, n), 0, S)
        which = rng.integers(0, self._intr.shape[0], n)
        plan.update(
            pseudo=pseudo.reshape(-1, B).astype(np.float32), which=which.reshape(-1, B),
            cw=cw.reshape(-1, B).astype(np.float32), ch=ch.reshape(-1, B).astype(np.float32),
            cx=cx.reshape(-1, B, L).astype(np.float32), cy=cy.reshape(-1, B, L).astype(np.float32))
        return plan

    def _make_input(self, x: torch.Tensor, plan: dict[str, torch.Tensor],
                    step: int) -> torch.Tensor:
        S = self._S
        img = self._intr[plan["which"][step]].unsqueeze(1).float().mul_(1 / 127.5).sub_(1)
        if img.shape[-1] != S or img.shape[-2] != S:
            img = F.interpolate(img, size=(S, S), mode="bilinear", align_corners=True)
        mask = smoothmix_masks(plan["cx"][step], plan["cy"][step], plan["cw"][step],
                               plan["ch"][step], S)
        mask = (mask * plan["pseudo"][step].view(-1, 1, 1, 1)).unsqueeze(1)  # (B, 1, L, S, S)
        # blending into a new tensor leaves the target clip (same storage as x) intact
        return (mask * img.unsqueeze(2) + (1 - mask) * x).contiguous(memory_format=self._fmt)


class _LatentConstriction(Ae3dMethod):
    """Shared code of the two latent-constriction variants (Astrid et al., ``papers/000``).

    ``L = L_R + lam * L_C``. The latent ``F`` of the encoder, ``(B, C', T', H', W')``, is read as
    one feature vector ``F_{j,i}`` of ``T'·C'`` numbers per sample ``j`` and spatial position
    ``i`` (the paper's ``F_{j,i} ∈ R^{T'×C'}``); ``L_C`` is the mean over all ``(j, i)`` of a
    penalty on its Euclidean norm ``||F_{j,i}||`` relative to the radius ``alpha``.
    The paper states the idea, not the exact formula or the best values; ``lam`` and ``alpha``
    defaults here are this implementation's choice (documented in docs/ped2-reproduction.md).
    """

    def __init__(self, epochs: int = 60, batch_size: int = 4, lr: float = 1e-4,
                 size: int = 256, clip_len: int = 16, width: float = 1.0, max_steps: int = 0,
                 fast_steps: int = 2, score_batch_size: int = 16, precision: str = "bf16",
                 channels_last: bool = True, compile: bool = False, device: str = "auto",
                 gpus: float = 1.0, snapshot_every: int = 0, lam: float = 0.1,
                 alpha: float = 1.0) -> None:
        super().__init__(epochs, batch_size, lr, size, clip_len, width, max_steps, fast_steps,
                         score_batch_size, precision, channels_last, compile, device, gpus,
                         snapshot_every)
        self.lam = lam
        self.alpha = alpha

    @staticmethod
    def latent_norms(latent: torch.Tensor) -> torch.Tensor:
        """``(B, C', T', H', W')`` → ``(B, H'·W')`` norms of the ``T'·C'`` vectors."""
        b, c, t, h, w = latent.shape
        return latent.float().reshape(b, c * t, h * w).norm(dim=1)

    def _penalty(self, norms: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _extra_loss(self, latent: torch.Tensor) -> torch.Tensor | None:
        return self.lam * self._penalty(self.latent_norms(latent)).mean()


class LconInside(_LatentConstriction):
    """Latent constriction *inside* the norm sphere: ``L_C = mean max(0, ||F_{j,i}|| − alpha)``.

    Features already inside the sphere of radius ``alpha`` cost nothing; outside, the penalty
    grows linearly with the distance to the sphere (a hinge).
    """

    name: ClassVar[str] = "lcon-inside"
    description: ClassVar[str] = "3D AE + latent constriction inside a norm sphere"

    def _penalty(self, norms: torch.Tensor) -> torch.Tensor:
        return (norms - self.alpha).clamp_min(0)


class LconOnSphere(_LatentConstriction):
    """Latent constriction *onto* the norm sphere: ``L_C = mean (||F_{j,i}|| − alpha)²``.

    Every latent feature vector is pulled to the sphere's surface, from inside and outside.
    """

    name: ClassVar[str] = "lcon-onsphere"
    description: ClassVar[str] = "3D AE + latent constriction onto a norm sphere"

    def _penalty(self, norms: torch.Tensor) -> torch.Tensor:
        return (norms - self.alpha).pow(2)


__all__ = ["AE3D", "Ae3dMethod", "FrameBank", "LconInside", "LconOnSphere", "LntraPatch",
           "LntraSkip", "psnr01", "smoothmix_masks", "train_flops_per_clip", "value_noise_images"]
