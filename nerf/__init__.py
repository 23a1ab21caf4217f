"""A fast, faithful Neural Radiance Field (Mildenhall et al. 2020) in PyTorch.

Shape legend used throughout the package:
    R  rays            S  samples per ray     (S_c coarse, S_f fine)
    M  samples per ray, padded (a `valid` mask marks the real ones; occupancy sampler)
    N  images          H, W  image height and width
    P  flattened points (R * S, or the valid samples)   E  encoding width
    C  grid cells (occupancy) or feature channels (voxel grid)   X, Y, Z  grid vertices per axis

Data flow of a training step: rays (rays.py) -> samples (sampling.py or occupancy.py) -> field values
(models.py, voxel_grid.py, run by runtime.py) -> pixels (compositing.py), as wired by rendering.py; the
method (methods/) adds what differs between kinds of model: hooks, loss terms, checkpoint state.
"""

__version__ = "0.1.0"
