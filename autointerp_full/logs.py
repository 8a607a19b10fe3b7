"""Logging set-up and a small progress reporter (tokens/s, items done, ETA)."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("autointerp_full")


def setup_logging(verbose: bool = True) -> None:
    level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("autointerp_full")
    root.handlers[:] = [handler]
    root.setLevel(level)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A tqdm bar on a terminal, periodic log lines elsewhere (CI logs, KFP pods).

    `unit` names what is counted ("tok", "latent"); the rate and ETA are derived.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", every_s: float = 10.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = 0
        self.start = self._last = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("%s: %s", self.desc, self.status())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def status(self) -> str:
        text = f"{self.done}" + (f"/{self.total}" if self.total else "")
        rate = self.rate
        # Slow work (an LLM explaining latents) reads better per minute than as "0.0/s".
        pace = (
            f"{rate:,.1f} {self.unit}/s"
            if rate >= 1 or rate == 0
            else f"{rate * 60:,.1f} {self.unit}/min"
        )
        text += f" {self.unit}, {pace}"
        if self.total and self.rate > 0:
            text += f", ETA {format_duration((self.total - self.done) / self.rate)}"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
