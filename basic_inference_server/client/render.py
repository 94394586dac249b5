"""Readable text for the CLI: the servers table, the status summary, notifications."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DASH = "-"
MAX_EVENTS = 5


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, under a header line."""
    cells = [[str(h) for h in headers]] + [[DASH if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def servers_text(answer: dict[str, Any]) -> str:
    """The ``/list_servers`` answer as a table of model servers, one of support processes, and
    the last error of each child that has one."""
    servers: dict[str, Any] = answer.get("AVAIL_SERVERS") or {}
    supports: dict[str, Any] = answer.get("SUPPORT_PROCESSES") or {}
    parts = []
    if servers:
        rows = []
        for name, info in servers.items():
            workers = info.get("WORKERS") or {}
            ready_total = f"{workers.get('ready', DASH)}/{workers.get('total', DASH)}" if workers else None
            queue = f"{workers['queue']}/{workers['max_queue']}" if "queue" in workers and "max_queue" in workers \
                else workers.get("queue")
            rows.append([name, info.get("STATE"), info.get("PID"), info.get("PORT"), ready_total,
                         workers.get("busy"), queue, info.get("RESTARTS"), info.get("UPTIME")])
        parts.append(table(["NAME", "STATE", "PID", "PORT", "WORKERS", "BUSY", "QUEUE", "RESTARTS", "UPTIME"],
                           rows))
    else:
        parts.append("no model servers started")
    if supports:
        rows = [[name, info.get("STATE"), info.get("PID"), info.get("RESTARTS"), info.get("UPTIME")]
                for name, info in supports.items()]
        parts.append(table(["SUPPORT PROCESS", "STATE", "PID", "RESTARTS", "UPTIME"], rows))
    errors = [f"{name} ({info.get('STATE')}): {info['ERROR']}"
              for name, info in {**servers, **supports}.items() if info.get("ERROR")]
    if errors:
        parts.append("errors:\n" + "\n".join(f"  {line}" for line in errors))
    return "\n\n".join(parts)


def _gb(value: Any) -> str:
    return DASH if value is None else f"{value} GB"


def status_text(answer: dict[str, Any]) -> str:
    """The ``/system_status`` answer as a few labelled lines."""
    status: dict[str, Any] = answer.get("SYSTEM_STATUS") or {}
    alerts: dict[str, Any] = answer.get("SYSTEM_ALERTS") or {}
    history: dict[str, Any] = answer.get("SYSTEM_HISTORY") or {}
    per_server: dict[str, Any] = status.get("mem_servers") or {}
    lines = [
        ("server", f"{status.get('server_name', DASH)} on {answer.get('hostname', DASH)}, gateway up "
                   f"{answer.get('gw-uptime', DASH)} (app {answer.get('ver-app', DASH)}, "
                   f"lib {answer.get('ver-lib', DASH)})"),
        ("system", f"{status.get('system', DASH)}, Python {status.get('py', DASH)}"),
        ("memory", f"{_gb(status.get('mem_avail'))} available of {_gb(status.get('mem_total'))} "
                   f"({status.get('mem_source', DASH)}); gateway {_gb(status.get('mem_gateway'))}, "
                   f"servers {_gb(round(sum(v for v in per_server.values() if isinstance(v, (int, float))), 2))}, "
                   f"rest of the machine "
                   f"{_gb(status.get('mem_sys'))}"),
    ]
    lines += [("", f"  {name}: {_gb(value)}") for name, value in per_server.items()]
    lines.append(("disk", f"{_gb(status.get('disk_avail'))} free of {_gb(status.get('disk_total'))}"))
    lines.append(("alerts", "; ".join(alerts.get("alerts") or []) or "none"))
    for name, support in (status.get("system_support_services") or {}).items():
        lines.append(("support", _support_line(name, support)))
    if history:
        lines.append(("started", f"{history.get('CURRENT_STARTUP') or DASH} (previous "
                                  f"{history.get('PREVIOUS_STARTUP') or DASH}, last shutdown "
                                  f"{history.get('LAST_SHUTDOWN') or DASH})"))
        restarts = history.get("RESTARTS") or {}
        if restarts:
            lines.append(("restarts", ", ".join(f"{name} {count}" for name, count in restarts.items())))
        events = (history.get("EVENTS") or [])[-MAX_EVENTS:]
        for i, event in enumerate(events):
            detail = " ".join(str(event.get(k)) for k in ("name", "detail") if event.get(k))
            lines.append(("events" if i == 0 else "", f"{event.get('time', DASH)} {event.get('event', DASH)} {detail}"))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label.ljust(width)}  {text}".rstrip() for label, text in lines)


def _support_line(name: str, support: Any) -> str:
    if not isinstance(support, dict) or not support.get("data"):
        return f"{name}: no data yet"
    data = support["data"]
    figures = ", ".join(f"{k}={v}" for k, v in data.items()) if isinstance(data, dict) else str(data)
    stale = ", STALE" if support.get("stale") else ""
    return f"{name}: {figures} ({support.get('age_s', DASH)} s ago{stale})"


def notifications_text(answer: dict[str, Any], signature: str | None) -> str:
    """Notifications of one endpoint (the gateway's answer) or of each (keyed by endpoint)."""
    per_endpoint = {signature: answer} if signature is not None else answer
    if not per_endpoint:
        return "no READY endpoints"
    blocks = []
    for name, notes in per_endpoint.items():
        rows = []
        for key, items in notes.items():
            if not isinstance(items, list):  # the envelope: time, ver, hostname, ...
                continue
            origin = key if key in ("GENERAL", "INIT") else f"call {key}"
            for item in items:
                if isinstance(item, dict):
                    rows.append([origin, item.get("time"), item.get("NOTIFICATION_TYPE"), item.get("MODULE"),
                                 item.get("NOTIF")])
                else:
                    rows.append([origin, None, None, None, item])
        body = table(["FROM", "TIME", "TYPE", "MODULE", "MESSAGE"], rows) if rows else "no notifications"
        blocks.append(f"{name}:\n" + "\n".join(f"  {line}" for line in body.splitlines()))
    return "\n\n".join(blocks)
