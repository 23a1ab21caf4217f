import glob
import os
import textwrap

import pytest

from nerf.config import (Config, ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config,
                         overrides_from, read_yaml, save_config)
from tests.conftest import ROOT

KRRISH94_LEGO = textwrap.dedent("""
    experiment:
      id: lego
      logdir: logs
      randomseed: 42
      train_iters: 200000
      validate_every: 100
      save_every: 5000
      print_every: 100
    dataset:
      type: blender
      basedir: cache/nerf_synthetic/lego
      half_res: True
      testskip: 1
      no_ndc: True
      near: 2
      far: 6
    models:
      coarse:
        type: FlexibleNeRFModel
        num_layers: 4
        hidden_size: 128
        skip_connect_every: 3
        include_input_xyz: True
        num_encoding_fn_xyz: 10
        use_viewdirs: True
        include_input_dir: True
        num_encoding_fn_dir: 4
        log_sampling_xyz: True
        log_sampling_dir: True
      fine:
        type: FlexibleNeRFModel
        num_layers: 4
        hidden_size: 128
        skip_connect_every: 3
        num_encoding_fn_xyz: 10
        include_input_xyz: True
        use_viewdirs: True
        include_input_dir: True
        num_encoding_fn_dir: 4
        log_sampling_xyz: True
        log_sampling_dir: True
    optimizer:
      type: Adam
      lr: 5.0E-3
    scheduler:
      lr_decay: 250
      lr_decay_factor: 0.1
    nerf:
      use_viewdirs: True
      encode_position_fn: positional_encoding
      encode_direction_fn: positional_encoding
      train:
        num_random_rays: 1024
        chunksize: 16384
        perturb: True
        num_coarse: 64
        num_fine: 64
        white_background: True
        radiance_field_noise_std: 0.2
        lindisp: False
      validation:
        chunksize: 16384
        perturb: False
        num_coarse: 64
        num_fine: 64
        white_background: True
        radiance_field_noise_std: 0.
        lindisp: False
""")


