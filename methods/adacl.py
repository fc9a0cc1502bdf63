"""ADACL: Augment to Detect Anomalies with Continuous Labelling (Khazaie, Wong, Mohsenzadeh).

A small CNN regressor (< 300k parameters) is trained with MSE to output a value in [0, 0.3] for
normal images and in [0.7, 1] for anomalies created from them by augmentation (cut-paste,
puzzle, rotation by 90°/270°, mix-up with a rotated copy; see :mod:`occbench.methods.augment`).
Labels are drawn uniformly from those intervals afresh every epoch ("continuous labelling").
Adam with a cyclic (triangular) learning rate; early stopping on a validation set of 150 normal
training images held out from training plus one created anomaly of each (normal data only):
the epoch with the best validation AUROC is kept, ties broken by the lower validation MSE.

Score: the network output clipped to [0, 1]; higher = more anomalous.

Video (Ped2 protocol of the paper): each frame is cut into a grid of ``patch`` x ``patch`` patches;
training uses the patches of training frames that contain moving objects (the paper keeps
patches with pedestrians; without a detector we keep the patches whose mean absolute difference
to the previous frame is at or above the ``motion_quantile`` quantile of all training patches, i.e.
the top 20 % by default), and a frame's score is
the maximum score over its patches that show motion by the same threshold (all patches when none
does). ``frame_score`` picks another reduction over the moving patches: ``"top3"`` (mean of the
three highest), ``"mean"``, or ``"max-x-motion"`` (max of score × motion energy, which adds a speed
cue the paper's method does not have).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from occbench.harness.api import Context, Data, ImageData, Method, Video, VideoData, split_frames
from occbench.methods.augment import AUGMENTATIONS, make_anomalies
from occbench.methods.dcae import TORCH_RESOURCES, batched, seed_torch, to_tensor, torch_device
from sklearn.metrics import roc_auc_score
from torch import nn


class AdaclNet(nn.Module):
    """conv3x3 → BN → ReLU → maxpool per width, global average pool, MLP head to one value.

    Works for any input of at least ``2**len(widths)`` pixels a side. With the default widths
    (32, 64, 128) and one grey channel it has about 102k parameters.
    """

    def __init__(self, channels: int, widths: tuple[int, ...] = (32, 64, 128),
                 hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean(dim=(2, 3))
        return self.head(f).squeeze(1)


FRAME_SCORES = ("max", "top3", "mean", "max-x-motion")


def _reduce(s: np.ndarray, motion: np.ndarray, moving: np.ndarray, how: str) -> np.ndarray:
    """Per-frame score ``(T,)`` from patch scores ``s`` and motion ``(T, P)`` over ``moving``."""
    if how == "max":
        return np.where(moving, s, -np.inf).max(axis=1)
    if how == "max-x-motion":
        return np.where(moving, s * motion, -np.inf).max(axis=1)
    if how == "mean":
        return (s * moving).sum(axis=1) / moving.sum(axis=1)
    top = np.sort(np.where(moving, s, -np.inf), axis=1)[:, ::-1][:, :3]
    ok = np.isfinite(top)
    return np.where(ok, top, 0.0).sum(axis=1) / ok.sum(axis=1)


class ADACL(Method):
    """Augmentation-made anomalies + continuous-label regression; score = clipped output."""

    name = "adacl"
    version = "1"
    modalities = frozenset({"image", "video"})
    resources = TORCH_RESOURCES
    description = "ADACL (Khazaie et al.): CNN regressor on augmentation-made anomalies"

    def __init__(self, epochs: int = 10, batch_size: int = 64, base_lr: float = 1e-4,
                 max_lr: float = 1e-3, normal_interval: tuple[float, float] = (0.0, 0.3),
                 anomaly_interval: tuple[float, float] = (0.7, 1.0), n_val: int = 150,
                 patience: int = 5, widths: tuple[int, ...] = (32, 64, 128),
                 augmentations: tuple[str, ...] = tuple(AUGMENTATIONS), clip: bool = True,
                 patch: int = 30, motion_quantile: float = 0.8,
                 max_train_patches: int = 20000, frame_score: str = "max") -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.base_lr = base_lr
        self.max_lr = max_lr
        self.normal_interval = normal_interval
        self.anomaly_interval = anomaly_interval
        self.n_val = n_val
        self.patience = patience
        self.widths = widths
        self.augmentations = augmentations
        self.clip = clip
        self.patch = patch
        self.motion_quantile = motion_quantile
        self.max_train_patches = max_train_patches
        self.frame_score = frame_score

    # -- images ------------------------------------------------------------------------------
    def fit(self, train: Data, context: Context) -> ADACL:
        if isinstance(train, VideoData):
            patches = self._train_patches(train, context)
            return self._fit_images(patches, context)
        if not isinstance(train, ImageData):
            raise TypeError(f"adacl: unsupported data {type(train).__name__}")
        return self._fit_images(train.images, context)

    def _fit_images(self, images: np.ndarray, context: Context) -> ADACL:
        dev = torch_device(context)
        g = seed_torch(context.seed)
        rng = context.rng()
        bad = [a for a in self.augmentations if a not in AUGMENTATIONS]
        if bad:
            raise ValueError(f"adacl: unknown augmentations {bad} (known: {sorted(AUGMENTATIONS)})")
        n_val = min(self.n_val, len(images) // 5)
        if context.fast:
            images = images[:256]
            n_val = min(n_val, 32)
        if n_val < 2:
            raise ValueError(f"adacl needs at least 10 training images, got {len(images)}")
        perm = rng.permutation(len(images))
        val_imgs, tr_imgs = images[perm[:n_val]], images[perm[n_val:]]
        val_anom, _ = make_anomalies(val_imgs, rng, self.augmentations)
        x_val = to_tensor(np.concatenate([val_imgs, val_anom]))
        y_val = np.r_[np.zeros(n_val), np.ones(n_val)]
        t_val = torch.from_numpy(np.r_[rng.uniform(*self.normal_interval, n_val),
                                       rng.uniform(*self.anomaly_interval, n_val)]).float()
        x_tr = to_tensor(tr_imgs)

        net = AdaclNet(images.shape[-1], tuple(self.widths)).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=self.base_lr)
        steps_per_epoch = int(np.ceil(2 * len(tr_imgs) / self.batch_size))
        sched = torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=self.base_lr, max_lr=self.max_lr, step_size_up=steps_per_epoch,
            mode="triangular", cycle_momentum=False)
        epochs = min(self.epochs, 2) if context.fast else self.epochs
        best: tuple[float, float] = (-1.0, float("inf"))
        best_state: dict[str, Any] | None = None
        since_best = 0
        self.history_: list[dict[str, float]] = []
        for ep in range(epochs):
            # Fresh anomalies and fresh continuous labels each epoch.
            anom, _ = make_anomalies(tr_imgs, rng, self.augmentations)
            x = torch.cat([x_tr, to_tensor(anom)])
            t = torch.from_numpy(np.r_[rng.uniform(*self.normal_interval, len(tr_imgs)),
                                       rng.uniform(*self.anomaly_interval, len(anom))]).float()
            order = torch.randperm(len(x), generator=g)
            net.train()
            total = 0.0
            for i in range(0, len(x), self.batch_size):
                idx = order[i:i + self.batch_size]
                if len(idx) < 2:  # batch norm needs two samples
                    continue
                loss = F.mse_loss(net(x[idx].to(dev)), t[idx].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            net.eval()
            pv = batched(net, x_val, dev)
            v_auc = float(roc_auc_score(y_val, pv))
            v_mse = float(np.mean((pv - t_val.numpy()) ** 2))
            self.history_.append({"epoch": ep + 1, "train_mse": total / len(x),
                                  "val_auc": v_auc, "val_mse": v_mse})
            context.logger.debug("adacl epoch %d: %s", ep + 1, self.history_[-1])
            hook = context.extras.get("adacl_epoch_hook")
            if hook is not None:  # diagnostics only (e.g. test AUROC per epoch in experiments)
                hook(ep + 1, net)
            if (v_auc, -v_mse) > (best[0], -best[1]):
                best, since_best = (v_auc, v_mse), 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.best_epoch_ = int(max(self.history_, key=lambda h: (h["val_auc"], -h["val_mse"]))
                               ["epoch"])
        return self

    def _predict(self, images: np.ndarray, context: Context) -> np.ndarray:
        out = batched(self.net_, to_tensor(images), torch_device(context))
        return np.clip(out, 0.0, 1.0) if self.clip else out

    def score(self, test: Data, context: Context) -> Any:
        if isinstance(test, VideoData):
            return self._score_video(test, context)
        if not isinstance(test, ImageData):
            raise TypeError(f"adacl: unsupported data {type(test).__name__}")
        return self._predict(test.images, context)

    # -- video: 30x30 patches ------------------------------------------------------------------
    def _grid(self, video: Video) -> tuple[np.ndarray, np.ndarray]:
        """Patches ``(T, P, p, p, C)`` of the frame grid and their motion energy ``(T, P)``."""
        f = np.asarray(video.frames)
        t, h, w, c = f.shape
        p = self.patch
        if h < p or w < p:
            raise ValueError(f"adacl: video {video.video_id!r} frames {h}x{w} are smaller than "
                             f"patch={p}; lower `patch`")
        gh, gw = h // p, w // p
        f = f[:, :gh * p, :gw * p]
        patches = f.reshape(t, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(
            t, gh * gw, p, p, c)
        g = f.astype(np.float32).mean(-1)
        diff = np.abs(np.diff(g, axis=0, prepend=g[:1]))
        if t > 1:
            diff[0] = diff[1]  # the first frame has no predecessor: borrow the next difference
        motion = diff.reshape(t, gh, p, gw, p).mean(axis=(2, 4)).reshape(t, gh * gw)
        return patches, motion

    def _train_patches(self, train: VideoData, context: Context) -> np.ndarray:
        grids = [self._grid(v) for v in train.videos]
        motion = np.concatenate([m.ravel() for _, m in grids])
        self.motion_threshold_ = float(np.quantile(motion, self.motion_quantile))
        keep = np.concatenate([p[m >= self.motion_threshold_] for p, m in grids])
        rng = np.random.default_rng(context.seed + 1)
        cap = 2000 if context.fast else self.max_train_patches
        if len(keep) > cap:
            keep = keep[np.sort(rng.choice(len(keep), cap, replace=False))]
        context.logger.info("adacl video: %d training patches of %dx%d", len(keep), self.patch,
                            self.patch)
        return keep

    def _score_video(self, test: VideoData, context: Context) -> dict[str, np.ndarray]:
        thr = getattr(self, "motion_threshold_", None)
        if thr is None:
            raise RuntimeError("adacl: fit on video before scoring video")
        if self.frame_score not in FRAME_SCORES:
            raise ValueError(f"adacl: frame_score must be one of {FRAME_SCORES}, "
                             f"got {self.frame_score!r}")
        out = []
        for v in test.videos:
            patches, motion = self._grid(v)
            t, n = motion.shape
            s = self._predict(patches.reshape(t * n, *patches.shape[2:]), context).reshape(t, n)
            moving = motion >= thr
            # frames with no moving patch fall back to all their patches
            moving[~moving.any(axis=1)] = True
            out.append(_reduce(s, motion, moving, self.frame_score))
        index = [(v.video_id, len(v)) for v in test.videos]
        return split_frames(np.concatenate(out), index)

    def n_parameters(self) -> int | None:
        net = getattr(self, "net_", None)
        return None if net is None else sum(p.numel() for p in net.parameters())
