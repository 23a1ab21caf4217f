"""nerf/preemption.py: a stop signal is recorded (the first one), not acted on, and the handlers it replaced
come back when the block ends. The end-to-end save-and-resume is in test_distributed.py."""

import os
import signal
import threading

from nerf.preemption import STOP_SIGNALS, PreemptionRequest


def test_the_first_stop_signal_is_recorded_and_the_handlers_restored():
    assert {signal.SIGTERM, signal.SIGUSR1} <= set(STOP_SIGNALS)
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
