import pytest

import caffeine


def test_interval_parsing():
    assert caffeine.parse_interval([]) == 60.0
    assert caffeine.parse_interval(["2.5"]) == 2.5
    for bad in (["0"], ["-3"], ["abc"], ["nan"], ["inf"], ["1", "2"]):
        with pytest.raises(ValueError, match="usage"):
            caffeine.parse_interval(bad)


def test_help_prints_the_usage_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        caffeine.parse_interval(["--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: python caffeine.py [interval]")


def test_bad_interval_prints_usage_and_exits_2(capsys):
    assert caffeine.main(["soon"]) == 2
    assert "usage: python caffeine.py [interval]" in capsys.readouterr().err


def _which(available):
    return lambda name: f"/usr/bin/{name}" if name in available else None


def test_prefers_the_os_inhibitor():
    no_import = lambda name: False  # noqa: E731
    assert caffeine.choose_method("win32", _which([]), {}, no_import) == "windows"
    assert caffeine.choose_method("darwin", _which(["caffeinate"]), {}, no_import) == "caffeinate"
    assert caffeine.choose_method("linux", _which(["systemd-inhibit"]), {"DISPLAY": ":0"},
                                  lambda name: True) == "systemd-inhibit"


def test_key_press_only_with_display_and_library():
    assert caffeine.choose_method("linux", _which([]), {"DISPLAY": ":0"}, lambda name: True) == "keypress"
    assert caffeine.choose_method("linux", _which([]), {"DISPLAY": ":0"}, lambda name: False) == "none"
    assert caffeine.choose_method("linux", _which([]), {}, lambda name: True) == "none"  # headless


def test_headless_without_inhibitor_says_so(monkeypatch, capsys):
    monkeypatch.setattr(caffeine, "choose_method", lambda *a: "none")
    assert caffeine.main(["5"]) == 1
    assert "NOT keeping this machine awake" in capsys.readouterr().out


def test_ctrl_c_exits_cleanly_with_start_and_end_times(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(caffeine, "choose_method", lambda *a: "windows")
    monkeypatch.setattr(caffeine, "_windows_keep_awake", interrupted)
    assert caffeine.main(["0.1"]) == 0
    out = capsys.readouterr().out
    assert "caffeine.py started at" in out and "Started" in out and "ended" in out
