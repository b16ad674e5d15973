"""Signals of a long-running process: SIGTERM and SIGINT ask its loop to stop."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning(
                "second %s: exiting now; the batch in hand will be read again",
                signal.Signals(signum).name,
            )
            raise SystemExit(1)
        log.info("%s received: finishing the batch in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
