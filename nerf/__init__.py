"""A fast, faithful Neural Radiance Field (Mildenhall et al. 2020) in PyTorch.

Shape legend used throughout the package:
    R  rays            S  samples per ray     (S_c coarse, S_f fine)
    N  images          H, W  image height and width
    P  flattened points (R * S)   E  encoding width
"""

__version__ = "0.1.0"
