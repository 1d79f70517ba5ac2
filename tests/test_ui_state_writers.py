"""Timers and buttons must not write the same ``gr.State``.

Gradio runs a timer's tick and a click concurrently (the queue allows several events at once).
A tick that read a state before a click stored a new value, and then writes the value it read,
puts the old one back: the click is lost (in CI: a photo check whose verdicts never showed, an
X/Y grid that never finished). So every state has one kind of writer, with one exception per
tab at most, listed here with why it is safe."""
from __future__ import annotations

from collections import defaultdict

import gradio as gr

# timer functions allowed to write a state a user event writes too: a one-time transition
ALLOWED_TICKS = {
    "poll_hdri",  # Relight: the described HDRI becomes the environment once, when its job completes
}


def _writers(demo: gr.Blocks) -> dict[int, dict[str, set[str]]]:
    """State block id -> {"tick": names of timer functions writing it, "user": other writers}."""
    out: dict[int, dict[str, set[str]]] = defaultdict(lambda: {"tick": set(), "user": set()})
    for fn in demo.fns.values():
        kinds = {"tick" if ev == "tick" else "user" for _, ev in fn.targets}
        for block in fn.outputs:
            if isinstance(block, gr.State):
                for kind in kinds:
                    out[block._id][kind].add(getattr(fn.fn, "__name__", repr(fn.fn)))
    return out


def test_no_state_is_written_by_a_timer_and_a_user_event(services) -> None:  # noqa: ANN001
    from ui.app import build

    demo = build(services)
    writers = _writers(demo)
    assert any(w["tick"] for w in writers.values())  # the scan sees the timers at all
    shared = {bid: w for bid, w in writers.items() if w["tick"] and w["user"] and not w["tick"] <= ALLOWED_TICKS}
    assert not shared, {bid: (w["tick"], w["user"]) for bid, w in shared.items()}


def test_the_check_reaches_the_screen_even_if_a_tick_read_the_old_state(services) -> None:  # noqa: ANN001
    """Replays the lost-click race on the Personalize tab's check: the tick runs with the value it
    read before the click (nothing) and after it; neither wipes the pending check."""
    from ui.app import build

    demo = build(services)
    tick = next(fn for fn in demo.fns.values() if any(ev == "tick" for _, ev in fn.targets)
                and getattr(fn.fn, "__name__", "") == "poll_check")
    stale = tick.fn(None, None)
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in stale), stale
    job = services.jobs.submit("personalize", {"demo": True, "model": "embedded", "check_only": True})
    pending = {"job": job.id, "refused": []}
    line = tick.fn(pending, None)
    assert "checking" in str(line[2]) and line[3] == gr.update()  # still pending: shown untouched
