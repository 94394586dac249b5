"""The bench report: medians of the rounds, ratios within the run, the extra checks; JSON + Markdown."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from bench import streamreport
from bench.load import BENCH

RESULTS = BENCH / "results"
CHECK_CONCURRENCY = 8  # the level of the CPU-per-request and batch-fill figures
BATCH_FILL_TARGET = 7.0
NOISE_WARN_PCT = 5.0  # host steal, or other jobs' CPU, on the serving CPU above which a point is flagged


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def _median_cpu(runs: list[dict]) -> dict[str, dict[str, float]] | None:
    cpus = [r["cpu_us"] for r in runs if r.get("cpu_us")]
    if not cpus:
        return None
    return {name: {kind: _median([c[name][kind] for c in cpus]) for kind in ("user", "system")}
            for name in cpus[0]}


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, n in count.items():
            total[key] = total.get(key, 0) + n
    return total


def _errors(system: str, row: dict) -> str:
    statuses = ", ".join(f"HTTP {status}: {n}" for status, n in sorted(row["statuses"].items()))
    return f"{system} {row['errors']}" + (f" ({statuses})" if statuses else "")


def summarise(samples: dict[tuple[str, str, int], list[dict]], systems: list[str], extra: dict) -> dict:
    """``samples``: wrk results by (system, model, concurrency), one per round."""
    rows = []
    for (system, model, concurrency), runs in samples.items():
        rows.append({
            "system": system, "model": model, "concurrency": concurrency,
            **{key: _median([r[key] for r in runs]) for key in ("rps", "p50_ms", "p99_ms")},
            "errors": sum(r["errors"] for r in runs), "rounds": len(runs),
            "statuses": _sum_counts([r.get("statuses") or {} for r in runs]),
            "error_sample": next((r["sample"] for r in runs if r.get("sample")), None),
            "mean_batch": _median([r.get("mean_batch") for r in runs]),
            "serve_cpu_busy_pct": _median([r.get("busy_pct") for r in runs]),
            "steal_pct_max": max((r.get("steal_pct") or 0.0 for r in runs), default=None),
            "foreign_pct_max": max((r.get("foreign_pct") or 0.0 for r in runs), default=None),
            "cpu_us": _median_cpu(runs),
        })
    by_key = {(r["system"], r["model"], r["concurrency"]): r for r in rows}
    ratios = []
    for (system, model, concurrency), row in sorted(by_key.items()):
        if system != "gateway":
            continue
        ratio = {"model": model, "concurrency": concurrency}
        for other in systems[1:]:
            peer = by_key.get((other, model, concurrency))
            if peer and peer["rps"]:
                ratio[f"gateway_over_{other}"] = round(row["rps"] / peer["rps"], 2)
        mosec = by_key.get(("mosec", model, concurrency))
        if mosec and mosec["p99_ms"]:
            ratio["p99_gateway_over_mosec"] = round(row["p99_ms"] / mosec["p99_ms"], 2)
        ratios.append(ratio)
    speedups = []
    for c in sorted({r["concurrency"] for r in rows}):
        for label, key, (top, bottom) in (("batch_on/batch_off", "batching_speedup", ("batch_on", "batch_off")),
                                          ("cpu_x2/cpu", "replica_speedup", ("cpu_x2", "cpu"))):
            on, off = by_key.get(("gateway", top, c)), by_key.get(("gateway", bottom, c))
            if on and off and off["rps"]:
                speedups.append({"model": label, "concurrency": c, key: round(on["rps"] / off["rps"], 2)})
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "systems": systems,
        "rows": sorted(rows, key=lambda r: (r["model"], r["concurrency"], systems.index(r["system"]))),
        "ratios": ratios,
        "speedups": speedups,
        **extra,
    }


def _cell(value, fmt: str = "{}") -> str:
    return "" if value is None else fmt.format(value)


def _cpu_total(cpu: dict | None, name: str) -> str:
    if not cpu or name not in cpu:
        return ""
    return f"{cpu[name]['user'] + cpu[name]['system']:.0f} ({cpu[name]['user']:.0f}+{cpu[name]['system']:.0f})"


def markdown(report: dict) -> str:
    systems, peers = report["systems"], report["systems"][2:]
    rows = {(r["system"], r["model"], r["concurrency"]): r for r in report["rows"]}
    ratios = {(r["model"], r["concurrency"]): r for r in report["ratios"]}
    keys = sorted({(r["model"], r["concurrency"]) for r in report["rows"]})
    head = ([f"{s} req/s" for s in systems] + [f"gw/{s}" for s in systems[1:]]
            + [f"p99 {s} ms" for s in systems] + (["p99 gw/mosec"] if "mosec" in peers else []) + ["errors"])
    lines = ["| model | c | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)] if keys else []
    for model, c in keys:
        got = [rows.get((s, model, c)) for s in systems]
        ratio = ratios.get((model, c), {})
        cells = [_cell(r and r["rps"], "{:.0f}") for r in got]
        cells += [_cell(ratio.get(f"gateway_over_{s}")) for s in systems[1:]]
        cells += [_cell(r and r["p99_ms"]) for r in got]
        if "mosec" in peers:
            cells.append(_cell(ratio.get("p99_gateway_over_mosec")))
        cells.append("; ".join(_errors(s, r) for s, r in zip(systems, got, strict=True) if r and r["errors"]))
        lines.append(f"| {model} | {c} | " + " | ".join(cells) + " |")
    if report["speedups"]:
        lines += ["", "| gateway | c | speed-up |", "|---|---|---|"]
        for r in report["speedups"]:
            lines.append(f"| {r['model']} | {r['concurrency']} | "
                         f"{r.get('batching_speedup', r.get('replica_speedup'))} |")
    batch_rows = [r for r in report["rows"] if r["mean_batch"] is not None]
    if batch_rows:
        lines += ["", "Batch fill: mean batch formed during the point (delta sum / delta count of the model "
                  "server's `/stats` batch_size histogram; Mosec's `mosec_service_batch_size` on its `/metrics`).", "",
                  "| model | c | via | mean batch |", "|---|---|---|---|"]
        for r in batch_rows:
            lines.append(f"| {r['model']} | {r['concurrency']} | {r['system']} | {r['mean_batch']} |")
        target = rows.get(("gateway", "batch8", CHECK_CONCURRENCY))
        if target and target["mean_batch"] is not None:
            verdict = "met" if target["mean_batch"] >= BATCH_FILL_TARGET else "NOT met"
            lines += ["", f"Batch-fill target (gateway, batch8, c={CHECK_CONCURRENCY}, mean >= {BATCH_FILL_TARGET:g}): "
                      f"{verdict} ({target['mean_batch']})."]
    cpu_rows = [k for k in keys if k[1] == CHECK_CONCURRENCY]
    if cpu_rows:
        lines += ["", f"CPU per answered request at c={CHECK_CONCURRENCY}, microseconds, total (user+kernel): "
                  "the gateway process and the model server through the gateway, the model server called directly, "
                  "each peer's whole process tree.", "",
                  "| model | gateway | server (via gateway) | server (direct) |" + "".join(f" {p} |" for p in peers),
                  "|---|---|---|---|" + "---|" * len(peers)]
        for model, c in cpu_rows:
            via, direct = rows.get(("gateway", model, c), {}), rows.get(("direct", model, c), {})
            cells = [_cpu_total(via.get("cpu_us"), "gateway"), _cpu_total(via.get("cpu_us"), "server"),
                     _cpu_total(direct.get("cpu_us"), "server")]
            cells += [_cpu_total(rows.get((p, model, c), {}).get("cpu_us"), "tree") for p in peers]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    idle = report.get("idle_check")
    if idle:
        load = idle.get("load", {})
        base = rows.get(("gateway", "dummy", CHECK_CONCURRENCY))
        ended = (f"{idle['ended_by_gateway']}, the first after {idle['first_end_after_s']} s "
                 f"({idle['answered_before_close']} answered before closing)" if idle["ended_by_gateway"] else "none")
        lines += ["", f"Idle connections: {idle['requested']} slow clients (half a request header each) held on the "
                  f"gateway while dummy is measured through it at c={CHECK_CONCURRENCY}.", "",
                  f"- opened in {idle['open_seconds']} s: {idle['connected']} connected, "
                  f"{idle['not_connected']} not connected within the time limit",
                  f"- dummy c={CHECK_CONCURRENCY} with them held: {_cell(load.get('rps'), '{:.0f}')} req/s, "
                  f"p50 {load.get('p50_ms')} ms, p99 {load.get('p99_ms')} ms, {load.get('errors')} errors"
                  + (f" ({idle['load_error']})" if idle.get("load_error") else "")
                  + (f"; without them, in the rounds: {base['rps']:.0f} req/s, p50 {base['p50_ms']} ms, "
                     f"p99 {base['p99_ms']} ms" if base else ""),
                  f"- gateway RSS: {idle['rss_mb_before']} MB before, {idle['rss_mb_opened']} MB with them open, "
                  f"{idle['rss_mb_after_load']} MB after the load (still held)",
                  f"- still open at the end: {idle['still_open_at_end']} of {idle['connected']}; "
                  f"ended by the gateway meanwhile: {ended}"]
    if report.get("streams") or report.get("many_streams"):
        lines += streamreport.markdown(report["streams"], report.get("many_streams"), CHECK_CONCURRENCY,
                                       NOISE_WARN_PCT)
    lines += [""]
    for key, what in (("steal_pct_max", "Host steal on the serving CPU"),
                      ("foreign_pct_max", "CPU taken on the serving CPU by processes outside the measured system")):
        flagged = [r for r in report["rows"] if (r[key] or 0) >= NOISE_WARN_PCT]
        if flagged:
            worst = max(flagged, key=lambda r: r[key])
            where = f"{worst['system']} {worst['model']} c={worst['concurrency']}"
            lines.append(f"{what} reached {NOISE_WARN_PCT:g} % or more in {len(flagged)} points (worst "
                         f"{worst[key]} %: {where}): those figures are low by about that much.")
    large = report.get("rss_mb_after_large")
    if large:
        lines.append(f"RSS MB after the large-body points at c={large['concurrency']}: {large['rss_mb']}")
    lines += [f"RSS MB idle: {report['rss_mb_idle']}", f"RSS MB after load: {report['rss_mb_after_load']}"]
    if report.get("pinning"):
        lines.append(f"Pinning: {report['pinning']['summary']}")
    if report.get("peer_failures"):
        lines.append(f"Peers that did not start: {report['peer_failures']}")
    lines.append(f"Machine: {report['machine']}; {report['settings']}")
    return "\n".join(lines)


def write_report(report: dict, results: Path = RESULTS) -> str:
    text = markdown(report)
    print("\n" + text)
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    (results / f"bench_{stamp}.json").write_text(json.dumps(report, indent=2))
    (results / f"bench_{stamp}.md").write_text(text + "\n")
    (results / "latest.md").write_text(text + "\n")
    return text


def medians(runs: list[dict], processes: tuple[str, ...] = ("gateway", "server")) -> dict:
    """One row of a side-by-side bench (bench.v2, bench.remote): the rounds' medians of req/s,
    p50 and p99, and of each process's CPU per request (user + kernel), with the errors summed."""
    row: dict = {"errors": sum(r["errors"] for r in runs)}
    for key in ("rps", "p50_ms", "p99_ms"):
        row[key] = round(statistics.median(r[key] for r in runs), 2)
    for name in processes:
        row[f"cpu_{name}_us"] = round(statistics.median(r["cpu_us"][name] for r in runs))
    return row


def save_table(prefix: str, text: str, args: argparse.Namespace, rows: list[dict] | None = None,
               results: Path = RESULTS) -> None:
    """Print a bench's Markdown table and write it to ``bench/results/<prefix>_<stamp>.md`` (and,
    with ``rows``, them and the arguments as JSON beside it)."""
    print(text)
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"{prefix}_{stamp}.md").write_text(text + "\n")
    if rows is not None:
        (results / f"{prefix}_{stamp}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


def rotated(cases: tuple | list, round_no: int) -> list:
    """The cases in the order of round ``round_no``: each case leads in turn, so that the drift of a
    shared machine (and a cold first run) falls on every case alike."""
    turn = round_no % len(cases)
    return list(cases[turn:]) + list(cases[:turn])


def side_by_side_parser(doc: str, duration: float) -> argparse.ArgumentParser:
    """The options every side-by-side bench takes: --duration, --rounds, --warmup, --concurrency, --pin."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=duration)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--pin", action="store_true")
    return parser

