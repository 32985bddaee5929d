"""C: the linear controller, its env-specific action mappings, and a batched form for the dream.

``Controller`` is ``raw = W·x + b`` over ``x = [z, h]`` (or ``[z, c, h]``, or ``z`` only: the paper's
ablations). CMA-ES sees it as one flat parameter vector: ``weight`` row-major, then ``bias``.

Action mappings (``ActionMap``), from the paper:

- CarRacing (3 outputs): steering ``tanh``, gas ``(tanh + 1) / 2``, brake ``clip(tanh, 0, 1)``.
- Doom TakeCover (1 output, no bias): ``tanh`` in [-1, 1] split into thirds: below -1/3 moves left,
  above 1/3 moves right, between stays (vizdoom's ``Discrete(3)``: 0 stay, 1 right, 2 left).
- Any other discrete space, ProcGen's ``Discrete(15)`` included: one logit per action, argmax.

``BatchedController`` evaluates a whole CMA-ES population x rollouts at once: member ``b`` uses its own
weights, ``raw[b] = W[b] x[b] + b[b]``, one ``einsum`` on the dream's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodels.errors import WorldModelsError

OBS_MODES = ("zh", "zch", "z")
# vizdoom TakeCover Discrete(3) indices for the three thirds of [-1, 1]: left, stay, right.
DOOM_LEFT, DOOM_STAY, DOOM_RIGHT = 2, 0, 1


def controller_input_dim(z_dim: int, hidden: int, obs_mode: str) -> int:
    """Width of C's input for an observation mode: ``zh`` = z + h, ``zch`` = z + c + h, ``z`` = z."""
    if obs_mode not in OBS_MODES:
        raise WorldModelsError(f"unknown obs_mode {obs_mode!r}; choose one of {', '.join(OBS_MODES)}")
    return z_dim + {"zh": 1, "zch": 2, "z": 0}[obs_mode] * hidden


def controller_input(z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, obs_mode: str) -> torch.Tensor:
    """C's input from a latent ``z`` (B, Z) and M's LSTM ``state = (h, c)``, each (B, H)."""
    if obs_mode == "z":
        return z
    if state is None:
        raise WorldModelsError(f"obs_mode {obs_mode!r} needs M's hidden state")
    h, c = state
    return torch.cat([z, h] if obs_mode == "zh" else [z, c, h], dim=-1)  # (B, Z + H) or (B, Z + 2H)


class Controller(nn.Module):
    """``raw = W·x + b``; the action mapping turns ``raw`` into an env action."""

    def __init__(self, input_dim: int, output_dim: int, bias: bool = True):
        super().__init__()
        self.input_dim, self.output_dim, self.bias = input_dim, output_dim, bias
        self.fc = nn.Linear(input_dim, output_dim, bias=bias)
        nn.init.zeros_(self.fc.weight)  # CMA-ES starts from x0 = 0
        if bias:
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)  # (B, O)

    @property
    def n_params(self) -> int:
        return n_params(self.input_dim, self.output_dim, self.bias)

    def get_flat(self) -> np.ndarray:
        """All parameters as one float64 vector (weight row-major, then bias)."""
        return torch.cat([p.detach().reshape(-1) for p in self.fc.parameters()]).double().cpu().numpy()

    def set_flat(self, vec: Any) -> "Controller":
        vec = torch.as_tensor(np.asarray(vec, dtype=np.float64))
        if vec.shape != (self.n_params,):
            raise WorldModelsError(f"controller expects {self.n_params} parameters, got shape {tuple(vec.shape)}")
        with torch.no_grad():
            at = 0
            for p in self.fc.parameters():
                p.copy_(vec[at:at + p.numel()].view_as(p).to(p.dtype))
                at += p.numel()
        return self


def n_params(input_dim: int, output_dim: int, bias: bool = True) -> int:
    return output_dim * input_dim + (output_dim if bias else 0)


@dataclass(frozen=True)
class ActionMap:
    """How raw controller outputs become env actions, for one env family and action space.

    ``kind``: ``carracing`` (3 continuous), ``thirds`` (Doom: 1 output -> Discrete(3)), ``argmax`` (logits).
    """

    kind: str
    output_dim: int
    bias: bool
    n_actions: int = 0  # discrete spaces: how many actions

    @property
    def discrete(self) -> bool:
        return self.kind != "carracing"

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, O) raw outputs -> float (B, 3) for CarRacing or long (B,) for discrete spaces."""
        if self.kind == "carracing":
            t = torch.tanh(raw)
            return torch.stack([t[:, 0], (t[:, 1] + 1) / 2, t[:, 2].clamp(0, 1)], dim=-1)
        if self.kind == "thirds":
            t = torch.tanh(raw[:, 0])
            out = torch.full_like(t, DOOM_STAY, dtype=torch.long)
            out[t < -1 / 3] = DOOM_LEFT
            out[t > 1 / 3] = DOOM_RIGHT
            return out
        return raw.argmax(dim=-1)

    def env_action(self, action: torch.Tensor) -> Any:
        """One member's action for ``env.step``: float32 array (continuous) or int (discrete)."""
        if self.discrete:
            return int(action)
        return action.detach().cpu().numpy().astype(np.float32)

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """Continuous actions (B, 3) clipped to CarRacing's action space: steering [-1, 1], gas and brake [0, 1]."""
        low = torch.tensor([-1.0, 0.0, 0.0], dtype=action.dtype, device=action.device)
        return torch.minimum(torch.maximum(action, low), torch.ones_like(low))

    def model_input(self, action: torch.Tensor) -> torch.Tensor:
        """Actions as M consumes them: float (B, A); discrete ones one-hot."""
        if self.discrete:
            return nn.functional.one_hot(action.long(), self.n_actions).float()
        return action.float()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "output_dim": self.output_dim, "bias": self.bias, "n_actions": self.n_actions}


