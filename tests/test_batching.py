import dataclasses

import pytest
import torch

from nerf.batching import RayBatcher
from nerf.config import ConfigError, TrainConfig
from nerf.datasets.scene import Scene
from nerf.datasets.blender import pose_spherical
from nerf.rays import get_rays


def _scene(num=3, height=4, width=5):
    images = torch.rand(num, height, width, 3)
    poses = torch.stack([torch.from_numpy(pose_spherical(40.0 * k, -30.0, 4.0)).float() for k in range(num)])
    return Scene(images=images, poses=poses, height=height, width=width, focal=6.0, i_train=[0, 2], i_val=[1],
                 i_test=[1], render_poses=poses, near=2.0, far=6.0, use_ndc=False, basedir="mem")


def _ray_table(scene):
    """Every (rays_o, rays_d, rgb) of the training images, as 9 numbers per ray."""
    rows = []
    for k in scene.i_train:
        o, d = get_rays(scene.height, scene.width, scene.focal, scene.poses[k], offset=scene.pixel_offset)
        rows.append(torch.cat([o, d, scene.images[k]], -1).reshape(-1, 9))
    return torch.cat(rows)


def test_use_batching_visits_every_training_pixel_once_per_epoch():
    scene = _scene()
    batcher = RayBatcher(scene, TrainConfig(num_random_rays=7, use_batching=True), seed=0)
    assert batcher.batches_per_epoch == 6  # ceil(40 / 7): the last batch is smaller
    epoch = [torch.cat(batcher.batch(step), -1) for step in range(6)]
    assert [len(b) for b in epoch] == [7, 7, 7, 7, 7, 5]
    seen = torch.cat(epoch)
    table = _ray_table(scene)
    matches = (seen[:, None] - table[None]).abs().amax(-1) < 1e-5
    assert torch.equal(matches.sum(1), torch.ones(40, dtype=torch.long))  # each batch ray is a real ray
    assert torch.equal(matches.sum(0), torch.ones(40, dtype=torch.long))  # and each ray appears once
    again = torch.cat(batcher.batch(6), -1)
    assert not torch.equal(again, epoch[0])  # reshuffled next epoch
    fresh = RayBatcher(scene, TrainConfig(num_random_rays=7, use_batching=True), seed=0)
    assert torch.equal(torch.cat(fresh.batch(3), -1), epoch[3])  # a pure function of the step


def test_rays_through_pixel_centres_are_the_images_rays_through_centres():
    scene = _scene()
    scene.pixel_offset = 0.5  # dataset.pixel_center
    batcher = RayBatcher(scene, TrainConfig(num_random_rays=40, use_batching=True), seed=0)
    seen = torch.cat(batcher.batch(0), -1)  # the whole epoch in one batch
    centres, corners = _ray_table(scene), _ray_table(dataclasses.replace(scene, pixel_offset=0.0))
    assert torch.equal(((seen[:, None] - centres[None]).abs().amax(-1) < 1e-5).sum(0), torch.ones(40, dtype=torch.long))
    assert not ((seen[:, None] - corners[None]).abs().amax(-1) < 1e-5).any()


def test_single_image_batches_without_replacement_and_precrop():
    scene = _scene(height=8, width=8)
    opts = TrainConfig(num_random_rays=16, precrop_iters=1, precrop_frac=0.5)
    batcher = RayBatcher(scene, opts, seed=0)
    rays_o, rays_d, target = batcher.batch(0)
    table = _ray_table(scene)
    idx = ((torch.cat([rays_o, rays_d, target], -1)[:, None] - table[None]).abs().amax(-1) < 1e-5).float().argmax(1)
    image, pixel = idx // 64, idx % 64
    assert len(set(image.tolist())) == 1  # one image per step
    assert len(set(pixel.tolist())) == 16  # without replacement
    rows, cols = pixel // 8, pixel % 8
    assert ((rows >= 2) & (rows <= 5) & (cols >= 2) & (cols <= 5)).all()  # central 4x4 crop
    later = RayBatcher(scene, opts, seed=0).batch(5)[2]
    assert later.shape == (16, 3)


def test_batch_larger_than_an_image_is_refused():
    with pytest.raises(ConfigError, match="num_random_rays"):
        RayBatcher(_scene(), TrainConfig(num_random_rays=100), seed=0)


def test_a_batch_larger_than_the_precrop_is_refused_only_while_the_precrop_lasts():
    scene = _scene(height=8, width=8)  # the central crop (frac 0.5) has 4x4 = 16 pixels
    batcher = RayBatcher(scene, TrainConfig(num_random_rays=20, precrop_iters=5, precrop_frac=0.5), seed=0)
    with pytest.raises(ConfigError, match=r"num_random_rays \(20\) exceeds the 4x4 precrop region of the 8x8 images"):
        batcher.check_crop(0)
    with pytest.raises(ConfigError, match="4x4 precrop region"):
        batcher.batch(4)
    batcher.check_crop(5)  # a run resumed after the precrop: whole images, 64 pixels
    assert batcher.batch(5)[0].shape == (20, 3)
