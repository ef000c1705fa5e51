"""A tqdm bar over the time budget: how far the run is, in seconds, and what it measures now."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, budget_s: float, enabled: bool = True) -> None:
        self.start = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=round(budget_s),
                unit="s",
                file=sys.stderr,
                dynamic_ncols=True,
                desc="tune",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s {postfix}",
            )

    def tick(self, what: str) -> None:
        if self.bar is None:
            return
        elapsed = int(time.perf_counter() - self.start)
        self.bar.n = min(elapsed, self.bar.total)
        self.bar.set_postfix_str(what[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
