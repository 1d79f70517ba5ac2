"""Queue tab: every job with live status and progress; cancel and retry."""
from __future__ import annotations

from typing import Any

import gradio as gr

from studio.errors import StudioError
from studio.wiring import Services
from ui.common import fmt_job_line

COLUMNS = ["id", "engine", "status", "progress", "message", "created", "retried_from"]
STATUSES = ["all", "queued", "running", "completed", "failed", "canceled"]


def rows(services: Services, status: str) -> list[list[Any]]:
    jobs = services.jobs.list(status=None if status == "all" else status, limit=200)
    return [[j.id, j.engine, j.status, f"{j.progress * 100:.0f}%", j.message if not j.error else
             f"{j.error['type']}: {j.error['message']}", (j.created_at or "")[:19].replace("T", " "),
             j.retried_from or ""] for j in jobs]


def worker_line(services: Services) -> str:
    """One line on the supervised worker, so a crash loop or a kill shows where jobs are watched."""
    w = services.jobs.worker()
    if w is None:
        return ""
    parts = ["Worker: " + ("running" if w["alive"] else f"**not running** ({w['last_exit']}; restarting)")]
    if w["restarts"]:
        when = (w["last_restart_at"] or "").replace("T", " ").rstrip("Z")
        parts.append(f"restarted {w['restarts']}× (last exit {w['last_exit']}, at {when} UTC)")
    return " · ".join(parts)


def cluster_markdown(services: Services) -> str:
    """Workers (engines, what each runs, heartbeat age) and queue depth per engine."""
    try:
        info = services.jobs.cluster(services.settings.lease_seconds)
    except Exception as e:  # noqa: BLE001 - the panel must not break the tab (database restarting)
        return f"Workers: unavailable ({type(e).__name__})"
    lines = [f"**Workers** ({info['database']} · queue {info['queue_transport']})", "",
             "| worker | state | heartbeat | devices | engines | running |", "|---|---|---|---|---|---|"]
    for w in info["workers"]:
        run = ", ".join(f"`{r['id']}` {r['engine']} {r['progress'] * 100:.0f}%" for r in w["running"]) or "–"
        engines = ", ".join(w["engines"])
        lines.append(f"| {w['host']} pid {w['pid']} | {w['state']} | {w['heartbeat_age_s']:.1f} s ago | "
                     f"{', '.join(w['devices'])} | {engines[:80]} | {run} |")
    if not info["workers"]:
        lines.append("| no worker registered | | | | | |")
    if info["queue"]:
        lines += ["", "| engine | queued | running |", "|---|---|---|"]
        lines += [f"| {e} | {q['queued']} | {q['running']} |" for e, q in info["queue"].items()]
    return "\n".join(lines)


def build_tab(services: Services) -> None:
    with gr.Tab("Queue", id="queue"):
        with gr.Row():
            status_filter = gr.Dropdown(STATUSES, value="all", label="Status", elem_id="queue-filter", scale=1)
            counts = gr.Markdown(elem_id="queue-counts")
        table = gr.Dataframe(headers=COLUMNS, value=rows(services, "all"), interactive=False, wrap=True,
                             elem_id="queue-table")
        with gr.Row():
            selected = gr.Textbox(label="Selected job id", elem_id="queue-selected", scale=3)
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="queue-cancel", scale=1)
            retry_btn = gr.Button("Retry", elem_id="queue-retry", scale=1)
        worker = gr.Markdown(worker_line(services), elem_id="queue-worker")
        with gr.Accordion("Workers and queue depth", open=False, elem_id="queue-cluster-panel"):
            cluster = gr.Markdown(cluster_markdown(services), elem_id="queue-cluster")
            gr.Timer(2.0).tick(lambda: cluster_markdown(services), outputs=cluster, show_progress="hidden")
        detail = gr.Markdown(elem_id="queue-detail")
        params = gr.JSON(label="Params and error", elem_id="queue-json")

        def refresh(status: str) -> tuple[list[list[Any]], str, str]:
            c = services.jobs.counts()
            return (rows(services, status), " · ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "no jobs",
                    worker_line(services))

        def pick(evt: gr.SelectData, data: Any) -> str:
            r = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            try:
                return data.iloc[r, 0] if hasattr(data, "iloc") else data[r][0]
            except Exception:
                return ""

        def show(job_id: str) -> tuple[str, Any]:
            if not job_id:
                return "", None
            try:
                j = services.jobs.get(job_id.strip())
            except StudioError as e:
                return str(e), None
            return fmt_job_line(j), {"params": j.params, "error": j.error, "result": j.result_meta,
                                     "assets": [a.id for a in j.assets]}

        def act(job_id: str, action: str) -> str:
            try:
                j = services.jobs.cancel(job_id.strip()) if action == "cancel" else services.jobs.retry(job_id.strip())
            except StudioError as e:
                return str(e)
            return ("Canceled: " if action == "cancel" else "Retry queued: ") + fmt_job_line(j)

        table.select(pick, inputs=table, outputs=selected)
        selected.change(show, inputs=selected, outputs=[detail, params])
        cancel_btn.click(lambda jid: act(jid, "cancel"), inputs=selected, outputs=detail)
        retry_btn.click(lambda jid: act(jid, "retry"), inputs=selected, outputs=detail)
        status_filter.change(refresh, inputs=status_filter, outputs=[table, counts, worker])
        gr.Timer(1.0).tick(refresh, inputs=status_filter, outputs=[table, counts, worker], show_progress="hidden")
