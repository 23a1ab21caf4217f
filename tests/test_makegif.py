import os

import numpy as np
import pytest
from PIL import Image

import makegif


def _frames(folder, count=3, size=(9, 7)):
    os.makedirs(folder, exist_ok=True)
    for k in range(count):
        Image.fromarray(np.full((size[1], size[0], 3), 20 * k, dtype=np.uint8)).save(folder / f"{k}.png")


def test_gif_in_natural_order_with_timing(tmp_path):
    _frames(tmp_path, count=11)
    (tmp_path / "notes.txt").write_text("ignored")
    [gif] = makegif.main([str(tmp_path), "--fps", "4"])
    with Image.open(gif) as img:
        assert img.n_frames == 11
        assert img.info["duration"] == 250 and img.info["loop"] == 0
        img.seek(2)
        assert np.asarray(img.convert("RGB"))[0, 0, 0] == 40  # frame 2, not frame 10
    assert makegif.natural_key("10.png") > makegif.natural_key("2.png")


def test_trial_subfolder_output_name_and_duration(tmp_path):
    _frames(tmp_path / "trial")
    [gif] = makegif.main([str(tmp_path), "trial", "--output", "spin", "--duration", "120"])
    assert gif == os.path.join(str(tmp_path), "trial", "spin.gif")
    with Image.open(gif) as img:
        assert img.info["duration"] == 120


def test_mp4(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    _frames(tmp_path)
    outputs = makegif.main([str(tmp_path), "--mp4"])
    assert outputs[1].endswith(".mp4") and os.path.getsize(outputs[1]) > 0


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(SystemExit, match="folder not found"):
        makegif.main([str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="no PNG frames"):
        makegif.main([str(tmp_path)])
    with pytest.raises(SystemExit):
        makegif.main([str(tmp_path), "--fps", "2", "--duration", "10"])
