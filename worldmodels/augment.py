"""Dream-like imagination: generative augmentations of the latents of a batched dream.

Our definitions of Franceschelli & Musolesi's three augmentations on the Ha–Schmidhuber latent (their
exact formulas are not published; docs/augment.md states this contract):

- ``random_swing``: at one random step of a chosen trajectory, ``z <- (1 - alpha) z + alpha z'`` with
  ``alpha ~ U(0, strength)`` and ``z'`` from N(0, I) (``source="normal"``) or a random real latent
  (``source="real"``, from :meth:`RandomSwing.set_bank`).
- ``deepdream``: at one random step of a chosen trajectory, ``steps`` normalised gradient-ascent
  steps ``z <- z + strength * g / ||g||`` on ``||a(z)||^2 / n``, ``a`` the activation after the
  second ReLU of V's decoder, (64, 13, 13): mid-level shapes, neither the 1024-wide code nor pixels.
- ``value_diversification``: at one random step of a chosen trajectory, ``steps`` normalised steps
  ``z <- z + sign * strength * g / ||g||`` along the gradient of M's predicted reward summed over
  ``horizon`` imagined steps from (z, h, c) with the zero action, the next latent being the mixture
  mean (deterministic, so the gradient is too); ``sign = +-1`` drawn per trajectory.

Each has a ``probability`` that a dreamed trajectory is chosen and a ``strength``; strength 0 returns
the input tensor itself. Which trajectories, at which step, and every other random number are drawn
from the dream's generator at ``reset`` (so a seeded dream is reproducible); a member restarted alone
(``DreamEnv.reset_members``, the vector env's autoreset) draws its own afresh at ``restart``, like a new
trajectory, while the other members keep theirs. Inside ``step`` there is no per-member Python loop and
no host synchronisation: random swing is one masked blend over the batch; the gradient augmentations
know from ``reset``/``restart`` which members act at which step (one host sync at each of those) and run
their few gradient steps on those members only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import torch

from worldmodels.errors import WorldModelsError


@dataclasses.dataclass
class Augmentation:
    """Base: a probability per trajectory, a strength, and one event step per chosen trajectory.

    ``window``: the event step is uniform in [0, window) (0: [0, max_steps)). Short dreams end long
    before max_steps; a window keeps events inside the steps that are actually dreamed.
    """

    probability: float = 0.5
    strength: float = 0.5
    window: int = 0

    name = "augmentation"

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise WorldModelsError(f"{self.name}: probability must be in [0, 1], got {self.probability}")
        if not self.strength >= 0:
            raise WorldModelsError(f"{self.name}: strength must be >= 0, got {self.strength}")
        if self.window < 0:
            raise WorldModelsError(f"{self.name}: window must be >= 0, got {self.window}")
        self.chosen: torch.Tensor | None = None  # (B,) bool
        self.at_step: torch.Tensor | None = None  # (B,) int64
        self._gen: torch.Generator | None = None
        self._window = 1

    @property
    def identity(self) -> bool:
        return self.strength == 0 or self.probability == 0

    def options(self) -> dict[str, Any]:
        """The settings, for the run's config."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def reset(self, batch_size: int, max_steps: int, generator: torch.Generator, device: torch.device) -> None:
        """Draw, for a new batch of episodes, which trajectories are chosen and their event step."""
        self._window, self._gen = min(self.window or max_steps, max_steps), generator
        self.chosen, self.at_step = self._draw_events(batch_size, device)
        self._draw(batch_size, generator, device)

    def restart(self, mask: torch.Tensor, first_step: int) -> None:
        """New episodes for the members where ``mask`` (B,) is true: each draws its schedule afresh (chosen or
        not, event step, and the augmentation's own numbers), as a new trajectory at ``reset`` would; the
        other members keep theirs. ``first_step``: the ``step()`` call (counted from ``reset``) at which the
        restarted members first move. Called by ``DreamEnv.reset_members``; a no-op before the first reset."""
        if self.chosen is None:
            return
        mask = mask.to(self.chosen.device)
        chosen, at_step = self._draw_events(len(self.chosen), self.chosen.device)
        self.chosen = torch.where(mask, chosen, self.chosen)
        self.at_step = torch.where(mask, at_step, self.at_step)
        self._redraw(mask)

    def _draw_events(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = torch.rand(batch_size, generator=self._gen, device=device) < self.probability  # (B,)
        at_step = torch.randint(0, self._window, (batch_size,), generator=self._gen, device=device)  # (B,)
        return chosen, at_step

    def _draw(self, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        """Subclasses draw their own per-trajectory numbers here."""

    def _redraw(self, mask: torch.Tensor) -> None:
        """Subclasses redraw their own per-trajectory numbers of the members where ``mask`` (B,) is true."""

    def hits(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) bool: chosen members whose step index ``t`` (B,) is their event step."""
        if self.chosen is None:
            raise WorldModelsError(f"{self.name}: reset() must be called before the first step")
        return self.chosen & (t == self.at_step)

    def __call__(self, z_next: torch.Tensor, ctx: Any) -> torch.Tensor:
        raise NotImplementedError


@dataclasses.dataclass
class RandomSwing(Augmentation):
    """z <- (1 - alpha) z + alpha z' at one random step; alpha ~ U(0, strength), z' ~ N(0, I) or a real latent."""

    source: str = "normal"
    name = "random_swing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("normal", "real"):
            raise WorldModelsError(f"random_swing: source must be 'normal' or 'real', got {self.source!r}")
        self.bank: torch.Tensor | None = None
        self.target: torch.Tensor | None = None

    def set_bank(self, latents: torch.Tensor) -> "RandomSwing":
        """Real latents (N, Z) that ``source="real"`` draws z' from (e.g. the mu of every collected frame)."""
        self.bank = torch.as_tensor(latents)  # moved to the dream's device once, at the first draw
        if self.bank.ndim != 2 or len(self.bank) == 0:
            raise WorldModelsError(f"random_swing: the latent bank must be (N, Z), got {tuple(self.bank.shape)}")
        return self

    def _draw(self, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        self.alpha = torch.rand(batch_size, generator=generator, device=device) * self.strength  # (B,)
        self.target = None  # z' needs Z: drawn at the first step

    def _redraw(self, mask: torch.Tensor) -> None:
        alpha = torch.rand(len(mask), generator=self._gen, device=mask.device) * self.strength
        self.alpha = torch.where(mask, alpha, self.alpha)
        if self.target is not None:  # else every z' is still to be drawn, at the next step
            self.target = torch.where(mask.unsqueeze(1), self._targets(self.target), self.target)

    def _targets(self, z: torch.Tensor) -> torch.Tensor:
        B, Z = z.shape
        if self.source == "normal":
            return torch.randn(B, Z, generator=self._gen, device=z.device, dtype=z.dtype)
        if self.bank is None:
            raise WorldModelsError("random_swing: source='real' needs real latents (set_bank)")
        if self.bank.device != z.device or self.bank.dtype != z.dtype:
            self.bank = self.bank.to(z.device, z.dtype)  # once, not at every episode
        pick = torch.randint(0, len(self.bank), (B,), generator=self._gen, device=z.device)
        return self.bank[pick]

    def __call__(self, z_next: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self.identity:
            return z_next
        if self.target is None:
            self.target = self._targets(z_next)  # (B, Z)
        alpha = self.alpha.to(z_next.dtype).unsqueeze(1)  # (B, 1)
        swung = torch.lerp(z_next, self.target, alpha)  # (1 - alpha) z + alpha z'
        return torch.where(self.hits(ctx.t).unsqueeze(1), swung, z_next)


@dataclasses.dataclass
class _GradientAugmentation(Augmentation):
    """Normalised gradient steps on z, run only on the members whose event is at this step."""

    steps: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise WorldModelsError(f"{self.name}: steps must be >= 1, got {self.steps}")
        self._schedule: dict[int, torch.Tensor] = {}  # step() call -> members (n,) whose event it is
        self._event = np.zeros(0, np.int64)  # (B,) on the host: each member's event step() call, -1: none

    def reset(self, batch_size: int, max_steps: int, generator: torch.Generator, device: torch.device) -> None:
        super().reset(batch_size, max_steps, generator, device)
        # One host sync per episode batch: which members act at which global step.
        self._event = torch.where(self.chosen, self.at_step, -1).cpu().numpy()
        self._schedule = {}
        self._reschedule(np.unique(self._event[self._event >= 0]))

    def restart(self, mask: torch.Tensor, first_step: int) -> None:
        super().restart(mask, first_step)
        if self.chosen is None:
            return
        # One host sync per restart: the restarted members' events move to their new episode's steps.
        both = torch.stack([mask.to(self.chosen.device).long(),
                            torch.where(self.chosen, self.at_step + first_step, -1)]).cpu().numpy()
        restarted, event = both[0].astype(bool), both[1]
        if not restarted.any():
            return
        old = self._event[restarted]
        touched = np.union1d(old[old >= first_step], event[restarted & (event >= 0)])
        self._event = np.where(restarted, event, self._event)
        self._reschedule(touched)

    def _reschedule(self, steps: np.ndarray) -> None:
        """Rebuild the schedule's entries of ``steps`` from ``self._event``."""
        device = self.chosen.device
        for s in steps.tolist():
            members = np.flatnonzero(self._event == s)
            if len(members):
                self._schedule[int(s)] = torch.as_tensor(members, dtype=torch.int64).to(device)
            else:
                self._schedule.pop(int(s), None)

    def objective(self, z: torch.Tensor, idx: torch.Tensor, ctx: Any) -> torch.Tensor:
        """(n,) per-member value to ascend, for the latents z (n, Z) of members ``idx``."""
        raise NotImplementedError

    def direction(self, idx: torch.Tensor) -> torch.Tensor | None:
        """(n,) per-member sign of the steps (None: ascent for all)."""
        return None

    def __call__(self, z_next: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self.identity:
            return z_next
        idx = self._schedule.pop(int(ctx.step), None)  # each step() call comes once: the entry is spent
        if idx is None:
            return z_next
        z = z_next[idx]  # (n, Z)
        sign = self.direction(idx)
        with torch.enable_grad():
            for _ in range(self.steps):
                z = z.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.objective(z, idx, ctx).sum(), z)
                step = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (n, Z), unit length
                if sign is not None:
                    step = step * sign.unsqueeze(1)
                z = z + self.strength * step
        # A member frozen at its scheduled step (longer than reset_members' delay) is not at its event step: skipped.
        moved = torch.where((ctx.t[idx] == self.at_step[idx]).unsqueeze(1), z.detach(), z_next[idx])
        return z_next.index_copy(0, idx, moved.to(z_next.dtype))


@dataclasses.dataclass
class DeepDream(_GradientAugmentation):
    """Gradient ascent on the mean squared activation after the second ReLU of V's decoder, (64, 13, 13)."""

    name = "deepdream"
    LAYER = 4  # vae.decoder[:4] = ConvT, ReLU, ConvT, ReLU

    @staticmethod
    def activation(vae: Any, z: torch.Tensor) -> torch.Tensor:
        """The targeted activation (n, 64, 13, 13) of V's decoder for latents z (n, Z)."""
        h = vae.fc_decode(z).view(-1, 1024, 1, 1)
        return vae.decoder[:DeepDream.LAYER](h)

    def objective(self, z: torch.Tensor, idx: torch.Tensor, ctx: Any) -> torch.Tensor:
        vae = ctx.vae
        if vae is None or not hasattr(vae, "decoder"):
            raise WorldModelsError("deepdream needs the dream's V (a ConvVAE)")
        w = next(vae.parameters())
        return self.activation(vae, z.to(w.device, w.dtype)).pow(2).flatten(1).mean(1).to(z.device)  # (n,)


@dataclasses.dataclass
class ValueDiversification(_GradientAugmentation):
    """Ascent or descent (random sign per trajectory) on M's predicted reward over ``horizon`` steps."""

    horizon: int = 5
    name = "value_diversification"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.horizon < 1:
            raise WorldModelsError(f"value_diversification: horizon must be >= 1, got {self.horizon}")

    def _draw(self, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        up = torch.rand(batch_size, generator=generator, device=device) < 0.5
        self.sign = up.float() * 2 - 1  # (B,) +1 ascent, -1 descent

    def _redraw(self, mask: torch.Tensor) -> None:
        up = torch.rand(len(mask), generator=self._gen, device=mask.device) < 0.5
        self.sign = torch.where(mask, up.float() * 2 - 1, self.sign)

    def direction(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sign[idx]

    def objective(self, z: torch.Tensor, idx: torch.Tensor, ctx: Any) -> torch.Tensor:
        return imagined_reward(ctx.mdrnn, z, (ctx.state[0][idx], ctx.state[1][idx]), self.horizon)


def imagined_reward(mdrnn: Any, z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], horizon: int
                    ) -> torch.Tensor:
    """(n,) M's predicted reward summed over ``horizon`` steps from z (n, Z), state (h, c), zero actions;
    each next latent is the mixture mean."""
    w = mdrnn.lstm.weight_hh_l0
    device, dtype, out_device = w.device, w.dtype, z.device  # M's device and dtype (the dream's, normally)
    z, state = z.to(device, dtype), (state[0].to(device, dtype), state[1].to(device, dtype))
    action = torch.zeros(len(z), mdrnn.action_dim, device=device, dtype=dtype)
    total = torch.zeros(len(z), device=device, dtype=dtype)
    for _ in range(horizon):
        out, state = mdrnn.step(z, action, state)
        total = total + out.reward
        z = (out.logpi.exp() * out.mu).sum(-1)  # (n, Z): the mixture mean
    return total.to(out_device)


AUGMENTATIONS: dict[str, type[Augmentation]] = {
    cls.name: cls for cls in (RandomSwing, DeepDream, ValueDiversification)}


def option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(AUGMENTATIONS[name])]


def build_augmentations(names: Iterable[str] | str, options: dict[str, dict[str, Any]] | None = None,
                        latents: torch.Tensor | None = None) -> list[Augmentation]:
    """Augmentations in the order named (a list or a comma-separated string), with per-name options.

    ``options`` maps a name to its keyword arguments (it may hold names not selected); ``latents``
    (N, Z) are the real latents for ``random_swing`` with ``source: real``. Unknown names or option
    keys raise :class:`WorldModelsError` listing the valid ones.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    options = dict(options or {})
    valid = ", ".join(AUGMENTATIONS)
    for name in list(names) + list(options):
        if name not in AUGMENTATIONS:
            raise WorldModelsError(f"unknown augmentation {name!r}; choose from {valid}")
    augs = []
    for name in names:
        opts = dict(options.get(name) or {})
        bad = sorted(set(opts) - set(option_names(name)))
        if bad:
            raise WorldModelsError(f"{name}: unknown option(s) {', '.join(bad)}; valid: {', '.join(option_names(name))}")
        aug = AUGMENTATIONS[name](**opts)
        if isinstance(aug, RandomSwing) and aug.source == "real":
            if latents is None:
                raise WorldModelsError("random_swing with source: real needs the real latents")
            aug.set_bank(latents)
        augs.append(aug)
    return augs


def describe(augs: Iterable[Augmentation]) -> list[dict[str, Any]]:
    """JSON-able settings of a list of augmentations, for a run's config."""
    return [a.options() for a in augs]
