"""A live plot of the training losses (matplotlib on the Qt canvas), one line per loss term."""
from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

# napari's dark theme, so the plot looks like part of the viewer
BACKGROUND, FOREGROUND, GRID = "#262930", "#f0f1f2", "#414851"


# The negative generators minimise minus the contrastive loss they face; plotted as that loss itself, it is
# positive like every other term and shows whether the negatives stay hard (it should stay well above zero).
SHOWN_AS = {"negative_adversary": ("nce vs generated negatives", -1.0)}


class LossPlot(FigureCanvasQTAgg):
    """Steps on x, losses on a log y axis (the terms span decades), one line per term.

    ``add`` is cheap; the canvas is redrawn at most every ``min_interval`` seconds and on ``flush``.
    """

    def __init__(self, min_interval: float = 0.3) -> None:
        figure = Figure(figsize=(4, 3.4), dpi=100, facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.axes = figure.add_subplot()
        self.setMinimumHeight(300)
        self.min_interval = min_interval
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {}
        self.lines: dict = {}
        self._last_draw = 0.0
        self.clear()

    def clear(self) -> None:
        ax = self.axes
        ax.clear()
        ax.set_facecolor(BACKGROUND)
        ax.set_xlabel("step", color=FOREGROUND)
        ax.set_ylabel("loss", color=FOREGROUND)
        ax.set_yscale("log")
        ax.tick_params(colors=FOREGROUND, labelsize=8)
        ax.grid(True, color=GRID, linewidth=0.5)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        self.steps, self.values, self.lines = [], {}, {}
        self.draw_idle()

    def add(self, step: int, losses: dict[str, float]) -> None:
        self.steps.append(step)
        for key, value in losses.items():
            name, sign = SHOWN_AS.get(key, (key, 1.0))
            value = sign * value if sign * value > 0 else float("nan")  # a log axis shows positive values only
            series = self.values.setdefault(name, [float("nan")] * (len(self.steps) - 1))
            series.append(value)
            if name not in self.lines:
                (self.lines[name],) = self.axes.plot([], [], linewidth=1.2, label=name)
                self.axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), fontsize=7, ncols=3,
                                 facecolor=BACKGROUND, edgecolor=GRID, labelcolor=FOREGROUND)
        if time.monotonic() - self._last_draw >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        """Redraw now with every point received."""
        for name, line in self.lines.items():
            series = self.values[name]
            series.extend([float("nan")] * (len(self.steps) - len(series)))  # a term that stopped reporting
            line.set_data(self.steps, series)
        self.axes.relim()
        self.axes.autoscale_view()
        self.draw_idle()
        self._last_draw = time.monotonic()
