"""Figures people would rather look at than read: training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prm.io import atomic_path  # noqa: E402


def plot_training_curve(history: list[dict[str, float]], metric: str, path: str | Path) -> None:
    """Train loss and the validation selection metric per epoch, side by side."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_axis.set(xlabel="epoch", ylabel="train loss", title="training loss")
    metric_axis.plot(epochs, [row[f"valid_{metric}"] for row in history], marker="o", color="C1")
    metric_axis.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