def _write(tmp_path, text, name="cfg.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_krrish94_style_config_loads_and_every_key_lands(tmp_path):
    cfg = load_config(_write(tmp_path, KRRISH94_LEGO))
    assert cfg.dataset.half_res is True and cfg.dataset.near == 2.0
    assert cfg.models.coarse.num_layers == 4 and cfg.models.fine.hidden_size == 128
    assert cfg.models.coarse.skip_connect_every == 3
    assert cfg.optimizer.lr == pytest.approx(5e-3)
    assert cfg.nerf.train.radiance_field_noise_std == pytest.approx(0.2)
    assert cfg.nerf.validation.perturb is False
    assert cfg.optimizer.eps == pytest.approx(1e-7)  # default: the official Keras epsilon


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, KRRISH94_LEGO.replace("    lindisp: False\n", "    lindisp: False\n    bogus: 1\n", 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert path in str(err.value) and "'nerf.train.bogus'" in str(err.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'quantization'"):
        load_config(_write(tmp_path, KRRISH94_LEGO + "quantization:\n  bits: 8\n"))
    with pytest.raises(ConfigError, match="unknown key 'pruning.increment_iter'"):  # the fork's dead key
        load_config(_write(tmp_path, KRRISH94_LEGO + "pruning:\n  increment_iter: 10000\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'experiment.train_iters' expects int, got str"):
        load_config(_write(tmp_path, KRRISH94_LEGO.replace("train_iters: 200000", "train_iters: lots")))
    with pytest.raises(ConfigError, match=r"'dataset.half_res' expects bool"):
        load_config(_write(tmp_path, KRRISH94_LEGO.replace("half_res: True", "half_res: 1")))


def test_malformed_yaml_names_file(tmp_path):
    path = _write(tmp_path, "experiment:\n  id: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yml"))
    path = _write(tmp_path, "experiment:\n  id: a\n  train_iters: 3\n  id: b\ndataset:\n  basedir: x\n")
    with pytest.raises(ConfigError, match="malformed YAML at line 4: key 'id' appears twice in one mapping"):
        load_config(path)  # plain YAML would keep the last id, silently


def test_a_folder_or_a_binary_file_as_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: is a folder; expected a YAML config file$"):
        load_config(str(tmp_path))
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ConfigError, match=rf"^{binary}: not a text file"):
        load_config(str(binary))


def test_merge_keys_load_and_an_unhashable_key_is_one_line(tmp_path):
    text = ("base: &base\n  train_iters: 7\n  id: a\nexperiment:\n  <<: *base\n  id: b\n"
            "dataset:\n  basedir: x\n")
    data = read_yaml(_write(tmp_path, text))
    assert data["experiment"] == {"train_iters": 7, "id": "b"}  # merged, then overridden: not a duplicate
    with pytest.raises(ConfigError, match="malformed YAML at line 1: found unhashable key"):
        read_yaml(_write(tmp_path, "? [a, b]\n: 1\n"))


def test_experiment_id_must_stay_under_the_logdir():
    for bad in ("", "./", "..", "../..", "a/../..", "a/..", "/abs"):
        with pytest.raises(ConfigError, match="'experiment.id' expects a run name"):
            config_from_dict({"dataset": {"basedir": "x"}, "experiment": {"id": bad}})
    assert config_from_dict({"dataset": {"basedir": "x"}, "experiment": {"id": "scene/run[1]"}}).experiment.id


def test_a_number_for_a_text_key_says_how_to_quote_it(tmp_path):
    path = _write(tmp_path, "dataset:\n  basedir: x\n")
    with pytest.raises(ConfigError, match=r"'experiment.id' expects str, got int 123 \(quote it to mean text: \"123\"\)"):
        load_config(path, ["experiment.id=123"])
    assert load_config(path, ['experiment.id="123"']).experiment.id == "123"


def test_only_true_and_false_are_booleans(tmp_path):
    """YAML 1.1 reads yes / no / on / off as booleans; the loader reads them as text (YAML 1.2), so that a
    boolean key refuses them and a text key keeps them."""
    path = _write(tmp_path, "dataset:\n  basedir: x\n  half_res: True\n")
    assert load_config(path).dataset.half_res is True
    for word in ("yes", "on", "off", "no", "y"):
        with pytest.raises(ConfigError, match=rf"'dataset.half_res' expects bool, got str '{word}' \(true or false\)"):
            load_config(path, [f"dataset.half_res={word}"])
    with pytest.raises(ConfigError, match="'nerf.train.perturb' expects bool, got str 'off'"):
        load_config(_write(tmp_path, "dataset:\n  basedir: x\nnerf:\n  train:\n    perturb: off\n", "off.yml"))
    assert load_config(path, ["experiment.id=no", "dataset.half_res=false"]).experiment.id == "no"


def test_float_written_without_dot_is_accepted():
    cfg = config_from_dict({"dataset": {"basedir": "x"}, "optimizer": {"lr": "5e-4"}})
    assert cfg.optimizer.lr == pytest.approx(5e-4)


def test_overrides_apply_and_are_checked(tmp_path):
    path = _write(tmp_path, KRRISH94_LEGO)
    cfg = load_config(path, ["experiment.train_iters=10", "nerf.train.perturb=false", "dataset.basedir=/data/x"])
    assert cfg.experiment.train_iters == 10 and cfg.nerf.train.perturb is False
    assert cfg.dataset.basedir == "/data/x"
    with pytest.raises(ConfigError, match="'experiment.nope'"):
        load_config(path, ["experiment.nope=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["experiment.train_iters"])
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize("script", ["train_nerf", "eval_nerf", "cache_dataset"])
def test_set_takes_several_overrides_after_one_flag_and_the_repeated_form(script):
    module = __import__(script)
    required = {"train_nerf": ["--config", "c.yml"], "eval_nerf": ["--config", "c.yml", "--checkpoint", "x.ckpt",
                                                                    "--savedir", "out"],
                "cache_dataset": ["--config", "c.yml", "--savedir", "out"]}[script]
    args = module.parse_args(required + ["--set", "a.b=1", "c.d=x y", "--set", "e.f=[1, 2]"])
    assert overrides_from(args.set) == ["a.b=1", "c.d=x y", "e.f=[1, 2]"]
    assert apply_overrides({}, overrides_from(args.set)) == {"a": {"b": 1}, "c": {"d": "x y"}, "e": {"f": [1, 2]}}


def test_a_positional_argument_after_set_is_named_in_the_error(tmp_path):
    path = _write(tmp_path, KRRISH94_LEGO)
    with pytest.raises(ConfigError, match="'test-run': expected section.key=value .positional arguments go before"):
        load_config(path, ["dataset.basedir=/x", "test-run"])


def test_semantic_errors():
    base = {"dataset": {"basedir": "x"}}
    with pytest.raises(ConfigError, match="models.coarse.num_layers"):
        config_from_dict({**base, "models": {"coarse": {"type": "PaperNeRFModel", "num_layers": 4}}})
    with pytest.raises(ConfigError, match="models.fine.use_viewdirs"):
        config_from_dict({**base, "models": {"fine": {"use_viewdirs": False}}})
    with pytest.raises(ConfigError, match="nerf.train.num_fine"):
        config_from_dict({**base, "models": {"fine": None}})
    with pytest.raises(ConfigError, match="dataset.no_ndc"):
        config_from_dict({"dataset": {"basedir": "x", "type": "blender", "no_ndc": False}})
    with pytest.raises(ConfigError, match="dataset.basedir"):
        config_from_dict({})
    with pytest.raises(ConfigError, match="dataset.near"):
        config_from_dict({"dataset": {"basedir": "x", "near": 2.0}})
    with pytest.raises(ConfigError, match="nerf.validation.white_background"):
        config_from_dict({**base, "nerf": {"train": {"white_background": True},
                                           "validation": {"white_background": False}}})
    with pytest.raises(ConfigError, match="experiment.device"):
        config_from_dict({**base, "experiment": {"device": "gpu"}})
    with pytest.raises(ConfigError, match=r"'experiment.train_iters' expects an integer >= 1, got 0"):
        config_from_dict({**base, "experiment": {"train_iters": 0}})
    with pytest.raises(ConfigError, match="scheduler.decay_start"):
        config_from_dict({**base, "scheduler": {"decay_start": -1}})
    ok = config_from_dict({**base, "models": {"fine": None}, "nerf": {"train": {"num_fine": 0},
                                                                       "validation": {"num_fine": 0}}})
    assert ok.models.fine is None


def test_validation_inherits_unset_sampling_keys_from_train():
    cfg = config_from_dict({"dataset": {"basedir": "x"},
                            "nerf": {"train": {"num_coarse": 32, "num_fine": 16, "white_background": True},
                                     "validation": {"num_fine": 8}}})
    v = cfg.nerf.validation
    assert (v.num_coarse, v.num_fine, v.white_background) == (32, 8, True)
    assert v.perturb is False and v.radiance_field_noise_std == 0.0  # test settings are never inherited


def test_dataset_keys_of_the_other_type_and_ndc_conflicts_are_rejected():
    with pytest.raises(ConfigError, match="dataset.llffhold"):
        config_from_dict({"dataset": {"basedir": "x", "type": "blender", "llffhold": 4}})
    with pytest.raises(ConfigError, match="dataset.half_res"):
        config_from_dict({"dataset": {"basedir": "x", "type": "llff", "half_res": True}})
    with pytest.raises(ConfigError, match="dataset.downscale"):  # LLFF reads images_<downsample_factor>/
        config_from_dict({"dataset": {"basedir": "x", "type": "llff", "downscale": 2}})
    with pytest.raises(ConfigError, match="'dataset.downscale' expects an integer >= 1"):
        config_from_dict({"dataset": {"basedir": "x", "type": "blender", "downscale": 0}})
    with pytest.raises(ConfigError, match="nerf.train.lindisp"):
        config_from_dict({"dataset": {"basedir": "x", "type": "llff"}, "nerf": {"train": {"lindisp": True}}})
    with pytest.raises(ConfigError, match="dataset.spherify"):
        config_from_dict({"dataset": {"basedir": "x", "type": "llff", "spherify": True}})
    ok = config_from_dict({"dataset": {"basedir": "x", "type": "llff", "no_ndc": True, "spherify": True},
                           "nerf": {"train": {"lindisp": True}}})
    assert ok.nerf.validation.lindisp is True


def test_contraction_and_what_it_rules_out():
    voxel = {"dataset": {"basedir": "x", "type": "llff", "no_ndc": True, "spherify": True},
             "models": {"coarse": {"type": "VoxelGridModel"}, "fine": None},
             "nerf": {"train": {"num_fine": 0}, "validation": {"num_fine": 0}}}

    def with_(occupancy=None, voxel_grid=None, dataset=None, models=None):
        cfg = {**voxel, "occupancy": {"enabled": True, "contraction": "inf", **(occupancy or {})},
               "voxel_grid": {"shrink_box": False, **(voxel_grid or {})}}
        cfg["dataset"] = {**voxel["dataset"], **(dataset or {})}
        cfg["models"] = models or voxel["models"]
        return cfg

    ok = config_from_dict(with_())  # no occupancy.aabb needed for LLFF without NDC: the contracted cube
    assert ok.occupancy.contraction == "inf" and ok.occupancy.aabb is None
    with pytest.raises(ConfigError, match="'occupancy.contraction' expects one of l2, inf or null, got 'sphere'"):
        config_from_dict(with_({"contraction": "sphere"}))
    with pytest.raises(ConfigError, match="'occupancy.contraction' expects null under NDC"):
        config_from_dict(with_(dataset={"no_ndc": False, "spherify": False}))
    with pytest.raises(ConfigError, match="'occupancy.contraction' expects null unless models.coarse.type is Vox"):
        config_from_dict(with_(models={"coarse": {"type": "TinyNeRFModel"}, "fine": None}))
    with pytest.raises(ConfigError, match="'occupancy.aabb' expects to be unset"):
        config_from_dict(with_({"aabb": [-1, -1, -1, 1, 1, 1]}))
    with pytest.raises(ConfigError, match="'voxel_grid.shrink_box' expects false with occupancy.contraction"):
        config_from_dict(with_(voxel_grid={"shrink_box": True}))
    with pytest.raises(ConfigError, match="'voxel_grid.distortion_weight' expects 0 with occupancy.contraction"):
        config_from_dict(with_(voxel_grid={"distortion_weight": 0.01}))


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, KRRISH94_LEGO), ["experiment.id=roundtrip"])
    out = str(tmp_path / "run" / "config.yml")
    save_config(cfg, out)
    again = load_config(out)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert isinstance(again, Config)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "config", "*.yml"))))
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.experiment.id


def test_near_below_zero_names_near_and_a_growing_lr_is_refused():
    dataset = {"basedir": "scene"}
    with pytest.raises(ConfigError, match=r"key 'dataset.near' expects a value >= 0, got -1"):
        config_from_dict({"dataset": {**dataset, "near": -1.0, "far": 6.0}})
    with pytest.raises(ConfigError, match=r"key 'scheduler.lr_decay_factor' expects a value in \(0, 1\]"):
        config_from_dict({"dataset": dataset, "scheduler": {"lr_decay_factor": 2.0}})
    config_from_dict({"dataset": dataset, "scheduler": {"lr_decay_factor": 1.0}})  # a constant rate
