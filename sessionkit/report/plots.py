"""PNG plots for a report (optional: needs matplotlib, the ``[plots]`` extra; the command that
installs it is :func:`sessionkit.extras.install_hint`).

matplotlib is imported inside the functions, through its object API (no pyplot state), so that
plots can be drawn from threads and tests without a display.
"""

from __future__ import annotations

from pathlib import Path

def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG at ``path`` whole or not at all (:func:`sessionkit.atomic.write_atomic`):
    a full disk or an interruption leaves the previous image as it was. SessionkitError, one line,
    when it cannot be written."""
    import io

    from ..atomic import write_atomic

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def bench_groups(rows: list[dict]) -> dict[tuple, dict]:
    """(dtype, head_dim, causal) -> {series label: [(seq_len, tflops), ...]} from bench_results rows.

    One line per implementation across sequence lengths (a grid such as ``standard`` changes the
    batch with the length). Only where one implementation has two shapes at the same length are the
    lines split by batch and heads.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("tflops") is not None]
    lengths: dict[tuple, list] = {}
    for r in ok:
        key = (r["dtype"], r["head_dim"], bool(r["causal"]), r["impl"])
        lengths.setdefault(key, []).append(r["seq_len_k"])
    groups: dict[tuple, dict] = {}
    for r in ok:
        key = (r["dtype"], r["head_dim"], bool(r["causal"]))
        seen = lengths[key + (r["impl"],)]
        label = r["impl"]
        if len(seen) != len(set(seen)):
            label += f" B{r['batch_size']} H{r['num_heads']}"
        groups.setdefault(key, {}).setdefault(label, []).append((r["seq_len_k"], r["tflops"]))
    for series in groups.values():
        for points in series.values():
            points.sort()
    return groups


def plot_bench(rows: list[dict], out_dir: Path, stem: str, ceiling: float | None = None) -> list[dict]:
    from matplotlib.figure import Figure

    images = []
    for (dtype, head_dim, causal), series in sorted(bench_groups(rows).items()):
        mask = "causal" if causal else "full"
        title = f"TFLOP/s vs sequence length: {dtype}, D{head_dim}, {mask}"
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        ax = fig.subplots()
        for label in sorted(series, key=lambda s: (not s.startswith("ours"), s)):
            xs, ys = zip(*series[label])
            ax.plot(xs, ys, marker="o", linewidth=2.2 if label.startswith("ours") else 1.2,
                    label=label)
        if ceiling:
            ax.axhline(ceiling, color="grey", linestyle=":", linewidth=1,
                       label=f"matmul ceiling {ceiling:.0f}")
        ax.set_xscale("log", base=2)
        seqs = sorted({x for points in series.values() for x, _ in points})
        ax.set_xticks(seqs, [str(x) for x in seqs])
        ax.minorticks_off()
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        name = f"{stem}-tflops-{_slug(dtype)}-d{head_dim}-{mask}.png"
        _save(fig, out_dir / name)
        images.append({"title": title, "file": name})
    return images


def plot_timeline(timeline: dict, out_dir: Path, stem: str) -> dict | None:
    from matplotlib.figure import Figure

    samples = timeline["samples"]
    if not samples:
        return None
    t0 = min(s["t_unix_s"] for s in samples)
    fig = Figure(figsize=(7, 6), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    panels = (("power_w", "power (W)"), ("sm_clock_mhz", "SM clock (MHz)"), ("temp_c", "temperature (C)"))
    gpus = sorted({s["gpu_index"] for s in samples})
    for ax, (key, label) in zip(axes, panels):
        for gpu in gpus:
            pts = [(s["t_unix_s"] - t0, s[key]) for s in samples if s["gpu_index"] == gpu and s[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, linewidth=1, label=f"GPU {gpu}")
        throttled = [s["t_unix_s"] - t0 for s in samples if s.get("throttled")]
        for t in throttled:
            ax.axvline(t, color="red", alpha=0.15, linewidth=1)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    if len(gpus) > 1:
        axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("seconds since the first sample" + ("; red lines: throttled samples" if any(
        s.get("throttled") for s in samples) else ""))
    title = f"Telemetry of step {timeline['seq']} ({timeline['step']}), the longest step with samples"
    fig.suptitle(title, fontsize=10)
    name = f"{stem}-telemetry.png"
    _save(fig, out_dir / name)
    return {"title": title, "file": name}


def make_plots(data: dict, out_dir: Path, stem: str) -> dict:
    """Draw the report's plots beside it. Returns the ``plots`` section for the template."""
    if not matplotlib_available():
        from ..extras import install_hint

        return {"state": "missing", "hint": install_hint("plots"), "images": []}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ..errors import SessionkitError

        raise SessionkitError(f"cannot make the folder {out_dir}: {exc.strerror or exc}") from None
    images = []
    benches = [b for section in data.get("sections") or [] if section["name"] == "bench"
               for b in section["instances"] if b["raw"]]
    for bench in benches:  # every bench step; with two or more, each plot names its step
        many = len(benches) > 1
        for image in plot_bench(bench["raw"], out_dir, f"{stem}-step{bench['seq']}" if many else stem,
                                bench.get("ceiling_tflops")):
            if many:
                image["title"] = f"Step {bench['seq']}: {image['title']}"
            images.append(image)
    if data.get("timeline"):
        image = plot_timeline(data["timeline"], out_dir, stem)
        if image:
            images.append(image)
    return {"state": "drawn", "hint": None, "images": images}
