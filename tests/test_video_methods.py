"""The video reconstruction methods (ae3d, lntra-patch, lntra-skip, lcon-*): tiny CPU configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from occbench.harness import registry
from occbench.harness.api import Context, ImageData, Video, VideoData
from occbench.methods.video_ae import (
    AE3D,
    Ae3dMethod,
    FrameBank,
    LconInside,
    LconOnSphere,
    LntraPatch,
    LntraSkip,
    load_intruders,
    psnr01,
    smoothmix_masks,
    train_flops_per_clip,
)

TINY = {"size": 32, "width": 0.125, "epochs": 1, "max_steps": 3, "score_batch_size": 8}
ALL = [Ae3dMethod, LntraSkip, LntraPatch, LconInside, LconOnSphere]


def _videos(n: int, t: int, prefix: str, seed: int = 0, hw: tuple[int, int] = (24, 40),
            channels: int = 1) -> VideoData:
    rng = np.random.default_rng(seed)
    vids = []
    for i in range(n):
        f = rng.integers(0, 40, size=(t, *hw, channels)).astype(np.uint8)
        for k in range(t):  # a small bright "pedestrian" walking right
            x = 2 + k % (hw[1] - 6)
            f[k, 8:14, x:x + 3] = 200
        vids.append(Video(f"{prefix}{i}", f))
    return VideoData(tuple(vids))


@pytest.fixture(autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    # tiny 3D convolutions run several times faster on one thread than on two busy cores
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def train() -> VideoData:
    return _videos(2, 30, "tr")


@pytest.fixture(scope="module")
def test_data() -> VideoData:
    return _videos(2, 22, "te", seed=1)


def test_registered() -> None:
    for cls in ALL:
        assert registry.methods.get(cls.name) is cls
        assert cls.modalities == frozenset({"video"})
        assert cls.temporal_context == (8, 7)


def test_architecture_is_gongs_3d_ae() -> None:
    net = AE3D(1.0)
    convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [96, 128, 256, 256]
    assert [c.stride for c in convs] == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    deconvs = [m for m in net.decoder if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [d.out_channels for d in deconvs] == [256, 128, 96, 1]
    assert isinstance(net.decoder[-1], torch.nn.Tanh)
    # version 2 had 5,980,801: with the biases of the 7 convolutions that BatchNorm cancels
    biases = (96 + 128 + 256 + 256) + (256 + 128 + 96)
    assert sum(p.numel() for p in net.parameters()) == 5_980_801 - biases == 5_979_585
    # the figure for this AE: about 192 GFLOP per training clip (16x256x256)
    assert train_flops_per_clip() / 1e9 == pytest.approx(193.0, abs=0.5)
    small = AE3D(0.125)
    x = torch.rand(2, 1, 16, 32, 32) * 2 - 1
    recon, z = small(x)
    assert recon.shape == x.shape and z.shape == (2, 32, 2, 2, 2)
    assert recon.abs().max() <= 1


def test_psnr_on_unit_range() -> None:
    target = torch.zeros(3, 8, 8)
    # an error of 0.2 on [-1, 1] is 0.1 on [0, 1]: MSE 0.01, PSNR 20 dB
    assert torch.allclose(psnr01(target + 0.2, target), torch.full((3,), 20.0), atol=1e-4)


def test_smoothmix_mask_profile() -> None:
    c = torch.tensor([[32.0]])
    m = smoothmix_masks(c, c, torch.tensor([20.0]), torch.tensor([20.0]), 64)[0, 0]
    assert m[32, 32] == 1 and m[23, 23] == 1  # inside the 20x20 box
    assert m[0, 0] == 0 and m[32, 50] == 0  # far outside
    edge = m[32, 42:45]  # the ramp: 1 at the box edge, then falling over ~1 px to 0
    assert edge[0] == 1 and 0 <= edge[-1] < edge[0]
    assert ((m >= 0) & (m <= 1)).all()


def test_skip_plan_strides_and_targets(train: VideoData) -> None:
    m = LntraSkip(p=1.0, skips=[2, 3], clip_len=8, batch_size=2, **{**TINY, "size": 32})
    bank = FrameBank.build(train, 32, torch.device("cpu"))
    starts = bank.clip_starts(8)
    plan = m._plan_epoch(bank, starts[: len(starts) // 2 * 2], np.random.default_rng(0))
    inp = plan["input"].reshape(-1, 8)
    tgt = plan["target"].reshape(-1, 8)
    steps = np.diff(inp, axis=1)
    assert set(np.unique(steps)) <= {2, 3} and (steps == steps[:, :1]).all()
    assert (np.diff(tgt, axis=1) == 1).all() and (inp[:, 0] == tgt[:, 0]).all()
    first, end = bank.video_bounds(inp[:, 0])
    assert (inp >= first[:, None]).all() and (inp < end[:, None]).all()  # never crosses videos
    none = LntraSkip(p=0.0, clip_len=8, batch_size=2, **TINY)._plan_epoch(
        bank, starts[:4], np.random.default_rng(0))
    assert np.array_equal(none["input"], none["target"])


def test_patch_changes_only_pseudo_inputs(train: VideoData) -> None:
    dev = torch.device("cpu")
    bank = FrameBank.build(train, 32, dev)
    starts = bank.clip_starts(16)[:4]
    for p, changed in ((1.0, True), (0.0, False)):
        m = LntraPatch(p=p, alpha=0.5, beta=3, batch_size=4, **TINY)
        m._S, m._fmt = 32, torch.contiguous_format
        rng = np.random.default_rng(0)
        m._prepare(bank, rng, dev, Context())
        plan_np = m._plan_epoch(bank, starts, rng)
        plan = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in plan_np.items()}
        x = bank.gather(plan["target"][0], torch.contiguous_format)
        before = x.clone()
        out = m._make_input(x, plan, 0)
        assert torch.equal(x, before)  # the target is never modified
        assert out.shape == x.shape and out.abs().max() <= 1
        assert bool((out != x).any()) is changed


def test_intruder_choices(tmp_path, train: VideoData) -> None:  # type: ignore[no-untyped-def]
    bank = FrameBank.build(train, 32, torch.device("cpu"))
    rng = np.random.default_rng(0)
    noise = load_intruders("noise", bank, rng)
    assert noise.dtype == np.uint8 and noise.ndim == 3 and noise.std() > 10
    assert load_intruders("self", bank, rng).shape == (60, 32, 32)
    rgb = np.random.default_rng(1).integers(0, 255, (5, 8, 8, 3)).astype(np.uint8)
    np.save(tmp_path / "cifar.npy", rgb)
    assert load_intruders(str(tmp_path / "cifar.npy"), bank, rng).shape == (5, 8, 8)
    np.save(tmp_path / "bad.npy", rgb.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_intruders(str(tmp_path / "bad.npy"), bank, rng)
    with pytest.raises(ValueError, match="noise"):
        load_intruders(str(tmp_path / "missing.npy"), bank, rng)
    # a registered image dataset's name: the harness hands its images over as auxiliary
    pool = ImageData(rgb)
    grey = load_intruders("cifar100", bank, rng, {"intruder": pool})
    assert grey.shape == (5, 8, 8) and grey.dtype == np.uint8
    assert np.array_equal(grey, load_intruders(str(tmp_path / "cifar.npy"), bank, rng))
    with pytest.raises(ValueError, match="no auxiliary 'intruder' images"):
        load_intruders("cifar100", bank, rng)
    assert LntraPatch(intruder="cifar100").auxiliary_datasets() == {"intruder": "cifar100"}
    assert LntraPatch().auxiliary_datasets() == {}
    assert LntraPatch(intruder="x.npy").auxiliary_datasets() == {}


def test_constriction_penalties() -> None:
    lat = torch.zeros(1, 2, 2, 1, 2)
    lat[0, 0, 0, 0, 0] = 3.0  # one position with norm 3, the other with norm 0
    norms = LconInside.latent_norms(lat)
    assert torch.allclose(norms, torch.tensor([[3.0, 0.0]]))
    inside = LconInside(lam=2.0, alpha=1.0)
    on = LconOnSphere(lam=2.0, alpha=1.0)
    assert float(inside._extra_loss(lat)) == pytest.approx(2.0 * (2.0 + 0.0) / 2)  # type: ignore[arg-type]
    assert float(on._extra_loss(lat)) == pytest.approx(2.0 * (4.0 + 1.0) / 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_scores_borders_and_determinism(cls: type[Ae3dMethod], train: VideoData,
                                        test_data: VideoData) -> None:
    s1 = cls(**TINY).fit(train, Context(seed=3)).score(test_data, Context(seed=3))
    s2 = cls(**TINY).fit(train, Context(seed=3)).score(test_data, Context(seed=3))
    assert list(s1) == test_data.video_ids
    for vid, s in s1.items():
        assert s.shape == (22,)
        assert np.isnan(s[:8]).all() and np.isnan(s[-7:]).all()
        assert np.isfinite(s[8:-7]).all()
        np.testing.assert_array_equal(s, s2[vid])  # same seed → identical scores on CPU


def test_seed_changes_scores(train: VideoData, test_data: VideoData) -> None:
    a = Ae3dMethod(**TINY).fit(train, Context(seed=0)).score(test_data, Context(seed=0))
    b = Ae3dMethod(**TINY).fit(train, Context(seed=1)).score(test_data, Context(seed=1))
    assert not np.array_equal(a["te0"], b["te0"], equal_nan=True)


def test_score_is_negative_psnr_of_the_ninth_frame(train: VideoData,
                                                   test_data: VideoData) -> None:
    m = Ae3dMethod(**TINY).fit(train, Context(seed=0))
    scores = m.score(test_data, Context(seed=0))
    bank = FrameBank.build(test_data, 32, torch.device("cpu"))
    k = 5  # the clip of frames 5..20 scores frame 13
    x = bank.gather(torch.arange(k, k + 16).unsqueeze(0), torch.contiguous_format)
    m.model_.eval()
    with torch.no_grad():
        recon, _ = m.model_(x)
    want = -float(psnr01(recon[:, 0, 8], x[:, 0, 8])[0])
    assert scores["te0"][k + 8] == pytest.approx(want, rel=1e-5)
    assert m.n_parameters() == sum(p.numel() for p in AE3D(0.125).parameters())


def test_fast_context_caps_steps_and_size(train: VideoData) -> None:
    m = LntraSkip(epochs=5, size=64, fast_steps=2).fit(train, Context(seed=0, fast=True))
    assert m.train_stats_["steps"] == 2
    assert m._S == 32 and m.get_params()["size"] == 64  # params stay as given


def test_colour_frames_and_resize(test_data: VideoData) -> None:
    colour = _videos(2, 20, "c", hw=(40, 56), channels=3)
    m = Ae3dMethod(**TINY).fit(colour, Context(seed=0))
    s = m.score(colour, Context(seed=0))
    assert s["c0"].shape == (20,) and np.isfinite(s["c0"][8:-7]).all()


def test_bad_input_errors(train: VideoData) -> None:
    with pytest.raises(ValueError, match="clip_len"):
        Ae3dMethod(**{**TINY, "clip_len": 12}).fit(train, Context())
    with pytest.raises(ValueError, match="precision"):
        Ae3dMethod(**{**TINY, "precision": "fp16"}).fit(train, Context())
    with pytest.raises(TypeError, match="VideoData"):
        Ae3dMethod(**TINY).fit(ImageData(np.zeros((4, 8, 8, 1), np.uint8)), Context())
    with pytest.raises(ValueError, match="fewer than one batch"):
        Ae3dMethod(**TINY).fit(_videos(1, 10, "short"), Context())
    with pytest.raises(RuntimeError, match="before fit"):
        Ae3dMethod(**TINY).score(train, Context())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            Ae3dMethod(**{**TINY, "device": "cuda"}).fit(train, Context())


def test_resources_follow_device() -> None:
    assert Ae3dMethod(device="cpu").resources_for().gpus == 0
    assert Ae3dMethod(device="auto", gpus=0.5).resources_for().gpus == 0.5
    assert LntraSkip().resources_for().gpus == 1.0


@pytest.mark.gpu
def test_gpu_bf16_and_fp32_agree_roughly(train: VideoData, test_data: VideoData) -> None:
    out = {}
    for prec in ("fp32", "bf16"):
        m = Ae3dMethod(**{**TINY, "precision": prec, "max_steps": 5})
        out[prec] = m.fit(train, Context(seed=0, device="cuda")).score(
            test_data, Context(seed=0, device="cuda"))["te0"][8:-7]
        assert m.train_stats_["peak_gpu_mb"] is not None
    assert np.corrcoef(out["fp32"], out["bf16"])[0, 1] > 0.9


@pytest.mark.slow
@pytest.mark.realdata
def test_ped2_end_to_end_small(realdata) -> None:  # type: ignore[no-untyped-def]
    """Real Ped2 through the dataset plugin and the LNTRA protocol, with a small CPU model."""
    from occbench.harness.scoring.protocols import get_protocol

    ds = registry.datasets.get("ped2")(root=realdata, size=[64, 64], channels=1, cache=False)
    split = ds.load()
    m = LntraSkip(size=64, width=0.125, max_steps=30, score_batch_size=32)
    raw = m.fit(split.train, Context(seed=0)).score(split.test, Context(seed=0))
    labels = ds.test_labels().per_video
    metrics = get_protocol("video-minmax@2").evaluate(raw, labels)
    assert metrics["n_items"] == 2010 - 12 * 15  # the 8 + 7 border frames of each video dropped
    assert 0.0 <= metrics["auc_micro"] <= 1.0


# ---- stacked training and epoch snapshots ---------------------------------------------------

SMALL = {"size": 16, "width": 0.125, "epochs": 2, "clip_len": 8, "score_batch_size": 8}


@pytest.fixture(scope="module")
def short() -> VideoData:
    """2 videos of 20 frames: 26 clips of 8 frames, 6 steps of 4 clips per epoch."""
    return _videos(2, 20, "tr")


def _fit_alone_and_stacked(members: list[tuple[type[Ae3dMethod], int]], short: VideoData,
                           **kw: object) -> tuple[list[Ae3dMethod], list[Ae3dMethod]]:
    alone = [cls(**kw).fit(short, Context(seed=seed)) for cls, seed in members]
    stacked = [cls(**kw) for cls, _ in members]
    assert len({m.stack_key() for m in stacked}) == 1
    Ae3dMethod.fit_stacked(stacked, short, [Context(seed=seed) for _, seed in members])
    return alone, stacked


def test_stacked_training_equals_training_alone(short: VideoData, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Seeds and variants differing in inputs (skip, patch) or loss (lcon) trained as one vmap
    stack end with each model's own weights, BatchNorm statistics and snapshots. In float64, so
    that float noise cannot hide a difference: Adam's first steps move every weight by about
    ``lr`` whatever its gradient's size, which turns fp32 rounding noise in tiny gradients into
    ~1e-5 weight differences (measured); in float64 the two agree to ~1e-16."""
    def gather64(self: FrameBank, idx: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
        return self.frames[idx].unsqueeze(1).double().mul_(1.0 / 127.5).sub_(1.0)

    monkeypatch.setattr(FrameBank, "gather", gather64)
    monkeypatch.setattr(torch, "_occbench_dtype", torch.get_default_dtype(), raising=False)
    torch.set_default_dtype(torch.float64)
    try:
        members = [(Ae3dMethod, 0), (LntraSkip, 1), (LntraPatch, 2), (LconOnSphere, 3)]
        alone, stacked = _fit_alone_and_stacked(members, short, **SMALL, snapshot_every=1)
    finally:
        torch.set_default_dtype(torch._occbench_dtype)  # type: ignore[attr-defined]
    for a, s in zip(alone, stacked, strict=True):
        assert s.train_stats_["steps"] == a.train_stats_["steps"] == 12  # 2 x 6
        assert s.train_stats_["stacked"] == 4
        sa, ss = a.model_.state_dict(), s.model_.state_dict()
        assert sa.keys() == ss.keys() and ss["encoder.0.weight"].dtype == torch.float64
        for k in sa:  # weights, BatchNorm running statistics and counters
            torch.testing.assert_close(ss[k], sa[k], rtol=0, atol=1e-12, msg=k)
        assert sorted(s.snapshots_) == sorted(a.snapshots_) == [1, 2]
        for k, v in a.snapshots_[1].items():
            torch.testing.assert_close(s.snapshots_[1][k], v, rtol=0, atol=1e-12, msg=k)
    # the members really differ from each other (own seeds, inputs and losses)
    w = [m.model_.state_dict()["encoder.0.weight"] for m in stacked]
    assert not torch.allclose(w[0], w[1])


def test_stacked_fp32_scores_match_alone(short: VideoData, test_data: VideoData) -> None:
    """The same in the float32 the methods run in: scores (−PSNR, dB) agree to ~1e-3 dB."""
    alone, stacked = _fit_alone_and_stacked([(Ae3dMethod, 0), (LconInside, 1)], short,
                                            **SMALL, snapshot_every=2)
    for a, s in zip(alone, stacked, strict=True):
        ca, cs = Context(seed=0), Context(seed=0)
        ra, rs = a.score(test_data, ca), s.score(test_data, cs)
        assert sorted(cs.snapshots) == sorted(ca.snapshots) == [2]
        for vid in ra:
            np.testing.assert_allclose(rs[vid], ra[vid], rtol=0, atol=2e-3)
            assert np.isnan(rs[vid][:4]).all()


def test_stack_rejects_mixed_schedules(short: VideoData) -> None:
    a, b = Ae3dMethod(**SMALL), Ae3dMethod(**{**SMALL, "epochs": 3})
    assert a.stack_key() != b.stack_key()
    assert Ae3dMethod(**SMALL).stack_key() == LconInside(**SMALL, lam=0.5).stack_key()
    with pytest.raises(ValueError, match="stack_key"):
        Ae3dMethod.fit_stacked([a, b], short, [Context(seed=0), Context(seed=1)])


def test_epoch_snapshots_are_the_shorter_runs(short: VideoData, test_data: VideoData) -> None:
    """The snapshot after epoch 1 of a 3-epoch run scores exactly as a 1-epoch run (same seed:
    the same first epoch); the last snapshot is the returned final scores."""
    ctx = Context(seed=5)
    long = Ae3dMethod(**{**SMALL, "epochs": 3, "snapshot_every": 1}).fit(short, ctx)
    final = long.score(test_data, ctx)
    assert sorted(ctx.snapshots) == [1, 2, 3]
    short_ctx = Context(seed=5)
    one = Ae3dMethod(**{**SMALL, "epochs": 1}).fit(short, short_ctx).score(test_data, short_ctx)
    assert short_ctx.snapshots == {}  # snapshot_every = 0: none
    for vid in final:
        np.testing.assert_array_equal(ctx.snapshots[1][vid], one[vid])  # type: ignore[index]
        np.testing.assert_array_equal(ctx.snapshots[3][vid], final[vid])  # type: ignore[index]
    assert not np.array_equal(final["te0"], one["te0"], equal_nan=True)
    every2 = Context(seed=5)
    Ae3dMethod(**{**SMALL, "epochs": 3, "snapshot_every": 2}).fit(short, every2).score(
        test_data, every2)
    assert sorted(every2.snapshots) == [2, 3]  # every 2nd epoch, and the final one
    with pytest.raises(ValueError, match="twice"):
        ctx.snapshot(3, final)
    with pytest.raises(ValueError, match="snapshot_every"):
        Ae3dMethod(**{**SMALL, "snapshot_every": -1}).fit(short, Context())
