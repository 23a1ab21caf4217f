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


def test_frames_of_two_sizes_are_refused(tmp_path):
    _frames(tmp_path, count=2)
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "2.png")
    with pytest.raises(SystemExit, match=r"frames of different sizes \(0.png 9x7, 2.png 4x4\)"):
        makegif.main([str(tmp_path)])
    assert not os.path.exists(tmp_path / "animation.gif")


def test_a_failed_write_keeps_the_earlier_gif(tmp_path, monkeypatch):
    _frames(tmp_path)
    [gif] = makegif.main([str(tmp_path)])
    earlier = open(gif, "rb").read()

    def full_disk(self, fp, *args, **kwargs):
        fp.write(b"GIF89a, then the disk was full")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(SystemExit) as err:
        makegif.main([str(tmp_path)])
    assert str(err.value) == f"error: {gif}: could not be written (No space left on device)"
    assert open(gif, "rb").read() == earlier
    assert sorted(os.listdir(tmp_path)) == ["0.png", "1.png", "2.png", "animation.gif"]  # no temporary left


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(SystemExit, match="folder not found"):
        makegif.main([str(tmp_path / "none")])
    (tmp_path / "frame.png").write_bytes(b"")
    with pytest.raises(SystemExit, match="frame.png: a file; give the folder of frames"):
        makegif.main([str(tmp_path / "frame.png")])
    (tmp_path / "frame.png").unlink()
    with pytest.raises(SystemExit, match="no PNG frames"):
        makegif.main([str(tmp_path)])
    with pytest.raises(SystemExit):
        makegif.main([str(tmp_path), "--fps", "2", "--duration", "10"])


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_an_unreadable_frame_is_named_and_nothing_is_written(tmp_path, damage):
    _frames(tmp_path, count=3, size=(64, 48))
    data = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a png")
    with pytest.raises(SystemExit, match=rf"^error: {tmp_path / '1.png'}: not a readable image"):
        makegif.main([str(tmp_path), "--mp4"])
    assert sorted(os.listdir(tmp_path)) == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize("timing", [["--fps", "nan"], ["--fps", "inf"], ["--fps", "1e9"], ["--fps", "0"], ["--fps", "60"],
                                    ["--duration", "nan"], ["--duration", "10"], ["--duration", "inf"]])
def test_frame_timings_a_gif_cannot_hold_are_refused(tmp_path, timing, capsys):
    _frames(tmp_path)
    with pytest.raises(SystemExit):
        makegif.main([str(tmp_path), *timing])
    assert "a GIF" in capsys.readouterr().err and not os.path.exists(tmp_path / "animation.gif")
    [gif] = makegif.main([str(tmp_path), "--fps", "50"])  # the shortest delay browsers play as stored: 20 ms
    with Image.open(gif) as img:
        assert img.info["duration"] == 20
