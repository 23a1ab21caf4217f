"""Training ray batches, computed on the device from pixel indices (no precomputed ray table).

Two official modes: `use_batching` shuffles every training pixel once per epoch and takes consecutive
slices (LLFF); otherwise each step picks one random training image and N_rand of its pixels without
replacement, optionally from the central crop for the first `precrop_iters` steps (Blender).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .config import ConfigError, TrainConfig
from .datasets.scene import Scene
from .distributed import SINGLE, World
from .rays import pixel_directions, rays_from_directions


class RayBatcher:
    """`batch(step)` -> (rays_o [R, 3], rays_d [R, 3], target [R, 3]) for the scene's training views.

    With use_batching, the epoch permutation is drawn from a generator seeded by (seed, epoch), so a
    batch is a pure function of the step and resuming needs no extra state; otherwise the global torch
    RNG is used (its state is saved in checkpoints).

    Under torchrun every rank draws the same global batch and returns its share of it (world.share), so
    the ranks' rays never overlap and together are the rays one process trains on.
    """

    def __init__(self, scene: Scene, opts: TrainConfig, seed: int, device: Optional[torch.device] = None,
                 views: Optional[list] = None, world: World = SINGLE):
        self.scene = scene
        self.opts = opts
        self.seed = seed
        self.device = device if device is not None else scene.images.device
        views = scene.i_train if views is None else views
        # only these views go to the device; the other images stay where the loader put them
        self.images = scene.images[views].to(self.device)  # [N_train, H, W, 3]
        self.poses = scene.poses[views].to(self.device)  # [N_train, 4, 4]
        self.num_train = len(views)
        self.pixels_per_image = scene.height * scene.width
        self.total_pixels = self.num_train * self.pixels_per_image
        self.batches_per_epoch = math.ceil(self.total_pixels / opts.num_random_rays)
        self._epoch = -1
        self._permutation = None
        self.world = world
        if not opts.use_batching and opts.num_random_rays > self.pixels_per_image:
            raise ConfigError(f"nerf.train.num_random_rays ({opts.num_random_rays}) exceeds the pixels of one "
                             f"image ({self.pixels_per_image}); lower it or set use_batching")
        if opts.use_batching:
            check_epoch_remainder(self.total_pixels, opts.num_random_rays, world.size)


    def check_crop(self, start_step: int) -> None:
        """ConfigError when a batch does not fit the precrop region that steps from start_step still use
        (called before training, so that the error comes before any output)."""
        opts = self.opts
        if opts.use_batching or start_step >= opts.precrop_iters:
            return
        _, _, crop_h, crop_w = self.crop(start_step)
        if opts.num_random_rays > crop_h * crop_w:
            raise ConfigError(f"nerf.train.num_random_rays ({opts.num_random_rays}) exceeds the {crop_h}x{crop_w} "
                              f"precrop region of the {self.scene.height}x{self.scene.width} images; lower it or "
                              "raise nerf.train.precrop_frac")

    def crop(self, step: int) -> tuple[int, int, int, int]:
        """(first row, first column, rows, columns) of the region rays are drawn from at `step`: the central
        precrop_frac crop before precrop_iters, else the whole image."""
        s, opts = self.scene, self.opts
        if step < opts.precrop_iters:
            half_h, half_w = int(s.height // 2 * opts.precrop_frac), int(s.width // 2 * opts.precrop_frac)
            return s.height // 2 - half_h, s.width // 2 - half_w, 2 * half_h, 2 * half_w
        return 0, 0, s.height, s.width

    def rays_at(self, train_index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        """World rays and target colours of pixels (row, col) of the batcher's views (positions in its
        view list, i_train by default): [R] each -> 3 x [R, 3]."""
        s = self.scene
        train_index, rows, cols = train_index.to(self.device), rows.to(self.device), cols.to(self.device)
        dirs = pixel_directions(cols, rows, s.height, s.width, s.focal, s.pixel_offset)  # [R, 3]
        rays_o, rays_d = rays_from_directions(dirs, self.poses[train_index, :3, :4])  # [R, 3] each
        return rays_o, rays_d, self.images[train_index, rows, cols]

    def batch(self, step: int):
        s, opts, device = self.scene, self.opts, self.device
        if opts.use_batching:
            epoch, k = divmod(step, self.batches_per_epoch)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._permutation = torch.randperm(self.total_pixels, generator=generator).to(device)
                self._epoch = epoch
            flat = self._permutation[k * opts.num_random_rays:(k + 1) * opts.num_random_rays]  # [R]
            flat = flat[self.world.share(len(flat))]  # [R / N], this rank's share
            pixel = flat % self.pixels_per_image
            return self.rays_at(flat // self.pixels_per_image, pixel // s.width, pixel % s.width)

        image = torch.randint(self.num_train, (1,), device=device)  # [1], a position in i_train
        row0, col0, crop_h, crop_w = self.crop(step)
        if opts.num_random_rays > crop_h * crop_w:
            self.check_crop(step)
        chosen = torch.randperm(crop_h * crop_w, device=device)[:opts.num_random_rays]  # without replacement
        chosen = chosen[self.world.share(opts.num_random_rays)]  # [R / N], this rank's share
        rows, cols = row0 + chosen // crop_w, col0 + chosen % crop_w
        return self.rays_at(image.expand(len(chosen)), rows, cols)


def check_epoch_remainder(total: int, num_random_rays: int, world_size: int) -> None:
    """ConfigError when the short last batch of a use_batching epoch (total % num_random_rays rays) has
    fewer rays than there are ranks: some rank would get none."""
    remainder = total % num_random_rays
    if 0 < remainder < world_size:
        raise ConfigError(f"nerf.train.num_random_rays ({num_random_rays}): the last batch of each epoch of "
                          f"{total} training rays has {remainder}, fewer than the world size ({world_size}); "
                          "change num_random_rays by a few rays")
