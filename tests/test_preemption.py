"""nerf/preemption.py: a stop signal is recorded (the first one), not acted on, and the handlers it replaced
come back when the block ends. The end-to-end save-and-resume is in test_distributed.py."""

import os
import signal
import threading
import time

import pytest

from nerf.preemption import STOP_SIGNALS, PreemptionRequest, terminated_as_interrupt


def test_the_first_stop_signal_is_recorded_and_the_handlers_restored():
    assert {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT} <= set(STOP_SIGNALS)
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    with PreemptionRequest() as request:
        assert request.requested is None
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered to the main thread before kill returns to Python code
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not replace the first
        assert request.requested == "SIGUSR1"
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before


def test_outside_the_main_thread_nothing_is_caught():
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    seen = {}

    def enter_and_look():
        with PreemptionRequest() as request:
            seen["handlers"] = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            seen["requested"] = request.requested

    thread = threading.Thread(target=enter_and_look)
    thread.start()
    thread.join()
    assert seen == {"handlers": before, "requested": None}


@pytest.fixture
def ctrl_c_answered():
    """Python's own Ctrl-C handler for the test, whatever this process inherited (a background job ignores it)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_first_ctrl_c_asks_for_a_save_and_a_second_interrupts(ctrl_c_answered, capfd):
    with PreemptionRequest(under_launcher=False) as request:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.requested == "SIGINT"
        assert "Ctrl-C: saving a checkpoint at the end of this step" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # not reached: the interrupt arrives first
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_under_torchrun_a_second_ctrl_c_does_not_stop_the_save(ctrl_c_answered):
    """One press can reach a worker twice (the terminal's signal and the one torchrun passes on)."""
    with PreemptionRequest(under_launcher=True) as request:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert request.requested == "SIGINT"
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_an_ignored_ctrl_c_stays_ignored():
    """A job started in the background ignores SIGINT: training must not start answering it."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with PreemptionRequest(under_launcher=False) as request:
            os.kill(os.getpid(), signal.SIGINT)
            assert request.requested is None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigterm_becomes_an_interrupt_inside_terminated_as_interrupt():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with terminated_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # not reached
    assert signal.getsignal(signal.SIGTERM) == before
