import pytest
import torch

from nerf.checkpoint import CheckpointError
from nerf.config import ModelConfig, ModelsConfig
from nerf.encoding import positional_encoding
from nerf.importers import KRRISH94, NATIVE, YENCHENLIN, detect_format, fold_pruning_masks, models_from_checkpoint
from nerf.config import RenderConfig
from nerf.rendering import render_image

PAPER_SHAPES = {  # yenchenlin NeRF(D=8, W=256, input_ch=63, input_ch_views=27, skips=[4]), REFERENCE 8.4
    "pts_linears.0": (256, 63), **{f"pts_linears.{k}": (256, 256) for k in (1, 2, 3, 4, 6, 7)},
    "pts_linears.5": (256, 319), "views_linears.0": (128, 283), "feature_linear": (256, 256),
    "alpha_linear": (1, 256), "rgb_linear": (3, 128),
}


def _random_state(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out_f, in_f) in shapes.items():
        state[name + ".weight"] = torch.randn(out_f, in_f, generator=g) / in_f ** 0.5
        state[name + ".bias"] = torch.randn(out_f, generator=g) * 0.1
    return state


def _yenchenlin_forward(state, points, dirs):
    """yenchenlin NeRF.forward written from its documented layout (REFERENCE 8.5-8.6)."""
    lin = lambda name, x: x @ state[name + ".weight"].T + state[name + ".bias"]  # noqa: E731
    x = positional_encoding(points, 10)
    h = x
    for k in range(8):
        h = torch.relu(lin(f"pts_linears.{k}", h))
        if k == 4:
            h = torch.cat([x, h], -1)
    alpha = lin("alpha_linear", h)
    feature = lin("feature_linear", h)
    h = torch.relu(lin("views_linears.0", torch.cat([feature, positional_encoding(dirs, 4)], -1)))
    return torch.cat([lin("rgb_linear", h), alpha], -1)


def test_yenchenlin_tar_maps_onto_the_paper_model():
    coarse_state, fine_state = _random_state(PAPER_SHAPES, 1), _random_state(PAPER_SHAPES, 2)
    ckpt = {"global_step": 9999, "network_fn_state_dict": coarse_state, "network_fine_state_dict": fine_state,
            "optimizer_state_dict": {}}
    assert detect_format(ckpt, "x.tar") == YENCHENLIN
    loaded = models_from_checkpoint(ckpt, "x.tar", ModelsConfig())
    assert loaded.models.coarse.type == "PaperNeRFModel" and loaded.step == 10000
    points, dirs = torch.randn(50, 3), torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    assert torch.allclose(loaded.coarse(points, dirs), _yenchenlin_forward(coarse_state, points, dirs), atol=1e-5)
    assert torch.allclose(loaded.fine(points, dirs), _yenchenlin_forward(fine_state, points, dirs), atol=1e-5)


def test_yenchenlin_without_viewdirs_drops_the_unused_fifth_output():
    shapes = {"pts_linears.0": (64, 63), "pts_linears.1": (64, 64), "pts_linears.2": (64, 64),
              "pts_linears.3": (64, 127), "views_linears.0": (32, 64), "output_linear": (5, 64)}
    state = _random_state(shapes, 3)
    loaded = models_from_checkpoint({"global_step": 0, "network_fn_state_dict": state,
                                     "network_fine_state_dict": None}, "y.tar", ModelsConfig())
    m = loaded.models.coarse
    assert (m.type, m.num_layers, m.hidden_size, m.skip_connect_every, m.use_viewdirs) == (
        "FlexibleNeRFModel", 4, 64, 2, False)
    assert loaded.fine is None and loaded.models.fine is None
    points = torch.randn(7, 3)
    x = positional_encoding(points, 10)
    h = x
    for k in range(4):
        h = torch.relu(h @ state[f"pts_linears.{k}.weight"].T + state[f"pts_linears.{k}.bias"])
        if k == 2:
            h = torch.cat([x, h], -1)
    expected = (h @ state["output_linear.weight"].T + state["output_linear.bias"])[:, :4]
    assert torch.allclose(loaded.coarse(points, None), expected, atol=1e-5)


KRRISH_SHAPES = {"layer1": (128, 63), "layers_xyz.0": (128, 128), "layers_xyz.1": (128, 128),
                 "layers_xyz.2": (128, 128), "fc_feat": (128, 128), "fc_alpha": (1, 128),
                 "layers_dir.0": (64, 155), "fc_rgb": (3, 64)}


def _krrish94_forward(state, points, dirs):
    """krrish94 FlexibleNeRFModel.forward with its quirks (no ReLU after layer1, ReLU on fc_feat)."""
    lin = lambda name, x: x @ state[name + ".weight"].T + state[name + ".bias"]  # noqa: E731
    h = lin("layer1", positional_encoding(points, 10))
    for k in range(3):
        h = torch.relu(lin(f"layers_xyz.{k}", h))
    feat = torch.relu(lin("fc_feat", h))
    alpha = lin("fc_alpha", h)
    h = torch.relu(lin("layers_dir.0", torch.cat([feat, positional_encoding(dirs, 4)], -1)))
    return torch.cat([lin("fc_rgb", h), alpha], -1)


