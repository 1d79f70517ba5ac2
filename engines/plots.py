"""Figures engines attach to their results."""
from __future__ import annotations

from pathlib import Path


def loss_plot(losses: list[float], dest: Path, title: str = "training loss") -> Path:
    """A loss curve people can read in a small preview: large type, a smoothed line over the
    noisy per-step loss, log scale (diffusion losses span decades), the final value in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, lw=0.8, alpha=0.35, color="#888", label="loss per step")
    k = max(1, len(losses) // 20)
    sm = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
    ax.plot(steps, sm, lw=2.5, color="#f97316", label=f"mean of {k} steps")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("step", fontsize=13)
    ax.set_ylabel("noise MSE", fontsize=13)
    ax.tick_params(labelsize=11)
    ax.set_title(f"{title} — last {k}-step mean {sm[-1]:.4f}" if sm else title, fontsize=14)
    ax.legend(fontsize=11)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest
