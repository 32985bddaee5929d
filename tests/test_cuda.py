"""CUDA checks: the dream, V, M and their stages' steps on a GPU agree with the CPU.

Skipped when ``torch.cuda.is_available()`` is False. ``WM_TEST_DEVICE=cpu`` runs the "device" side on
the CPU instead (CPU against CPU: it only proves the tests themselves run, e.g. in a CPU dry run of
benchmarks/gpu_check.sh). Without pytest, ``python tests/test_cuda.py`` runs every test in order.

Tolerances (see each test): float64 dreams must agree to 1e-9 (rounding is ~1e-16 per operation, and
the dream's random numbers are integer hashes, bit-equal on both devices); float32 dreams to 1e-4 for
all but a few members (a member can switch mixture component when its uniform lies within float32
rounding of a CDF boundary, then it legitimately diverges); fp32 losses to 1e-3 relative (different
kernels sum in different orders, ~1e-6; a layout or device bug gives O(1) differences); bf16 autocast
losses to 1e-2 relative (bf16 keeps 8 significant bits, 2^-8 = 0.4 % per element; the loss averages
thousands of such errors, so 1e-2 is > 2x the worst case of a systematic rounding bias).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings

import numpy as np
import torch

try:
    import pytest
except ImportError:  # the GPU machine may lack pytest: see the runner at the bottom
    pytest = None

from worldmodels.models.mdrnn import MDRNN, mdrnn_loss
from worldmodels.models.vae import ConvVAE

DEVICE = torch.device(os.environ.get("WM_TEST_DEVICE", "cuda"))
AVAILABLE = DEVICE.type != "cuda" or torch.cuda.is_available()
if pytest is not None:
    pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no CUDA GPU (torch.cuda.is_available() is False)")

Z, A, H, K = 8, 3, 32, 3


@contextlib.contextmanager
def no_tf32():
    """fp32 matmuls and convolutions in full fp32 (cuDNN convolutions default to TF32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def small_m(dtype=torch.float32, done_bias=-0.6, seed=0) -> MDRNN:
    torch.manual_seed(seed)
    m = MDRNN(Z, A, H, K).to(dtype).eval()
    with torch.no_grad():
        m.head.bias[-1] = done_bias  # about half the members end within 30 steps: freezing is exercised
        m.head.weight[-1] *= 5
    return m


def initial(n=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, Z, generator=g, dtype=dtype), torch.full((n, Z), -2.0, dtype=dtype)


def play(device, m, B, steps, dtype, **kw):
    """Per step (obs, reward, done) on the CPU, from one dream of ``m`` (moved to ``device``)."""
    from worldmodels.dream import DreamEnv

    dream = DreamEnv(None, copy.deepcopy(m).to(device), initial(dtype=dtype), 1.15, B, device, 100, seed=7, **kw)
    acts = torch.rand(steps, B, A, generator=torch.Generator().manual_seed(3), dtype=dtype) * 2 - 1
    out = [(dream.reset().cpu(), None, None)]
    with no_tf32():
        for t in range(steps):
            obs, reward, done, _ = dream.step(acts[t].to(device))
            out.append((obs.cpu(), reward.cpu(), done.cpu()))
    return out, dream


def test_random_streams_are_bit_equal_on_cpu_and_device():
    from worldmodels.dream import rng

    ids = torch.arange(1000)
    cpu = rng.uniforms(rng.episode_keys(rng.stream_keys(123, ids), ids % 3), ids % 50, rng.index_keys(17, "cpu"),
                       torch.float32)
    dev = rng.uniforms(rng.episode_keys(rng.stream_keys(123, ids.to(DEVICE)), (ids % 3).to(DEVICE)),
                       (ids % 50).to(DEVICE), rng.index_keys(17, DEVICE), torch.float32)
    assert torch.equal(cpu, dev.cpu())


def test_float64_dream_agrees_with_cpu():
    # float64: rounding differences ~1e-16 per op stay far below 1e-9 over 30 steps; a component switch
    # needs a uniform within ~1e-15 of a CDF boundary (probability ~1e-11 over these 15,000 draws).
    m = small_m(torch.float64)
    cpu, _ = play("cpu", m, 64, 30, torch.float64)
    dev, dream = play(DEVICE, m, 64, 30, torch.float64)
    assert dream._w.device.type == DEVICE.type and dream.generator.device.type == DEVICE.type
    for t, ((o1, r1, d1), (o2, r2, d2)) in enumerate(zip(cpu, dev)):
        assert torch.allclose(o1, o2, atol=1e-9, rtol=0), f"step {t}: max |diff| {(o1 - o2).abs().max():.3g}"
        if r1 is not None:
            assert torch.allclose(r1, r2, atol=1e-9, rtol=0) and torch.equal(d1, d2), f"step {t}"
    ends = cpu[-1][2]
    assert 0 < int(ends.sum()) < 64, "the test should see some members end and others go on"


def test_float32_dream_agrees_with_cpu_for_almost_every_member():
    # float32: ~1e-6 differences per step; a member whose uniform falls within that of a mixture CDF
    # boundary picks another component on one device and diverges (expected ~0.1 of 256 members here).
    m = small_m(torch.float32)
    B, steps = 256, 10
    cpu, _ = play("cpu", m, B, steps, torch.float32)
    dev, _ = play(DEVICE, m, B, steps, torch.float32)
    agree = torch.ones(B, dtype=torch.bool)
    for (o1, _, d1), (o2, _, d2) in zip(cpu, dev):
        agree &= (o1 - o2).abs().amax(1) <= 1e-4
        if d1 is not None:
            agree &= d1 == d2
    assert int(agree.sum()) >= 0.98 * B, f"only {int(agree.sum())} of {B} members agree within 1e-4"


def test_dream_runs_with_m_on_the_device_or_on_the_cpu():
    from worldmodels.dream import DreamEnv

    m = small_m()
    for where in (DEVICE, torch.device("cpu")):  # M's weights are copied to the dream's device at reset
        dream = DreamEnv(None, copy.deepcopy(m).to(where), initial(), 1.0, 8, DEVICE, 20, seed=0)
        obs = dream.reset()
        obs, reward, done, _ = dream.step(torch.zeros(8, A, device=DEVICE))
        assert obs.device.type == DEVICE.type and torch.isfinite(obs).all() and torch.isfinite(reward).all()
        assert dream.reset_members(torch.ones(8, dtype=torch.bool)).device.type == DEVICE.type


def test_augmented_dream_and_pictures_on_the_device():
    from worldmodels.augment import build_augmentations
    from worldmodels.dream import DreamEnv

    torch.manual_seed(0)
    vae, m = ConvVAE(Z).to(DEVICE).eval(), small_m(done_bias=-20.0).to(DEVICE)
    bank = torch.randn(50, Z)  # on the CPU: the swing moves it to the dream's device
    opts = {"random_swing": {"probability": 1.0, "strength": 0.5, "window": 3, "source": "real"},
            "deepdream": {"probability": 1.0, "strength": 0.5, "steps": 2, "window": 3},
            "value_diversification": {"probability": 1.0, "strength": 0.5, "steps": 2, "horizon": 3, "window": 3}}
    augs = build_augmentations(list(opts), opts, latents=bank)
    plain = DreamEnv(vae, m, initial(), 1.15, 6, DEVICE, 10, seed=2)
    dream = DreamEnv(vae, m, initial(), 1.15, 6, DEVICE, 10, seed=2, augmentations=augs)
    plain.reset(), dream.reset()
    for _ in range(4):
        a = torch.rand(6, A, device=DEVICE)
        plain.step(a)
        obs, reward, _, _ = dream.step(a)
        assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
    assert not torch.allclose(plain.z, dream.z), "the augmentations did nothing"
    frames = dream.frames([0, 3])
    assert isinstance(frames, np.ndarray) and frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8


def test_gymnasium_dream_envs_on_the_device_return_numpy():
    from worldmodels.dream import DreamGymEnv, DreamVectorEnv

    m = small_m().to(DEVICE)
    env = DreamVectorEnv(None, m, initial(), 4, device=DEVICE, max_steps=5, seed=0)
    obs, _ = env.reset(seed=1)
    for _ in range(7):  # past max_steps: the autoreset path runs too
        obs, reward, term, trunc, _ = env.step(env.action_space.sample())
    assert isinstance(obs, np.ndarray) and obs.shape == (4, Z + H) and reward.dtype == np.float64
    single = DreamGymEnv(None, m, initial(), device=DEVICE, max_steps=5)
    obs, _ = single.reset(seed=0)
    obs, reward, *_ = single.step(single.action_space.sample())
    assert isinstance(obs, np.ndarray) and isinstance(reward, float)


def _vae_losses(model, frames, device, bf16, channels_last):
    from worldmodels.stages import train_vae

    cfg = train_vae.Config(data="-", out="-", bf16=bf16, channels_last=channels_last)
    model = copy.deepcopy(model).to(device)
    step = train_vae._Step(model, cfg, device)
    model.to(memory_format=step.layout)
    model.eval()  # z = mu: the same loss on every device and in every mode, no sampling noise
    with torch.no_grad(), no_tf32():
        return step, {k: float(v) for k, v in step(frames).items()}


def test_vae_step_bf16_and_channels_last_give_finite_losses_close_to_fp32():
    torch.manual_seed(0)
    model = ConvVAE(32)
    rng = np.random.default_rng(0)
    frames = np.zeros((32, 64, 64, 3), np.uint8)
    frames[:] = np.linspace(0, 200, 64, dtype=np.uint8)[None, None, :, None]
    frames[:, 20:40] = rng.integers(0, 256, (32, 20, 64, 3), dtype=np.uint8)  # texture, so the loss is not flat
    frames = torch.from_numpy(frames)
    _, ref = _vae_losses(model, frames, torch.device("cpu"), False, False)
    on_gpu = DEVICE.type == "cuda"
    for bf16, cl in ((False, False), (False, True), (True, False), (True, True)):
        step, got = _vae_losses(model, frames, DEVICE, bf16, cl)
        # train-vae applies bf16 and channels-last on CUDA only (ignored on CPU)
        assert step.bf16 == (bf16 and on_gpu)
        assert step.layout == (torch.channels_last if cl and on_gpu else torch.contiguous_format)
        rtol = 1e-2 if step.bf16 else 1e-3
        for key in ("loss", "recon", "kl"):
            assert np.isfinite(got[key]), (bf16, cl, key, got)
            assert abs(got[key] - ref[key]) <= rtol * abs(ref[key]) + 1e-3, (bf16, cl, key, got[key], ref[key])


def test_vae_training_step_in_bf16_channels_last_updates_finite_weights():
    from worldmodels.stages import train_vae

    torch.manual_seed(0)
    model = ConvVAE(32).to(DEVICE)
    cfg = train_vae.Config(data="-", out="-")  # the defaults: bf16 and channels-last on CUDA
    step = train_vae._Step(model, cfg, DEVICE)
    model.to(memory_format=step.layout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    before = [p.detach().clone() for p in model.parameters()]
    frames = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8)
    losses = []
    for _ in range(3):
        loss = step(frames)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    if DEVICE.type == "cuda":
        assert model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_mdrnn_loss_and_stage_step_agree_with_cpu():
    from worldmodels.stages import train_mdrnn

    m = small_m()
    g = torch.Generator().manual_seed(0)
    B, T = 4, 20
    z = torch.randn(B, T + 1, Z, generator=g)
    a = torch.rand(B, T, A, generator=g)
    reward, done = torch.randn(B, T, generator=g), (torch.rand(B, T, generator=g) < 0.1).float()
    results = []
    for device in (torch.device("cpu"), DEVICE):
        model = copy.deepcopy(m).to(device)
        with no_tf32(), torch.no_grad():
            out, _ = model(z[:, :-1].to(device), a.to(device))
            losses = mdrnn_loss(out, z[:, 1:].to(device), reward.to(device), done.to(device))
        results.append({k: float(v) for k, v in losses.items()})
    for key in results[0]:
        assert abs(results[0][key] - results[1][key]) <= 1e-3 * abs(results[0][key]) + 1e-5, (key, results)
    # the stage's step: its z re-sampling generator lives on the device
    cfg = train_mdrnn.Config(latents="-", out="-", seq_len=T, batch_size=B)
    batch = {"mu": z, "logvar": torch.full_like(z, -3.0), "action": a, "reward": reward, "done": done,
             "mask": torch.ones(B, T, dtype=torch.bool), "mask_z": torch.ones(B, T, dtype=torch.bool)}
    model = copy.deepcopy(m).to(DEVICE).train()
    losses = train_mdrnn.batch_losses(model, batch, cfg, DEVICE, torch.Generator(device=DEVICE).manual_seed(0))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_encode_and_offline_features_on_the_device_match_the_cpu():
    from worldmodels.offline import controller_features
    from worldmodels.stages.encode import encode_frames

    torch.manual_seed(0)
    vae = ConvVAE(Z).eval()
    frames = np.random.default_rng(0).integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    with no_tf32():
        mu_cpu, lv_cpu = encode_frames(vae, frames, 4)
        mu_dev, lv_dev = encode_frames(copy.deepcopy(vae).to(DEVICE), frames, 4)
    assert isinstance(mu_dev, np.ndarray) and mu_dev.dtype == np.float32
    assert np.allclose(mu_cpu, mu_dev, atol=1e-4) and np.allclose(lv_cpu, lv_dev, atol=1e-4)
    m = small_m()
    zs = [np.random.default_rng(i).normal(size=(n, Z)).astype(np.float32) for i, n in enumerate((7, 4))]
    acts = [torch.rand(len(x), A) for x in zs]
    with no_tf32():
        cpu = controller_features(m, zs, acts, "zh", "cpu")
        dev = controller_features(copy.deepcopy(m).to(DEVICE), zs, acts, "zh", DEVICE)
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(cpu, dev))


if __name__ == "__main__":  # a runner for machines without pytest
    if not AVAILABLE:
        print(f"SKIPPED: no CUDA GPU (device {DEVICE})")
        sys.exit(0)
    failed = 0
    tests = [(k, v) for k, v in list(globals().items()) if k.startswith("test_") and callable(v)]
    for name, fn in tests:
        try:
            fn()
            print(f"PASSED {name}")
        except Exception as err:  # noqa: BLE001 - report every failure, then exit non-zero
            failed += 1
            print(f"FAILED {name}: {type(err).__name__}: {err}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