def test_krrish94_ckpt_uses_the_compatibility_model_whatever_the_config_says():
    coarse_state, fine_state = _random_state(KRRISH_SHAPES, 4), _random_state(KRRISH_SHAPES, 5)
    ckpt = {"iter": 199999, "model_coarse_state_dict": coarse_state, "model_fine_state_dict": fine_state,
            "optimizer_state_dict": {}, "loss": torch.tensor(0.01), "psnr": 21.4}
    assert detect_format(ckpt, "c.ckpt") == KRRISH94
    its_config = ModelsConfig(coarse=ModelConfig(type="FlexibleNeRFModel", num_layers=8, hidden_size=256),
                              fine=ModelConfig(type="FlexibleNeRFModel", num_layers=8, hidden_size=256))
    loaded = models_from_checkpoint(ckpt, "c.ckpt", its_config)
    m = loaded.models.fine
    assert (m.type, m.num_layers, m.hidden_size, m.hidden_size_dir) == ("Krrish94NeRFModel", 4, 128, 64)
    assert loaded.step == 200000 and "4x128" in loaded.description
    points, dirs = torch.randn(40, 3), torch.nn.functional.normalize(torch.randn(40, 3), dim=-1)
    assert torch.allclose(loaded.coarse(points, dirs), _krrish94_forward(coarse_state, points, dirs), atol=1e-5)
    assert torch.allclose(loaded.fine(points, dirs), _krrish94_forward(fine_state, points, dirs), atol=1e-5)


def test_pruned_fork_checkpoints_fold_their_masks():
    state = _random_state(KRRISH_SHAPES, 6)
    mask = (torch.rand(128, 1) > 0.3).float().expand(128, 63)
    pruned = {k: v for k, v in state.items() if k != "layer1.weight"}
    pruned["layer1.weight_orig"], pruned["layer1.weight_mask"] = state["layer1.weight"], mask
    folded = fold_pruning_masks(pruned)
    assert torch.equal(folded["layer1.weight"], state["layer1.weight"] * mask)
    assert set(folded) == set(state)


def test_same_weights_render_the_same_image_as_the_reference():
    state = _random_state(PAPER_SHAPES, 7)
    loaded = models_from_checkpoint({"global_step": 0, "network_fn_state_dict": state,
                                     "network_fine_state_dict": None}, "z.tar", ModelsConfig())

    class Reference(torch.nn.Module):
        def forward(self, points, dirs):
            return _yenchenlin_forward(state, points, dirs)

    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]])
    opts = RenderConfig(perturb=False, num_coarse=16, num_fine=0, white_background=True)
    ours = render_image(loaded.coarse, None, c2w, 6, 6, 6.0, 2.0, 6.0, False, opts)
    reference = render_image(Reference(), None, c2w, 6, 6, 6.0, 2.0, 6.0, False, opts)
    assert torch.allclose(ours["rgb"], reference["rgb"], atol=1e-5)


def test_unknown_and_malformed_checkpoints():
    with pytest.raises(CheckpointError, match="unrecognised checkpoint"):
        detect_format({"weights": 1}, "w.pt")
    bad = {"global_step": 0, "network_fn_state_dict": {"pts_linears.0.weight": torch.zeros(8, 50),
                                                       "pts_linears.0.bias": torch.zeros(8)}}
    with pytest.raises(CheckpointError, match="takes 50 inputs"):
        models_from_checkpoint(bad, "b.tar", ModelsConfig())
    odd_skip = _random_state({"pts_linears.0": (8, 63), "pts_linears.1": (8, 8), "pts_linears.2": (8, 71),
                              "pts_linears.3": (8, 8), "output_linear": (4, 8)}, 0)
    with pytest.raises(CheckpointError, match="cannot be expressed"):
        models_from_checkpoint({"global_step": 0, "network_fn_state_dict": odd_skip}, "s.tar", ModelsConfig())
    assert detect_format({"format_version": 1}, "n.ckpt") == NATIVE


def test_a_grid_checkpoint_rendered_with_another_voxel_grid_section_says_so():
    import dataclasses

    from nerf.config import VoxelGridConfig
    from nerf.models import build_model

    models = ModelsConfig(coarse=ModelConfig(type="VoxelGridModel"), fine=None)
    trained_as = VoxelGridConfig(representation="vm", num_voxels=4096, num_voxels_start=4096, grow_steps=[],
                                 density_components=2, appearance_components=3)
    model = build_model(models.coarse, trained_as)
    ckpt = {"format_version": 1, "step": 5, "model_coarse_state_dict": model.state_dict(),
            "config": {"models": {"coarse": dataclasses.asdict(models.coarse), "fine": None},
                       "voxel_grid": dataclasses.asdict(trained_as)}}
    same = models_from_checkpoint(ckpt, "g.ckpt", models, trained_as)
    assert same.description == "g.ckpt: this project's checkpoint, 5 steps trained"
    dense = dataclasses.replace(trained_as, representation="dense", grid_lr=0.5)  # grid_lr: training only
    loaded = models_from_checkpoint(ckpt, "g.ckpt", models, dense)
    assert loaded.description == ("g.ckpt: this project's checkpoint, 5 steps trained; its voxel_grid "
                                  "(representation 'vm', config 'dense') differs from the config's: using the "
                                  "checkpoint's")
    assert type(loaded.coarse).__name__ == "TensorVMModel"  # and the checkpoint's representation renders
