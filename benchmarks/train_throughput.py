"""Training throughput of V (images/s) in four precision/layout modes, and of M (sequences/s).

    python benchmarks/train_throughput.py --device cuda            # paper sizes
    python benchmarks/train_throughput.py --device cpu --vae-steps 3 --mdrnn-steps 2 --seq-len 50

V: the train-vae stage's own step (``train_vae._Step``: uint8 frames -> float, memory layout, autocast,
``vae_loss``) + backward + Adam (foreach), on random uint8 frames already on the device (so the figure
is the model's, not the loader's; ``benchmarks/vae.py`` measures the loader). Modes: fp32, fp32
channels-last, bf16 autocast, bf16 autocast + channels-last. ``_Step`` applies bf16 and channels-last
on every device (bf16 defaults to CUDA only in the stage).

M: the train-mdrnn stage's loss (``train_mdrnn.batch_losses``: z re-sampled from (mu, logvar), teacher
forcing, GMM NLL + reward MSE + done BCE) + backward + clip + Adam, on random sequences on the device.

Each figure is timed after --warmup steps with the device synchronised, and printed on a line starting
with ``FIGURE``.
"""

from __future__ import annotations

import argparse
import time

import torch

from worldmodels.models.mdrnn import MDRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.stages import train_mdrnn, train_vae
from worldmodels.utils import pick_device

VAE_MODES = {"fp32": (False, False), "fp32+channels_last": (False, True), "bf16": (True, False),
             "bf16+channels_last": (True, True)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(one, warmup: int, steps: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds of ``steps`` calls of ``one`` after ``warmup`` untimed ones (device synchronised), and the last loss."""
    for _ in range(warmup):
        one()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = one()
    sync(device)
    return time.perf_counter() - t0, loss


def vae_images_per_s(device: torch.device, bf16: bool, channels_last: bool, args: argparse.Namespace) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = train_vae.Config(data="-", out="-", batch_size=args.vae_batch, bf16=bf16, channels_last=channels_last)
    model = ConvVAE(cfg.z_dim).to(device)
    step = train_vae._Step(model, cfg, device)
    model.to(memory_format=step.layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)
    frames = torch.randint(0, 256, (args.vae_batch, 64, 64, 3), dtype=torch.uint8, device=device)

    def one() -> torch.Tensor:
        loss = step(frames)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    seconds, loss = timed(one, args.warmup, args.vae_steps, device)
    final = float(loss.detach())
    if final != final or final in (float("inf"), float("-inf")):
        raise SystemExit(f"V loss is not finite ({final}) with bf16={bf16} channels_last={channels_last}")
    return args.vae_batch * args.vae_steps / seconds, final


def mdrnn_sequences_per_s(device: torch.device, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    B, T, Z, A = args.mdrnn_batch, args.seq_len, args.z, 3
    cfg = train_mdrnn.Config(latents="-", out="-", hidden=args.hidden, n_gaussians=args.k, seq_len=T, batch_size=B)
    model = MDRNN(Z, A, cfg.hidden, cfg.n_gaussians).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batch = {"mu": torch.randn(B, T + 1, Z), "logvar": torch.full((B, T + 1, Z), -2.0),
             "action": torch.rand(B, T, A), "reward": torch.randn(B, T), "done": (torch.rand(B, T) < 0.01).float(),
             "mask": torch.ones(B, T, dtype=torch.bool), "mask_z": torch.ones(B, T, dtype=torch.bool)}
    batch = {k: v.to(device) for k, v in batch.items()}  # resident: the figure is M's, not the HDF5 reader's
    g = torch.Generator(device=device).manual_seed(0)

    def one() -> torch.Tensor:
        losses = train_mdrnn.batch_losses(model, batch, cfg, device, g)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        return losses["loss"]

    seconds, loss = timed(one, args.warmup, args.mdrnn_steps, device)
    if not torch.isfinite(loss):
        raise SystemExit(f"M loss is not finite ({float(loss.detach())})")
    return B * args.mdrnn_steps / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--vae-batch", type=int, default=100, help="frames per V step (paper: 100)")
    p.add_argument("--vae-steps", type=int, default=50, help="timed V steps per mode")
    p.add_argument("--modes", default=",".join(VAE_MODES), help="V modes, comma-separated: " + ", ".join(VAE_MODES))
    p.add_argument("--mdrnn-batch", type=int, default=100, help="sequences per M step (paper: 100)")
    p.add_argument("--seq-len", type=int, default=999, help="steps per sequence (paper: 999)")
    p.add_argument("--mdrnn-steps", type=int, default=20, help="timed M steps")
    p.add_argument("--z", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"TF32 conv {torch.backends.cudnn.allow_tf32}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
    rates = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in VAE_MODES:
            raise SystemExit(f"unknown V mode {mode!r}; choose from {', '.join(VAE_MODES)}")
        rates[mode], loss = vae_images_per_s(device, *VAE_MODES[mode], args)
        base = rates.get("fp32")
        ratio = f", {rates[mode] / base:.2f}x fp32" if base else ""
        print(f"  V {mode:<20} {rates[mode]:12,.0f} img/s  (batch {args.vae_batch}, last loss {loss:.1f}{ratio})")
        print(f"FIGURE V[{device.type},{mode}] {rates[mode]:,.0f} img/s (batch {args.vae_batch}{ratio})")
    if args.mdrnn_steps > 0:
        seqs = mdrnn_sequences_per_s(device, args)
        print(f"  M {'fp32':<20} {seqs:12,.1f} sequences/s  (batch {args.mdrnn_batch} x {args.seq_len} steps, "
              f"h {args.hidden}, K {args.k}; {seqs * args.seq_len:,.0f} steps/s)")
        print(f"FIGURE M[{device.type}] {seqs:,.1f} sequences/s of {args.seq_len} steps (batch {args.mdrnn_batch}, "
              f"h {args.hidden})")


if __name__ == "__main__":
    main()
