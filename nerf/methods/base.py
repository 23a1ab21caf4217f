"""The interface between the training loop and a kind of model (a method).

A method owns its networks (`coarse`, and `fine` where it has one: the names of the checkpoint format),
how they run (FieldRunners: precision, compile), its sampler, and everything the loop must not know about
it: its parameter groups, its per-step hooks, its loss terms, and the state it adds to a checkpoint.
train_nerf.py and eval_nerf.py talk to a method only through this interface (the benchmark, which times
the phases of a step, also reads `runners` and `sampler`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..compositing import set_compiled_compositing
from ..config import Config, RenderConfig, RuntimeConfig
from ..distributed import SINGLE, World
from ..losses import photometric_loss
from ..rays import Rays
from ..rendering import render_image, render_rays
from ..runtime import field_runners


class Method:
    """A coarse network with an optional fine one, rendered by `rendering.render_rays`.

    Subclasses override the hooks below; the defaults are those of a method with nothing to add.
    """

    fused_optimizer = False  # Adam's fused kernel for all groups (worth it for millions of grid values)
    keeps_gradient_buffers = False  # zero .grad in place instead of freeing it (see optimizer.zero_gradients)

    def __init__(self, cfg: Config, coarse: nn.Module, fine: Optional[nn.Module], device: torch.device):
        self.cfg, self.coarse, self.fine, self.device = cfg, coarse, fine, device
        # the training processes: state a method learns from its rank's rays alone is reduced over them
        # where it is read (before_step and checkpoint_state are called on every rank at the same steps)
        self.world: World = SINGLE
        self.sampler = None  # an occupancy sampler, for the methods that march through a grid
        self.set_runtime(cfg.runtime)

    # ---------------------------------------------------------------------------------------- set-up
    def set_runtime(self, runtime: RuntimeConfig) -> None:
        """(Re)wrap the networks for rendering (after a change of their layers, too). ValueError where the
        precision is unsupported on the device."""
        self.runners = field_runners(self.coarse, self.fine, runtime, self.device)
        set_compiled_compositing(runtime.compile)

    def networks(self) -> list[nn.Module]:
        return [m for m in (self.coarse, self.fine) if m is not None]

    def parameters(self) -> list[nn.Parameter]:
        """Every trained parameter, coarse first (the optimizer's order)."""
        return [p for m in self.networks() for p in m.parameters()]

    def parameter_groups(self) -> list[dict]:
        """Adam's parameter groups; a group's `lr_scale` multiplies the scheduled learning rate."""
        return [{"params": self.parameters()}]

    def prepare_to_load(self, ckpt: dict) -> None:
        """Before the optimizer is built for a resumed run: give the networks the stored shapes."""

    def start(self, start_step: int, ckpt: Optional[dict], path: Optional[str] = None) -> None:
        """Before the first step: restore the method's own state from a checkpoint of ours (or None) read from
        `path`; CheckpointError when it does not fit."""

    def prepare_rendering(self, stored: Optional[dict]) -> Optional[str]:
        """Before rendering a trained model: set up the sampler from the checkpoint's stored state (or
        without one); returns a line that describes what was done, or None."""
        return None

    def scene_warning(self, scene) -> Optional[str]:
        """A warning about the scene for this method, or None."""
        return None

    # ------------------------------------------------------------------------------------ each step
    def before_step(self, step: int) -> bool:
        """Per-step hooks before the batch is rendered; True when the parameters were replaced (the caller
        then builds a new optimizer)."""
        return False

    def render_rays(self, rays: Rays, opts: RenderConfig, generator: Optional[torch.Generator] = None) -> dict:
        return render_rays(*self.runners, rays, opts, generator, self.sampler)

    def after_render(self, step: int, rays: Rays, out: dict) -> None:
        """What the method learns from a rendered training batch (no gradients)."""

    def loss(self, out: dict, target: torch.Tensor, rays: Rays, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, the main MSE that the PSNR is computed from)."""
        return photometric_loss(out, target)

    def scalars(self, out: dict, target: torch.Tensor) -> dict:
        """Extra TensorBoard scalars of a logging step (they may synchronise with the device)."""
        return {}

    def checkpoint_state(self) -> dict:
        """What the method adds to a checkpoint (beside the networks' state dicts); called on every rank."""
        return {}

    # ------------------------------------------------------------------------------------ rendering
    def train(self, mode: bool = True) -> None:
        for runner in self.runners:
            if runner is not None:
                runner.train(mode)

    def render_image(self, c2w: torch.Tensor, scene, opts: RenderConfig, stride: int = 1) -> dict:
        """An image of `scene`'s camera (its intrinsics, near/far, NDC) from pose c2w; see rendering.render_image."""
        return render_image(*self.runners, c2w, scene.height, scene.width, scene.focal, scene.near, scene.far,
                            scene.use_ndc, opts, stride=stride, sampler=self.sampler, pixel_offset=scene.pixel_offset)
