"""Progress bars for `groundloop run`: one per node that reports progress (`Node.report_progress`),
redrawn from the metrics snapshots every executor hands the CLI, so a node in another process or on
another machine shows its bar too."""
from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

REFRESH_S = 0.5  # how often `groundloop run` asks for snapshots while bars are shown


class ProgressBars:
    def __init__(self, file: TextIO | None = None):
        self.file = file if file is not None else sys.stderr  # looked up now: a test may have replaced it
        self.bars: dict[str, tqdm] = {}

    def update(self, snapshots: list[dict[str, Any]]) -> None:
        for snapshot in snapshots:
            progress = snapshot.get("progress") or {}
            if "done" not in progress:
                continue
            node = snapshot["node"]
            bar = self.bars.get(node)
            if bar is None:
                bar = self.bars[node] = tqdm(total=progress.get("total"), desc=node, unit=f" {progress.get('unit', '')}",
                                             position=len(self.bars), file=self.file, dynamic_ncols=True, leave=True)
            if bar.total != progress.get("total"):
                bar.total = progress.get("total")
            bar.n = progress["done"]
            bar.refresh()

    def write(self, text: str) -> None:
        """Print above the bars without breaking them."""
        tqdm.write(text, file=sys.stdout)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