def make_action_map(family: str, action_desc: dict[str, Any]) -> ActionMap:
    """The paper's mapping for ``family`` (``carracing``, ``doom``, ``procgen``) and a described action space."""
    kind = action_desc.get("type")
    if family == "carracing":
        if kind != "box" or list(action_desc.get("shape", [])) != [3]:
            raise WorldModelsError(f"CarRacing controller expects a Box(3) action space, got {action_desc}")
        return ActionMap("carracing", 3, True)
    if kind != "discrete":
        raise WorldModelsError(f"no controller action mapping for {family} with action space {action_desc}")
    n = int(action_desc["n"])
    if family == "doom":
        if n != 3:
            raise WorldModelsError(f"Doom controller expects Discrete(3), got Discrete({n})")
        return ActionMap("thirds", 1, False, n)
    return ActionMap("argmax", n, True, n)


def action_map_from_dict(d: dict[str, Any]) -> ActionMap:
    return ActionMap(str(d["kind"]), int(d["output_dim"]), bool(d["bias"]), int(d.get("n_actions", 0)))


class BatchedController:
    """A population of controllers, one set of weights per batch member, applied in one einsum.

    ``params`` (P, N) candidates are repeated ``rollouts`` times: member ``p * rollouts + r`` runs
    candidate ``p``'s ``r``-th rollout, so ``returns.view(P, rollouts)`` groups them back.
    """

    def __init__(self, params: Any, input_dim: int, output_dim: int, bias: bool, rollouts: int = 1,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        p = torch.as_tensor(np.asarray(params), dtype=dtype, device=device)
        if p.dim() == 1:
            p = p[None]
        expected = n_params(input_dim, output_dim, bias)
        if p.shape[1] != expected:
            raise WorldModelsError(f"controller expects {expected} parameters, got {p.shape[1]}")
        p = p.repeat_interleave(rollouts, dim=0)  # (B, N), B = P * R
        n_w = output_dim * input_dim
        self.weight = p[:, :n_w].reshape(-1, output_dim, input_dim)  # (B, O, I)
        self.bias = p[:, n_w:] if bias else None  # (B, O)

    @property
    def batch_size(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raw = torch.einsum("boi,bi->bo", self.weight, x.to(self.weight.dtype))  # (B, O)
        return raw + self.bias if self.bias is not None else raw


ACTION_NOISE_STREAM = 0x5EED  # the dream's action noise draws apart from the dream's own randomness


def explore_batch(action: torch.Tensor, action_map: ActionMap, noise: float, generator: torch.Generator) -> torch.Tensor:
    """A batch of C's actions with exploration noise, as the real env's :func:`worldmodels.play.explore` adds it:
    continuous, Gaussian noise of std ``noise`` and the sum clipped to the action space; discrete, with
    probability ``noise`` a uniformly random action instead. Drawn from one ``generator`` for the batch."""
    if action_map.discrete:
        swap = torch.rand(action.shape[0], generator=generator, device=action.device) < noise
        random = torch.randint(action_map.n_actions, action.shape, generator=generator, device=action.device)
        return torch.where(swap, random.to(action.dtype), action)
    eps = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
    return action_map.clip(action + noise * eps)


@torch.no_grad()
def rollout_dream(dream: Any, controller: BatchedController, action_map: ActionMap, seed: int | None = None,
                  max_steps: int | None = None, noise: float = 0.0) -> np.ndarray:
    """Play one batched dream to the end with per-member controllers; returns ``dream.returns`` (B,).

    ``dream`` is a :class:`worldmodels.dream.DreamEnv` (or anything with its ``reset``/``step``/
    ``returns``) whose batch size equals ``controller.batch_size``; finished members stay frozen.
    ``noise`` > 0 plays C with exploration noise on its actions (:func:`explore_batch`, seeded from ``seed``),
    the stochastic policy that ``collect`` and ``evaluate --noise`` play in the real env; M steps the actions taken.
    """
    obs = dream.reset(seed=seed)  # (B, obs_dim)
    if obs.shape[0] != controller.batch_size:
        raise WorldModelsError(f"dream batch {obs.shape[0]} != {controller.batch_size} controllers")
    generator = None
    if noise:
        generator = torch.Generator(device=obs.device).manual_seed((int(seed or 0) + ACTION_NOISE_STREAM) % 2**63)
    steps = 0
    while max_steps is None or steps < max_steps:
        action = action_map(controller(obs))
        if noise:
            action = explore_batch(action, action_map, noise, generator)
        obs, _, done, _ = dream.step(action)
        steps += 1
        if bool(done.all()):
            break
    return dream.returns.detach().double().cpu().numpy()
