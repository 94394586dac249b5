"""The streaming part of the bench report: medians of the rounds of ``bench/streamload.py``'s
figures, the ratios of the gateway to the others within the run, the serving overhead on the
first item, CPU per item, RSS during the highest concurrency, and the many-streams check.
``bench/report.py`` adds its Markdown to the report's."""

from __future__ import annotations

import statistics

MEDIANS = ("ttfi_p50_ms", "ttfi_p99_ms", "items_per_s", "streams_per_s", "total_p50_ms", "total_p99_ms",
           "gap_p50_ms", "gap_p99_ms", "model_first_ms", "busy_pct", "client_cpu_us_per_item")
LOADGEN_WARN_PCT = 60.0  # the load generator's CPU on its own core above which a point is flagged


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def _max(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


def _row(system: str, model: str, concurrency: int, runs: list[dict]) -> dict:
    kinds: dict[str, int] = {}
    for run in runs:
        for kind, n in (run.get("error_kinds") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    cpu = [r["cpu_us"] for r in runs if r.get("cpu_us")]
    rss = [r.get("rss_mb_peak") or {} for r in runs]
    row = {"system": system, "model": model, "concurrency": concurrency, "rounds": len(runs),
           **{key: _median([r.get(key) for r in runs]) for key in MEDIANS},
           "streams": sum(r["streams"] for r in runs), "errors": sum(r["errors"] for r in runs),
           "error_kinds": kinds, "error_sample": next((r["error_sample"] for r in runs if r.get("error_sample")), None),
           "items_per_stream": _max([r.get("items_per_stream") for r in runs]),
           "client_cpu_pct_max": _max([r.get("client_cpu_pct") for r in runs]),
           "steal_pct_max": _max([r.get("steal_pct") for r in runs]),
           "foreign_pct_max": _max([r.get("foreign_pct") for r in runs]),
           "cpu_us_per_item": ({name: _median([c[name]["user"] + c[name]["system"] for c in cpu]) for name in cpu[0]}
                               if cpu else None),
           "rss_mb_peak": {name: _max([r.get(name) for r in rss]) for name in rss[0]} if rss else {}}
    # what the client waited for the first item beyond the model's own first-item time
    if row["ttfi_p50_ms"] is not None and row["model_first_ms"] is not None:
        row["ttfi_over_model_ms"] = round(row["ttfi_p50_ms"] - row["model_first_ms"], 2)
    else:
        row["ttfi_over_model_ms"] = None
    return row


def summarise_streams(samples: dict[tuple[str, str, int], list[dict]], systems: list[str]) -> dict:
    """``samples``: stream load results by (system, model, concurrency), one per round."""
    rows = [_row(system, model, c, runs) for (system, model, c), runs in samples.items()]
    rows.sort(key=lambda r: (r["model"], r["concurrency"], systems.index(r["system"])))
    by_key = {(r["system"], r["model"], r["concurrency"]): r for r in rows}
    ratios = []
    for (system, model, c), row in sorted(by_key.items()):
        if system != "gateway":
            continue
        ratio = {"model": model, "concurrency": c}
        for other in systems[1:]:
            peer = by_key.get((other, model, c))
            if peer:
                ratio[f"ttfi_p50_gateway_over_{other}"] = _ratio(row["ttfi_p50_ms"], peer["ttfi_p50_ms"])
                ratio[f"ttfi_p99_gateway_over_{other}"] = _ratio(row["ttfi_p99_ms"], peer["ttfi_p99_ms"])
                ratio[f"items_per_s_gateway_over_{other}"] = _ratio(row["items_per_s"], peer["items_per_s"])
        ratios.append(ratio)
    return {"systems": [s for s in systems if any(r["system"] == s for r in rows)], "rows": rows, "ratios": ratios}


def _cell(value, fmt: str = "{}") -> str:
    return "" if value is None else fmt.format(value)


def markdown(streams: dict | None, many: dict | None, check_concurrency: int, noise_pct: float) -> list[str]:
    """The report's lines on streams: ``check_concurrency`` is the level of the CPU-per-item figures,
    ``noise_pct`` the host steal or foreign CPU above which points are flagged."""
    lines = _points(streams, check_concurrency, noise_pct) if streams and streams["rows"] else []
    return lines + (_many_streams(many) if many else [])


def _points(streams: dict, check_concurrency: int, noise_pct: float) -> list[str]:
    systems, rows = streams["systems"], streams["rows"]
    others = systems[1:]
    per_stream = _max([r["items_per_stream"] for r in rows])
    models = ", ".join(f"`{m}`" for m in sorted({r["model"] for r in rows}))
    lines = ["", f"Streams: {per_stream} items a stream (model {models}: 10 ms apart, the first 10 ms after the model "
             "got the request; at most c x 100 items/s). TTFI: from writing the request to the first whole item at "
             "the client; total: to the end of the answer; gap: between items as they arrived; \"over model\": "
             "TTFI p50 minus the model's own first-item time (the first item's `ms`, median), i.e. what serving "
             "adds before the first item. Medians of the rounds.", "",
             "| model | c | system | TTFI p50 ms | TTFI p99 ms | over model ms | items/s | total p50 ms | "
             "total p99 ms | gap p99 ms | errors | load gen CPU % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_cell(r[key]) for key in ("ttfi_p50_ms", "ttfi_p99_ms", "ttfi_over_model_ms")]
        cells.append(_cell(r["items_per_s"], "{:.0f}"))
        cells += [_cell(r[key]) for key in ("total_p50_ms", "total_p99_ms", "gap_p99_ms")]
        cells.append(str(r["errors"]) + (f" {r['error_kinds']}" if r["errors"] else ""))
        cells.append(_cell(r["client_cpu_pct_max"]))
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['system']} | " + " | ".join(cells) + " |")
    if others and streams["ratios"]:
        head = "".join(f" TTFI p50 gw/{o} | TTFI p99 gw/{o} | items/s gw/{o} |" for o in others)
        lines += ["", "| model | c |" + head, "|---|---|" + "---|" * (3 * len(others))]
        for ratio in streams["ratios"]:
            cells = "".join(f" {_cell(ratio.get(f'ttfi_p50_gateway_over_{o}'))} | "
                            f"{_cell(ratio.get(f'ttfi_p99_gateway_over_{o}'))} | "
                            f"{_cell(ratio.get(f'items_per_s_gateway_over_{o}'))} |" for o in others)
            lines.append(f"| {ratio['model']} | {ratio['concurrency']} |" + cells)
    by_key = {(r["system"], r["model"], r["concurrency"]): r for r in rows}
    for model in sorted({r["model"] for r in rows}):
        first = [by_key.get((s, model, 1)) for s in systems]
        parts = [f"{r['system']} {r['ttfi_p50_ms']} - {r['model_first_ms']} = {r['ttfi_over_model_ms']} ms"
                 for r in first if r and r["ttfi_over_model_ms"] is not None]
        if parts:
            lines += ["", f"First item at c=1 ({model}), TTFI p50 minus the model's own first-item time: "
                      + "; ".join(parts) + "."]
    cpu_rows = [r for r in rows if r["concurrency"] == check_concurrency and r["cpu_us_per_item"]]
    if cpu_rows:
        def cpu(row: dict) -> str:  # the idle gateway's CPU is measured for direct too: left out there
            return ", ".join(f"{name} {us:.0f}" for name, us in row["cpu_us_per_item"].items()
                             if name != "gateway" or row["system"] != "direct")

        lines += ["", f"CPU per item at c={check_concurrency}, microseconds (user+kernel; \"tree\": all of a peer's "
                  "processes): " + "; ".join(f"{r['system']}: {cpu(r)}" for r in cpu_rows) + "."]
    top = max((r["concurrency"] for r in rows), default=None)
    rss = [r for r in rows if r["concurrency"] == top and r["rss_mb_peak"]]
    if rss:
        lines.append(f"Peak RSS MB during the c={top} streams: "
                     + "; ".join(f"{r['system']} {r['rss_mb_peak']}" for r in rss) + ".")
    busy = [r for r in rows if (r["client_cpu_pct_max"] or 0) >= LOADGEN_WARN_PCT]
    worst = max(rows, key=lambda r: r["client_cpu_pct_max"] or 0, default=None)
    if worst and worst["client_cpu_pct_max"] is not None:
        lines.append(f"Stream load generator: at most {worst['client_cpu_pct_max']} % of its core "
                     f"({worst['system']} c={worst['concurrency']}, {worst['client_cpu_us_per_item']} us per item)"
                     + (f"; {len(busy)} points at {LOADGEN_WARN_PCT:g} % or more: it may have limited them."
                        if busy else "."))
    for key, what in (("steal_pct_max", "Host steal"), ("foreign_pct_max", "CPU of other processes")):
        flagged = [r for r in rows if (r[key] or 0) >= noise_pct]
        if flagged:
            lines.append(f"{what} on the serving CPU reached {noise_pct:g} % or more in {len(flagged)} stream "
                         "points: those figures are off by about that much.")
    return lines


def _many_streams(m: dict) -> list[str]:
    if m["streams"] == m["requested"] and not m["errors"]:
        complete = "all completed"
    else:
        complete = f"{m['streams']} completed, {m['errors']} failed {m['error_kinds']} (first: {m['error_sample']})"
    servers = f"{m['server_processes']} model server process" + ("es" if m["server_processes"] != 1 else "")
    return ["", f"Many streams: {m['requested']} streams at once on the gateway (items 100 ms apart, "
            f"{m['items_per_stream']} a stream, {servers}): {complete}.", "",
            f"- TTFI p50 {m['ttfi_p50_ms']} ms (the model's own first item: {m['model_first_ms']} ms), "
            f"p99 {m['ttfi_p99_ms']} ms; stream total p50 {m['total_p50_ms']} ms, p99 {m['total_p99_ms']} ms, "
            f"max {m['total_max_ms']} ms; gap p99 {m['gap_p99_ms']} ms; {m['items_per_s']:.0f} items/s",
            f"- RSS MB before: {m['rss_mb_before']}; peak during: {m['rss_mb_peak']}; after: {m['rss_mb_after']}",
            f"- load generator: {m['client_cpu_pct']} % of its core"]
