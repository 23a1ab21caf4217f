"""A training process for tests/test_distributed.py: runs train_nerf.main and saves this rank's final state.

    [torchrun ...] python tests/distributed_worker.py OUT_DIR train_nerf-arguments...

Writes OUT_DIR/rank<RANK>.pt with the rank's weights, occupancy grid and voxel-grid box, so that a test
can check that every rank holds the same state (only rank 0 writes checkpoints).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import train_nerf  # noqa: E402


def main() -> None:
    out_dir, argv = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    captured = {}
    run = train_nerf.run

    def spy(*args, **kwargs):
        captured["method"] = args[7]
        return run(*args, **kwargs)

    train_nerf.run = spy
    metrics = train_nerf.main(argv)
    method = captured["method"]
    state = {"weights": method.coarse.state_dict(), "metrics": metrics,
             "occupancy": method.sampler.grid.state_dict() if method.sampler is not None else None,
             "aabb": getattr(method.coarse, "aabb", None)}
    torch.save(state, os.path.join(out_dir, f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    main()
