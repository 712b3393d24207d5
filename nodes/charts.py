"""Server-side SVG sparklines for the last hour of a GPU's minute samples (no chart library needed)."""

from collections import defaultdict

from nodes.models import GpuSample, recent_window

WIDTH, HEIGHT, MINUTES = 240, 48, 60

SERIES = (
    ("util", "Utilisation", "%", lambda gpu: 100),
    ("vram_used", "VRAM", "GiB", lambda gpu: gpu.vram_total),
    ("temp_c", "Temperature", "°C", lambda gpu: 100),
    ("power_w", "Power", "W", lambda gpu: gpu.power_limit_w or 1),
)


def _points(samples, key, top, start):
    points = []
    for sample in samples:
        value = getattr(sample, key)
        if value is None:
            continue
        x = (sample.minute - start).total_seconds() / 60 / MINUTES * WIDTH
        y = HEIGHT - min(max(value / top, 0), 1) * HEIGHT
        points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)


def gpu_charts(gpus, now=None):
    """One dict per GPU with a polyline per series; a single query for all GPUs."""
    start = recent_window(MINUTES, now)
    by_gpu = defaultdict(list)
    for sample in GpuSample.objects.filter(gpu__in=gpus, minute__gte=start).order_by("minute"):
        by_gpu[sample.gpu_id].append(sample)
    charts = []
    for gpu in gpus:
        samples = by_gpu.get(gpu.pk, [])
        series = []
        for key, label, unit, top in SERIES:
            last = next((getattr(s, key) for s in reversed(samples) if getattr(s, key) is not None), None)
            if key == "vram_used" and last is not None:
                last = round(last / 1024**3, 1)
            series.append({"key": key, "label": label, "unit": unit, "last": last,
                           "points": _points(samples, key, top(gpu), start)})
        charts.append({"gpu": gpu, "series": series, "count": len(samples)})
    return charts
