"""Structured pruning that physically shrinks a NeRFModel.

Whole hidden neurons (rows of a Linear layer) are ranked by the L1 or L2 norm of their incoming weights
and the weakest are removed: the layer loses those rows and every layer that reads it loses the matching
input columns (for a skip layer the columns sit after the encoded position). A removed neuron whose
incoming weights are zero outputs the constant ReLU(b_j); that constant is folded into the consumers'
biases (b_c += W_c[:, j] ReLU(b_j)), so removing such neurons leaves the network's function unchanged.
Adam's moment estimates are sliced along with the weights, so fine-tuning continues smoothly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import Config, ModelConfig
from .models import NeRFModel
from .voxel_grid import GridField


def prunable_layers(model: NeRFModel, excluded=()) -> list:
    """Names of the layers whose output neurons may be removed: the trunk and the view layer (never the heads)."""
    names = [f"pts_linears.{k}" for k in range(len(model.pts_linears))]
    if model.use_viewdirs:
        names.append("views_linears.0")
    return [name for name in names if name not in excluded]


def consumers(model: NeRFModel, name: str) -> list:
    """(layer name, first input column) of every layer that reads the outputs of layer `name`."""
    if name == "views_linears.0":
        return [("rgb_linear", 0)]
    k = int(name.split(".")[1])
    if k + 1 < len(model.pts_linears):
        return [(f"pts_linears.{k + 1}", model.xyz_width if k in model.skips else 0)]
    return [("feature_linear", 0), ("alpha_linear", 0)] if model.use_viewdirs else [("output_linear", 0)]


def _sliced_linear(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    weight = layer.weight.detach()
    bias = layer.bias.detach()
    if rows is not None:
        weight, bias = weight[rows], bias[rows]
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


def _complement(size: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool, device=removed.device)
    keep[removed] = False
    return torch.nonzero(keep).squeeze(1)


@torch.no_grad()
def remove_neurons(model: NeRFModel, name: str, removed: torch.Tensor) -> list:
    """Remove output neurons `removed` of layer `name` in place (folding their ReLU(bias) into consumers).

    Returns (old parameter, new parameter, dim, kept indices or None) for every replaced parameter.
    """
    layer = model.get_submodule(name)
    changes = []
    constant = torch.relu(layer.bias[removed])  # [n]: what a removed neuron with zero weights outputs
    for consumer_name, offset in consumers(model, name):
        consumer = model.get_submodule(consumer_name)
        columns = removed + offset
        consumer.bias += consumer.weight[:, columns] @ constant
        keep_columns = _complement(consumer.in_features, columns)
        replacement = _sliced_linear(consumer, cols=keep_columns)
        model.set_submodule(consumer_name, replacement)
        changes += [(consumer.weight, replacement.weight, 1, keep_columns), (consumer.bias, replacement.bias, 0, None)]
    keep = _complement(layer.out_features, removed)
    replacement = _sliced_linear(layer, rows=keep)
    model.set_submodule(name, replacement)
    changes += [(layer.weight, replacement.weight, 0, keep), (layer.bias, replacement.bias, 0, keep)]
    return changes


def neuron_scores(layer: nn.Linear, norm: int) -> torch.Tensor:
    """Rank of each output neuron: the L1 or L2 norm of its incoming weights. [out]"""
    return layer.weight.detach().norm(p=norm, dim=1)


def prune_model(model: NeRFModel, fraction: float, start_widths: dict, norm: int, excluded=()) -> tuple:
    """Remove neurons until each prunable layer has lost `fraction` of its width in `start_widths`.

    Returns ({layer: (width before, width after)}, parameter changes for `transfer_optimizer`).
    """
    report, changes = {}, []
    for name in prunable_layers(model, excluded):
        layer = model.get_submodule(name)
        target_width = max(1, start_widths[name] - math.floor(fraction * start_widths[name] + 1e-9))
        count = layer.out_features - target_width
        if count <= 0:
            continue
        removed = torch.sort(torch.argsort(neuron_scores(layer, norm))[:count]).values
        before = layer.out_features
        changes += remove_neurons(model, name, removed)
        report[name] = (before, model.get_submodule(name).out_features)
    return report, changes


def layer_widths(model: NeRFModel) -> dict:
    return {name: model.get_submodule(name).out_features for name in prunable_layers(model)}


def pruned_model_config(model: NeRFModel, original: ModelConfig) -> ModelConfig:
    """The config that rebuilds `model`: a FlexibleNeRFModel with per-layer widths."""
    return dataclasses.replace(original, type="FlexibleNeRFModel",
                               layer_widths=[layer.out_features for layer in model.pts_linears],
                               hidden_size_dir=model.views_linears[0].out_features if model.use_viewdirs
                               else original.hidden_size_dir)


def transfer_optimizer(optimizer: torch.optim.Adam, params: list, changes: list) -> torch.optim.Adam:
    """A new Adam over `params` whose state is the old one, sliced like the parameters it belonged to."""
    state = {param: dict(optimizer.state[param]) for param in optimizer.state}
    for old, new, dim, index in changes:
        entry = state.pop(old, None)
        if entry is None:
            continue
        state[new] = {key: (value.index_select(dim, index) if index is not None and torch.is_tensor(value)
                            and value.shape == old.shape else value)
                      for key, value in entry.items()}
    hyper = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    new_optimizer = torch.optim.Adam(params, **hyper)
    for param in params:
        if param in state:
            new_optimizer.state[param] = state[param]
    return new_optimizer


@dataclass
class PruningRun:
    """The schedule of one `--prune` run, stored in its checkpoints so that an interrupted run resumes with
    the same events at the same absolute steps: events fire at start_step + k * every, k = 1..num_events."""

    which: str  # coarse | fine | both
    start_step: int
    start_widths: dict  # {"coarse": {layer: width}, ...} at the start of the run
    amount: float
    increment: float
    every: int
    events_done: int = 0
    # the rest of the run's settings, so that a resume does not depend on the config it is given
    lr_scale: float = 0.1
    norm: int = 1
    excluded_layers: list = dataclasses.field(default_factory=list)
    end_step: int = 0  # experiment.train_iters when the run started: the fine-tune ends there

    @property
    def num_events(self) -> int:
        return math.ceil(self.amount / self.increment - 1e-9)

    @property
    def last_step(self) -> int:
        return self.start_step + self.num_events * self.every

    @property
    def finished(self) -> bool:
        return self.events_done >= self.num_events

    def due(self, completed: int) -> bool:
        return not self.finished and completed == self.start_step + (self.events_done + 1) * self.every

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PruningRun":
        return cls(**data)


def apply_pruning_event(run: PruningRun, models: dict, model_configs) -> tuple:
    """Fire the next event of `run` on `models` ({"coarse": model, ...}).

    Returns (parameter changes for transfer_optimizer, updated ModelsConfig, one report line per model).
    """
    event = run.events_done + 1
    fraction = min(run.amount, event * run.increment)
    changes, updated, lines = [], {}, []
    for which, model in models.items():
        report, model_changes = prune_model(model, fraction, run.start_widths[which], run.norm, run.excluded_layers)
        changes += model_changes
        updated[which] = pruned_model_config(model, getattr(model_configs, which))
        sizes = ", ".join(f"{name} {a}->{b}" for name, (a, b) in report.items())
        lines.append(f"pruned {which} to {1 - fraction:.0%} of its width (event {event}/{run.num_events}): {sizes}")
    run.events_done = event
    return changes, dataclasses.replace(model_configs, **updated), lines


def models_to_prune(which: str, coarse, fine, checkpoint, excluded) -> dict:
    """The models `--prune coarse|fine|both` compresses; ValueError with the reason when it cannot."""
    if not checkpoint:
        raise ValueError("--prune compresses a trained model: give its checkpoint with --load-checkpoint PATH (or "
                         "auto, in a run folder that has one)")
    chosen = {"coarse": ["coarse"], "fine": ["fine"], "both": ["coarse", "fine"]}[which]
    models = {"coarse": coarse, "fine": fine}
    if "fine" in chosen and fine is None:
        raise ValueError(f"--prune {which}: this model has no fine network")
    for name in chosen:
        if isinstance(models[name], GridField):
            raise ValueError("--prune removes neurons of an MLP; a VoxelGridModel is compressed by training it with "
                             "fewer voxels (voxel_grid.num_voxels) instead")
        if not isinstance(models[name], NeRFModel):
            raise ValueError(f"--prune supports PaperNeRFModel/FlexibleNeRFModel, not {type(models[name]).__name__}")
        unknown = sorted(set(excluded) - set(prunable_layers(models[name])))
        if unknown:
            raise ValueError(f"pruning.excluded_layers: {unknown} are not prunable layers of the {name} model "
                             f"(those are {', '.join(prunable_layers(models[name]))})")
        if not prunable_layers(models[name], excluded):
            raise ValueError(f"--prune {which}: pruning.excluded_layers excludes every prunable layer of the {name} "
                             f"model ({', '.join(prunable_layers(models[name]))}): nothing to prune")
    return {name: models[name] for name in chosen}


def start_pruning(which: Optional[str], stored: Optional[dict], start_step: int, cfg: Config, checkpoint, coarse,
                  fine) -> tuple:
    """The pruning run of a training run: a new one (`--prune which`), the unfinished one stored in the
    checkpoint (resumed with or without the flag), or none. Returns (run or None, the models it prunes
    {"coarse": model, ...}, lines to print); ValueError when it cannot go ahead."""
    run = PruningRun.from_dict(stored) if stored else None
    lines = []
    if run is not None and not run.finished:
        if which and which != run.which:
            raise ValueError(f"{checkpoint}: holds an unfinished --prune {run.which} run; resume it (with --prune "
                             f"{run.which} or no --prune) before pruning {which}")
        lines.append(f"Continuing the --prune {run.which} run: {run.events_done}/{run.num_events} events done")
    elif which:
        p = cfg.pruning
        run = PruningRun(which, start_step, {}, p.amount, p.increment, p.every, lr_scale=p.lr_scale, norm=p.norm,
                         excluded_layers=list(p.excluded_layers), end_step=cfg.experiment.train_iters)
    elif run is not None and start_step >= run.end_step:
        run = None  # that pruning fine-tune is over: train on at the normal learning rate
    if run is None or run.finished:
        return run, {}, lines
    models = models_to_prune(run.which, coarse, fine, checkpoint, run.excluded_layers)
    if not run.start_widths:
        run.start_widths = {name: layer_widths(model) for name, model in models.items()}
    if run.last_step > cfg.experiment.train_iters:
        raise ValueError(f"the pruning schedule needs steps up to {run.last_step} ({run.num_events} events every "
                         f"{run.every} steps from {run.start_step}) but experiment.train_iters is "
                         f"{cfg.experiment.train_iters}")
    lines.append(f"Pruning {run.which}: {run.amount:.0%} of each prunable layer in {run.num_events} events of "
                 f"{run.increment:.0%}, at steps {run.start_step + run.every}..{run.last_step} (every {run.every})")
    return run, models, lines
