"""PNG charts of a report: precision@k curves per method, feedback rounds per label."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.evaluation.report import Report
from imgsearch.evaluation.simulated_user import MAX_ROUNDS, MODES, UserRun

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NEVER_HEIGHT = MAX_ROUNDS + 1  # where a bar for "never reached" is drawn


def write_plots(report: Report, directory: Path) -> list[Path]:
    """Write the charts into `directory`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        _similar_curves(report, directory / "similar_precision_at_k.png"),
        _keyword_curves(report, directory / "keyword_precision_at_k.png"),
    ]
    written += [
        _rounds_bars(runs, method, directory / f"feedback_rounds_{_slug(method)}.png")
        for method, runs in report.feedback.items()
    ]
    return written


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "default"


def _curve_axes(title: str) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    axes.set(title=title, xlabel="k", ylabel="precision@k, of min(k, relevant)", ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    return figure, axes


def _save(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _similar_curves(report: Report, path: Path) -> Path:
    figure, axes = _curve_axes("Similar images: precision@k (relevant = same label)")
    for result in report.layer_distance:
        ks = range(1, len(result.curve) + 1)
        axes.plot(ks, result.curve, linestyle="--", linewidth=1, label=f"exact, {result.name}")
    for result in report.production:
        ks = range(1, len(result.curve) + 1)
        axes.plot(ks, result.curve, linewidth=2, label=f"{result.name} (features, cosine)")
    axes.legend(fontsize=8)
    return _save(figure, path)


def _keyword_curves(report: Report, path: Path) -> Path:
    figure, axes = _curve_axes("Keyword search: precision@k, the label as the query")
    for method, results in report.keyword.items():
        groups = {
            "maps": [r for r in results if r.maps],
            "does not map": [r for r in results if not r.maps],
        }
        for group, members in groups.items():
            if not members:
                continue
            depth = len(members[0].curve)
            mean = [sum(r.curve[k] for r in members) / len(members) for k in range(depth)]
            axes.plot(range(1, depth + 1), mean, label=f"{method}: {group} ({len(members)})")
    axes.legend(fontsize=8)
    return _save(figure, path)


def _rounds_bars(runs: list[UserRun], method: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    labels = sorted({run.label for run in runs})
    counts: dict[str, Callable[[UserRun], int | None]] = {
        "from the first query": lambda run: run.rounds.from_first_query,
        "from the first relevant image": lambda run: run.rounds.from_first_relevant,
    }
    width = min(16, max(6, 0.4 * len(labels) * len(MODES)))
    figure, panels = plt.subplots(len(counts), 1, figsize=(width, 7), sharex=True)
    for axes, (counted, rounds_of) in zip(panels, counts.items(), strict=True):
        for offset, mode in enumerate(MODES):
            by_label = {run.label: rounds_of(run) for run in runs if run.mode == mode}
            _mode_bars(axes, labels, by_label, mode, offset)
        axes.set(title=counted, ylabel="rounds of votes", ylim=(0, NEVER_HEIGHT + 1))
        axes.axhline(NEVER_HEIGHT, color="grey", linewidth=0.5)
        axes.legend(fontsize=8)
    panels[-1].set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    figure.suptitle(f"Feedback rounds to p@20 >= 75% ({method}); hatched: never reached")
    return _save(figure, path)


def _mode_bars(
    axes: Axes, labels: list[str], by_label: dict[str, int | None], mode: str, offset: int
) -> None:
    """One mode's bars, each with its count written on it ("never" over a hatched bar)."""
    width = 0.8 / len(MODES)
    rounds = [by_label.get(label) for label in labels]
    never = [r is None for r in rounds]
    heights = [NEVER_HEIGHT if r is None else r for r in rounds]
    positions = [i + (offset - (len(MODES) - 1) / 2) * width for i in range(len(labels))]
    bars = axes.bar(positions, heights, width, label=mode)
    for bar, missed in zip(bars, never, strict=True):
        if missed:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    texts = ["never" if missed else str(h) for h, missed in zip(heights, never, strict=True)]
    axes.bar_label(bars, texts, fontsize=7)
