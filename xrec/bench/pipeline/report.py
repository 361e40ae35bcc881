"""A run's result as the printed table and the latency-vs-load plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from xrec.bench.sessions import Workload


def workload_summary(work: Workload) -> dict[str, Any]:
    return {
        "source": work.source,
        "items": len(work.catalog),
        "users": work.users,
        "events": len(work.events),
        "sessions": work.sessions,
        "session_repeats": work.session_repeats,
    }


def latency_span(levels: list[dict[str, Any]]) -> str:
    """What a printed latency spans: from the event's send to its list in Kafka, when the broker stamped every
    level's lists as it appended them, else only to the worker's hand-over to its producer (a lists topic that keeps
    the producer's timestamps)."""
    if levels and all(level.get("list_timestamps") == "broker append" for level in levels):
        return "event sent → its list appended in Kafka"
    return "event sent → its list handed to the worker's producer"


def times(count: float, mean_ms: float | None) -> str:
    """``count × mean ms``, or ``0`` when nothing happened (whose mean is NaN, or null once read back from --json)."""
    return f"{count:.0f} × {mean_ms:.1f}" if count else "0"


def format_table(result: dict[str, Any]) -> str:
    if "scale" in result:
        from xrec.bench.scale import format_scale

        w = result["workload"]
        head = f"workload   {w['source']}: {w['items']} items, {w['users']} users, {w['events']} events"
        return "\n".join([head, *format_scale(result["scale"])])
    w, x = result["workload"], result["xrec"]
    sat, curve, mem = x["saturation"], x["load_curve"], x["memory"]
    naive, text = result["naive"], result["review_mix"]
    lines = [
        f"workload   {w['source']}: {w['items']} items, {w['users']} users, {w['events']} events",
        f"catalog    load {result['catalog']['load_s']:.1f}s, optimize {result['catalog']['optimize_s']:.1f}s, "
        f"search {result['catalog']['search']}",
        f"xrec       {sat['events_per_s']:.0f} events/s at saturation ({sat['covered']} events, {sat['lists']} lists "
        f"= {sat['lists_per_s']:.0f}/s, {sat['seconds']:.1f}s), CPU {sat['cpu_s_per_1k_events']:.2f} s per 1k events, "
        f"{sat['cpu_util']:.2f} cores",
        "latency    offered        p50      p95      p99      max  to Kafka p50/p99  answered  cores  "
        "per batch: events, fetch/queue/apply/lists/delivery ms; commits × ms; full gc × ms (all gc ms)",
    ]
    for level in curve:
        ms, b = level["latency_ms"], level["batches"]
        to_kafka = level.get("producer_ms") or {"p50": math.nan, "p99": math.nan}
        share = f"{level['percent_of_saturation']}%" if level["percent_of_saturation"] is not None else "--rate"
        lines.append(
            f"  {share:>6} {level['offered_rate']:>6.0f}/s {ms['p50']:>6.0f}ms {ms['p95']:>6.0f}ms {ms['p99']:>6.0f}ms "
            f"{ms['max']:>6.0f}ms  {to_kafka['p50']:>6.0f}/{to_kafka['p99']:<6.0f}ms  "
            f"{level['answered']:>5}/{level['events']:<5} {level['cpu_util']:>5.2f}  "
            f"{b['events_per_batch']:.1f}, {b['fetch_ms']:.1f}/{b['queue_ms']:.1f}/{b['apply_ms']:.1f}/"
            f"{b['lists_ms']:.1f}/{b['delivery_ms']:.1f}; {times(b['commits'], b['commit_ms'])}; "
            f"{times(b['full_gcs'], b['full_gc_ms'])} ({b['gc_ms']:.0f})"
        )
    if curve:
        lines.append(f"           (latency: {latency_span(curve)}; to Kafka: the event's own write)")
    fresh = x.get("fresh")
    if fresh and fresh["events_per_s"] is not None:
        rate, limit = fresh["events_per_s"], fresh["p99_ms"]
        lines.append(
            f"fresh      p99 within {limit:.0f} ms "
            + {
                "about": f"up to about {rate:.0f} fresh events/s (interpolated between levels)",
                "at least": f"at every level, up to {rate:.0f} events/s offered",
                "below": f"at no level: already above it at {rate:.0f} events/s",
            }[fresh["bound"]]
        )
    lines += [
        f"memory     {mem['profiles']} profiles, {mem['profile_bytes_mean']:.0f} B each = "
        f"{mem['profile_mb_per_100k']:.0f} MB per 100k (serialized); RSS grew {mem['rss_growth_mb']:.0f} MB "
        f"= {mem['rss_mb_per_100k_new_profiles']:.0f} MB per 100k new profiles",
    ]
    if "held_profiles" in sat:
        held = sat["held_profiles"]
        lines.append(
            f"held       {held['count']} profiles restored from the changelog ({held['bytes_mean']:.0f} B each); "
            f"first list {sat['first_list_after_start_s']:.0f}s after the worker started, RSS then "
            f"{sat['rss_mb_start']:.0f} MB"
        )
    if "events_per_s" in naive:
        lines.append(
            f"naive      {naive['events_per_s']:.0f} events/s ({naive['covered']} events), "
            f"CPU {naive['cpu_s_per_1k_events']:.2f} s per 1k events"
        )
        lines.append(
            f"ratio      xrec / naive = {result['ratio']:.1f}x events/s, {result['cpu_ratio']:.1f}x less CPU per event"
        )
    else:
        lines.append(f"naive      {naive['status']}")
    if text.get("status") == "ok":
        lines.append(
            f"reviews    {text['events_per_s']:.0f} events/s with {text['reviews']} of {text['events']} events "
            f"encoded ({text.get('encoder', '?')}), CPU {text['cpu_s_per_1k_events']:.2f} s per 1k events"
        )
    else:
        lines.append(f"reviews    {text['status']}: {text.get('reason', '')}".rstrip(": "))
    m = result["machine"]
    lines.append(
        f"machine    {m['cpus']} CPUs, load {m['load_avg_at_start'][0]:.1f} at start, {m['load_avg_at_end'][0]:.1f} at end; run {result['seconds']:.0f}s"
    )
    if result.get("plot"):
        lines.append(f"plot       {result['plot']}")
    return "\n".join(lines)


def write_plot(result: dict[str, Any], path: Path) -> str:
    """Latency percentiles against offered load (percent of saturation), from one run."""
    from xrec.plotting import pyplot

    plt = pyplot()
    curve = [c for c in result["xrec"]["load_curve"] if c["percent_of_saturation"] is not None]
    sat = result["xrec"]["saturation"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [c["offered_rate"] for c in curve]
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^-")):
        ax.plot(x, [c["latency_ms"][key] for c in curve], style, label=key)
    for c in curve:
        ax.annotate(
            f"{c['percent_of_saturation']}%",
            (c["offered_rate"], c["latency_ms"]["p99"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    ax.set_xlabel(f"offered events/s (saturation {sat['lists_per_s']:.0f} lists/s, {sat['events_per_s']:.0f} events/s)")
    ax.set_ylabel("event → list latency (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    w = result["workload"]
    ax.set_title(
        f"xrec bench pipeline: {w['items']} items, {w['users']} users, {result['settings']['held_profiles']} held profiles",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
