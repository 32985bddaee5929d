"""V: the convolutional variational autoencoder of World Models (Ha & Schmidhuber 2018).

Architecture exactly as in the authors' code: four stride-2 4x4 convolutions without padding
(32, 64, 128, 256 channels, 64 -> 31 -> 14 -> 6 -> 2), a 1024-wide code, dense mu and logvar; the
decoder maps z to 1024, reshapes it to (1024, 1, 1) and upsamples with four stride-2 transposed
convolutions (kernels 5, 5, 6, 6: 1 -> 5 -> 13 -> 30 -> 64) to a sigmoid image. With z_dim=32 it has
4,348,547 parameters.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from worldmodels.checkpoint import checkpoint_file, load_checkpoint
from worldmodels.errors import WorldModelsError

IMAGE_SHAPE = (64, 64, 3)


class ConvVAE(nn.Module):
    """Encoder x (B, 3, 64, 64) in [0, 1] -> (mu, logvar) (B, Z); decoder z (B, Z) -> x (B, 3, 64, 64)."""

    def __init__(self, z_dim: int = 32):
        super().__init__()
        if z_dim < 1:
            raise WorldModelsError(f"z_dim must be positive, got {z_dim}")
        self.z_dim = z_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2), nn.ReLU(),     # (B, 32, 31, 31)
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),    # (B, 64, 14, 14)
            nn.Conv2d(64, 128, 4, stride=2), nn.ReLU(),   # (B, 128, 6, 6)
            nn.Conv2d(128, 256, 4, stride=2), nn.ReLU(),  # (B, 256, 2, 2)
            nn.Flatten(),                                 # (B, 1024)
        )
        self.fc_mu = nn.Linear(1024, z_dim)
        self.fc_logvar = nn.Linear(1024, z_dim)
        self.fc_decode = nn.Linear(z_dim, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, stride=2), nn.ReLU(),  # (B, 128, 5, 5)
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.ReLU(),    # (B, 64, 13, 13)
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),     # (B, 32, 30, 30)
            nn.ConvTranspose2d(32, 3, 6, stride=2), nn.Sigmoid(),   # (B, 3, 64, 64)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, 64, 64) in [0, 1] -> mu, logvar, each (B, Z)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) -> image (B, 3, 64, 64) in [0, 1]."""
        h = self.fc_decode(z).view(-1, 1024, 1, 1)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct x: returns (recon, mu, logvar).

        In training mode z is sampled (z = mu + sigma * eps, sigma = exp(logvar / 2)); in eval mode z = mu,
        so validation losses and pictures are deterministic.
        """
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return self.decode(z), mu, logvar


def frames_to_tensor(frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 frames (B, 64, 64, 3) -> float (B, 3, 64, 64) in [0, 1] on ``device``.

    The uint8 batch is moved first and converted there: a quarter of the bytes cross to a GPU.
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise WorldModelsError(f"expected uint8 frames (B, 64, 64, 3), got {x.dtype} {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, 64, 64) in [0, 1] -> uint8 (B, 64, 64, 3) numpy, for pictures."""
    x = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_tolerance: float = 0.5) -> dict[str, torch.Tensor]:
    """The authors' loss: per sample sum of squared errors + max(KL, kl_tolerance * z_dim), batch mean.

    Returns ``loss`` (what is minimised), ``recon`` (mean summed squared error) and ``kl`` (mean KL to
    N(0, I) before the floor). The floor stops the KL gradient for samples below kl_tolerance nats per
    dimension, as in the paper's code.
    """
    x, recon, mu, logvar = x.float(), recon.float(), mu.float(), logvar.float()
    recon_err = (x - recon).pow(2).flatten(1).sum(dim=1)                      # (B,)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)            # (B,)
    kl_floored = torch.clamp(kl, min=kl_tolerance * mu.shape[1])              # (B,)
    return {"loss": (recon_err + kl_floored).mean(), "recon": recon_err.mean(), "kl": kl.mean()}


def load_vae(path: str | os.PathLike, device: torch.device | str = "cpu") -> ConvVAE:
    """Load a trained V from ``checkpoint.pt`` or its run folder, in eval mode.

    The model carries ``checkpoint_id`` (the training run's id), ``checkpoint_path``, ``checkpoint_epoch``
    (epochs trained, -1 if unknown) and ``z_dim``.
    """
    state = load_checkpoint(path, kind="vae", map_location="cpu")
    try:
        z_dim = int(state.get("z_dim") or state["config"]["z_dim"])
        weights = state["model"]
    except (KeyError, TypeError, ValueError):
        raise WorldModelsError(f"{checkpoint_file(path)} is a vae checkpoint without weights or z_dim") from None
    model = ConvVAE(z_dim)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, AttributeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WorldModelsError(f"{checkpoint_file(path)}: weights do not fit ConvVAE(z_dim={z_dim}): {first}") from None
    model.checkpoint_id = state["id"]
    model.checkpoint_path = str(checkpoint_file(path).resolve())
    model.checkpoint_epoch = int(state.get("epoch", -1))
    return model.to(device).eval()
