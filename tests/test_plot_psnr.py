import pytest
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

import plot_psnr


def _run(folder, points):
    """A run folder as train_nerf.py writes it: at validation k (step 10 k), the PSNR and the training seconds."""
    writer = SummaryWriter(str(folder))
    for k, (seconds, value) in enumerate(points):
        writer.add_scalar(plot_psnr.PSNR_TAG, value, 10 * k)
        writer.add_scalar(plot_psnr.SECONDS_TAG, seconds, 10 * k)
        writer.add_scalar(plot_psnr.TAG, value + 100.0, round(seconds))  # for TensorBoard: not read
        writer.add_scalar("validation/loss", value + 200.0, 10 * k)  # another tag: ignored
    writer.close()


def test_validations_within_one_second_are_all_plotted_and_older_runs_are_read(tmp_path):
    _run(tmp_path / "fast", [(1.6, 20.0), (2.2, 21.0), (2.4, 22.0)])  # the old tag had one point at second 2
    expected = [(1.6, 20.0), (2.2, 21.0), (2.4, 22.0)]
    assert plot_psnr.read_curve(str(tmp_path / "fast")) == [pytest.approx(point) for point in expected]
    writer = SummaryWriter(str(tmp_path / "older"))  # a run logged before validation/train_seconds existed
    for seconds, value in ((60, 20.0), (30, 19.0)):
        writer.add_scalar(plot_psnr.TAG, value, seconds)
    writer.close()
    assert plot_psnr.read_curve(str(tmp_path / "older")) == [(30.0, 19.0), (60.0, 20.0)]
    writer = SummaryWriter(str(tmp_path / "older"))  # ... resumed with train_nerf.py as it is now
    writer.add_scalar(plot_psnr.PSNR_TAG, 21.0, 40)
    writer.add_scalar(plot_psnr.SECONDS_TAG, 90.5, 40)
    writer.close()
    assert plot_psnr.read_curve(str(tmp_path / "older")) == [(30.0, 19.0), (60.0, 20.0), (90.5, 21.0)]


def test_curves_are_read_back_in_time_order_and_plotted(tmp_path):
    _run(tmp_path / "fast", [(60, 20.0), (300, 25.5), (120, 22.25)])
    _run(tmp_path / "paper", [(90, 12.0)])
    output = tmp_path / "out" / "plot.png"
    curves = plot_psnr.main([str(tmp_path / "fast") + "=fast preset", str(tmp_path / "paper"), "--output",
                             str(output), "--title", "t", "--time-scale", "1.4"])
    assert curves == [("fast preset", [(60.0, 20.0), (120.0, 22.25), (300.0, 25.5)]), ("paper", [(90.0, 12.0)])]
    with Image.open(output) as image:
        assert image.size == (640, 400)


def test_time_scales_one_for_all_or_one_per_run(tmp_path):
    curves = [("a", [(60.0, 20.0), (120.0, 21.0)]), ("b", [(30.0, 19.0)])]
    assert plot_psnr.plotted_times(curves, [0.5, 2.0], "minutes") == [[0.5, 1.0], [1.0]]
    assert plot_psnr.plotted_times(curves, [0.5, 2.0], "seconds") == [[30.0, 60.0], [60.0]]
    assert plot_psnr.plotted_times(curves, [2.0], "seconds") == [[120.0, 240.0], [60.0]]  # one for all
    with pytest.raises(ValueError):
        plot_psnr.plotted_times(curves, [1.0, 1.0, 1.0], "seconds")
    _run(tmp_path / "a", [(60, 20.0)])
    _run(tmp_path / "b", [(30, 19.0)])
    runs = [str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "p.png")]
    plot_psnr.main(runs + ["--time-scale", "0.5", "2"])
    assert (tmp_path / "p.png").exists()
    with pytest.raises(SystemExit):  # three factors for two runs: argparse's usage error
        plot_psnr.main(runs + ["--time-scale", "0.5", "2", "3"])
    with pytest.raises(SystemExit):
        plot_psnr.main(runs + ["--time-scale", "0.5", "-2"])
    with pytest.raises(SystemExit):
        plot_psnr.main(runs + ["--time-scale", "nan"])


def test_a_folder_without_the_curve_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        plot_psnr.main([str(tmp_path / "empty"), "--output", str(tmp_path / "x.png")])
    assert "no TensorBoard event files" in str(err.value) and "empty" in str(err.value)
    writer = SummaryWriter(str(tmp_path / "novalidation"))
    writer.add_scalar("train/loss", 1.0, 1)
    writer.close()
    with pytest.raises(SystemExit) as err:
        plot_psnr.main([str(tmp_path / "novalidation"), "--output", str(tmp_path / "x.png")])
    assert "experiment.validate_every" in str(err.value)
    assert not (tmp_path / "x.png").exists()


def test_an_output_that_cannot_be_written_is_a_one_line_error(tmp_path):
    _run(tmp_path / "run", [(10.0, 20.0), (20.0, 22.0)])
    run = str(tmp_path / "run")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as err:
        plot_psnr.main([run, "--output", str(a_file / "plot.png")])  # a folder that is a file
    assert str(err.value).startswith(f"error: {a_file / 'plot.png'}: could not be written (")
    assert len(str(err.value).splitlines()) == 1
