"""The load benchmark (``polyroute bench-load``): in one run, direct vs polyroute at several
rates, the gateway's CPU per request and resident memory, and an overload point.

It reuses the overhead benchmark's processes and load generator (:mod:`training.bench.overhead`
and :mod:`training.bench.loadgen`: the mock upstream, one ``polyroute serve`` worker, a fixed
schedule of keep-alive requests):

1. each rate of ``rates`` (requests/s per path): the same requests directly to the mock upstream
   and through the router, side by side (:func:`training.bench.overhead.rate_row`);
2. capacity: the highest of those rates whose routed p99 is under ``p99_ms`` with no error;
3. overload: the router alone at ``overload_factor`` x capacity (the direct path would only
   take CPU from the router): the accepted requests' p50/p99, the share refused (503) and the
   refusals' latency;
4. the same overload point against a router whose admission has the ``baseline`` keys (by
   default ``limiter: fixed`` with the example config's 50 ms queue: the admission before the
   adaptive limit), so before and after come from the same run on the same machine.

Resident memory (``VmRSS``) of the router is read after the warm-up and after the last point.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from training.bench.loadgen import rss_mb
from training.bench.overhead import rate_row, serving, warm_up

BASELINE = {"limiter": "fixed", "queue_wait_ms": 50.0}  # main's admission, example config


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (/proc/loadavg)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def capacity(rows: list[dict[str, Any]], p99_ms: float) -> float | None:
    """The highest rate whose routed p99 is under ``p99_ms`` with no error on either path."""
    ok = [
        r["rate_rps"]
        for r in rows
        if r["routed_p99_ms"] is not None
        and r["routed_p99_ms"] < p99_ms
        and r["errors_routed"] == 0
        and r["errors_direct"] == 0
    ]
    return max(ok) if ok else None


def run_load(
    config_path: str,
    bundle_path: str,
    rates: list[float],
    seconds: float,
    workdir: Path,
    overload_factor: float = 4.0,
    p99_ms: float = 50.0,
    pin: bool = False,
    baseline: dict[str, Any] | None = BASELINE,
) -> dict[str, Any]:
    """Every point of the module docstring; ``baseline`` None skips the comparison."""
    result: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_average_start": load_average(),
        "pinned": pin,
        "seconds_per_point": seconds,
        "p99_target_ms": p99_ms,
        "overload_factor": overload_factor,
    }
    overload: list[dict[str, Any]] = []
    with serving(config_path, bundle_path, workdir / "adaptive", pin=pin) as served:
        warm_up(served)
        result["router_rss_mb_start"] = rss_mb(served.pids["router"])
        rows = [rate_row(served, rate, seconds) for rate in rates]
        top = capacity(rows, p99_ms)
        result["capacity_rps"] = top
        result["overload_rps"] = overload_rate = overload_factor * (top or min(rates))
        row = rate_row(served, overload_rate, seconds, direct=False)
        overload.append({"admission": "configured", **row})
        result["router_rss_mb_end"] = rss_mb(served.pids["router"])
    if baseline is not None:
        work = workdir / "baseline"
        with serving(config_path, bundle_path, work, pin=pin, admission=baseline) as served:
            warm_up(served)
            row = rate_row(served, overload_rate, seconds, direct=False)
            overload.append({"admission": f"baseline {baseline}", **row})
    result["rates"] = rows
    result["overload"] = overload
    result["load_average_end"] = load_average()
    return result


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def load_table(result: dict[str, Any]) -> str:
    """The result as Markdown: the rates, then the overload point(s)."""
    lines = [
        "| rate (req/s per path) | direct p50 / p99 ms | polyroute p50 / p99 ms "
        "| overhead p50 / p99 ms | errors direct / routed | gateway CPU ms/req |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rates"]:
        lines.append(
            f"| {r['rate_rps']:g} | {_f(r['direct_p50_ms'], 2)} / {_f(r['direct_p99_ms'], 2)} "
            f"| {_f(r['routed_p50_ms'], 2)} / {_f(r['routed_p99_ms'], 2)} "
            f"| {_f(r['overhead_p50_ms'], 2)} / {_f(r['overhead_p99_ms'], 2)} "
            f"| {r['errors_direct']} / {r['errors_routed']} "
            f"| {_f(r['router_cpu_ms_per_req'], 2)} |"
        )
    top = result["capacity_rps"]
    lines += [
        "",
        f"Capacity (highest rate with polyroute p99 < {result['p99_target_ms']:g} ms and no "
        f"error): {'none' if top is None else f'{top:g} req/s'}. Gateway RSS "
        f"{result['router_rss_mb_start']:.0f} MB after the warm-up, "
        f"{result['router_rss_mb_end']:.0f} MB after the last point.",
        "",
        f"Overload: polyroute alone at {result['overload_rps']:g} req/s "
        f"({result['overload_factor']:g} x "
        f"{'capacity' if top is not None else 'the lowest rate: no rate met the bound'}):",
        "",
        "| admission | served req/s | accepted p50 / p99 ms | refused (503) "
        "| refusals p50 / p99 ms | other errors | gateway CPU ms/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["overload"]:
        served = r["accepted_share"] * r["requests_per_path"] / result["seconds_per_point"]
        other = r["errors_routed"] - round(r["refused_share"] * r["requests_per_path"])
        lines.append(
            f"| {r['admission']} | {served:.0f} "
            f"| {_f(r['accepted_p50_ms'])} / {_f(r['accepted_p99_ms'])} "
            f"| {100 * r['refused_share']:.1f}% "
            f"| {_f(r['refused_p50_ms'])} / {_f(r['refused_p99_ms'])} | {other} "
            f"| {_f(r['router_cpu_ms_per_req'], 2)} |"
        )
    return "\n".join(lines)


def load_markdown(result: dict[str, Any]) -> str:
    """The results file: the command, the date, the machine's load around the run, the table."""
    start, end = result["load_average_start"], result["load_average_end"]
    return (
        f"Command: `{result['command']}`\n\nDate: {result['date_utc']}; {result['cpus']} CPUs "
        f"(pinned: {result['pinned']}); load average (1/5/15 min) {start} at the start, {end} "
        f"at the end\n\n{load_table(result)}\n"
    )
