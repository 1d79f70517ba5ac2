"""Property tests (hypothesis) where bugs would hide:

* SHiRA / FouRA fused switching: any sequence of mixes, with any weights, restores the exact
  original weights (bit for bit, fp32 and bf16), and a mix's weights do not depend on what was
  applied before it (no drift).
* Splat rendering: weighted-sum rendering (WSR) is a sum, so the image cannot depend on the order
  of the Gaussians; the sorted-alpha renderer sorts by depth itself, so neither may it.
* The job state machine: under random submit / run / cancel / retry / shutdown / crash /
  recovery sequences on a real SQLite store, every status change the database sees is a legal
  transition and terminal states stay terminal.

Each property is sized to run in well under 20 s on a loaded 2-core box.
"""
from __future__ import annotations

import copy
import socket
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)



@pytest.fixture(autouse=True, scope="module")
def _single_thread_torch() -> Any:
    """Tiny tensors: OpenMP threads spinning against other processes on a shared 2-core box made
    these 10-25x slower (measured, as in tests/engines/splat/conftest.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- SHiRA / FouRA switching

_UNETS: dict[torch.dtype, Any] = {}


def _pristine_unet(dtype: torch.dtype) -> Any:
    """The tiny real diffusers U-Net of tests/engines/test_shira.py, built once per dtype."""
    if dtype not in _UNETS:
        from diffusers import UNet2DConditionModel

        with torch.random.fork_rng():  # leave the global RNG as it was
            torch.manual_seed(0)
            unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                        attention_head_dim=4, norm_num_groups=8).eval()
        _UNETS[dtype] = unet.to(dtype)
    return _UNETS[dtype]


def _adapters(unet: Any) -> list[Any]:
    """Two sparse (SHiRA) and three dense low-rank (FouRA) adapters over overlapping layer sets,
    one of them large enough that fp rounding makes many entries of W0 + Δ - Δ inexact."""
    from engines.adapters.shira import LowRankDelta, random_adapter, target_linears

    def low_rank(seed: int, targets: tuple[str, ...], rank: int, scale: float) -> LowRankDelta:
        g = torch.Generator().manual_seed(seed)
        layers = {}
        for name, lin in target_linears(unet, targets).items():
            out_f, in_f = lin.weight.shape
            layers[name] = (torch.randn(out_f, rank, generator=g) * scale, torch.randn(rank, in_f, generator=g) * scale)
        return LowRankDelta(layers)

    return [
        random_adapter(unet, 0.02, seed=1),
        random_adapter(unet, 0.1, scale=0.5, seed=2, targets=("to_q", "to_v", "ff.net.2"), mask_type="structured"),
        low_rank(3, ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"), 4, 0.05),
        low_rank(4, ("to_k", "ff.net.2"), 2, 0.3),
        low_rank(5, ("to_v", "to_out.0"), 8, 1.0),
    ]


_weights = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]),
                     st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, width=32))
_mix = st.lists(st.tuples(st.integers(0, 4), _weights), min_size=0, max_size=3)
_ops = st.lists(st.one_of(st.tuples(st.just("apply"), _mix), st.just(("restore", []))), min_size=1, max_size=6)
_KIT: dict[torch.dtype, tuple[Any, dict[str, torch.Tensor], list[Any], Any]] = {}


def _kit(dtype: torch.dtype) -> tuple[Any, dict[str, torch.Tensor], list[Any], Any]:
    """(U-Net, its original state, adapter pool, a twin U-Net), built once per dtype."""
    if dtype not in _KIT:
        unet = _pristine_unet(dtype)
        _KIT[dtype] = (unet, _state(unet), _adapters(unet), copy.deepcopy(unet))
    return _KIT[dtype]


def _state(unet: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def _differ(unet: Any, state: dict[str, torch.Tensor], only: tuple[str, ...] = ()) -> list[str]:
    """Names of tensors (those ending with ``only``, or all) that differ bit for bit from ``state``."""
    return [k for k, v in unet.state_dict().items() if k.endswith(only or "") and not torch.equal(v, state[k])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_fused_switching_restores_the_exact_original_weights(dtype: torch.dtype, ops: list) -> None:
    from engines.adapters.shira import FusedSwitcher

    unet, original, pool, twin = _kit(dtype)
    sw = FusedSwitcher(unet)
    last: list[tuple[Any, float]] | None = None
    try:
        for op, mix in ops:
            if op == "restore":
                sw.restore()
                last = []
                assert not _differ(unet, original, (".weight",))
            else:
                last = [(pool[i], w) for i, w in mix]
                sw.apply(last)
        if last is not None:
            # no drift: after the whole history, the last mix is what it is when written on W0
            now = _state(unet)
            fresh = FusedSwitcher(twin)
            fresh.apply(last)
            assert not _differ(twin, now), "the fused weights depend on the switch history"
            fresh.restore()
            assert not _differ(twin, original)
        sw.restore()
        differ = _differ(unet, original)
        assert not differ, f"not restored bit for bit: {differ[:5]}"
        assert sw.saved == {} and sw.active == []
    finally:
        unet.load_state_dict(original)  # the next example starts from W0 whatever happened
        twin.load_state_dict(original)


# ----------------------------------------------------------------------------- splat renderers

def _random_scene(seed: int, n: int, sh_degree: int, vdo: bool) -> Any:
    from engines.splat.render import SplatTensors

    rng = np.random.default_rng(seed)
    f = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    means = f(rng.uniform(-1.0, 1.0, (n, 3)))
    log_scales = f(rng.uniform(np.log(0.01), np.log(0.3), (n, 3)))
    quats = f(rng.normal(size=(n, 4)))
    opacity = f(rng.normal(0.0, 2.0, n))
    sh = f(rng.normal(0.0, 0.5, (n, (sh_degree + 1) ** 2, 3)))
    v = f(np.concatenate([rng.uniform(0.5, 2.0, (n, 1)), rng.normal(0, 0.3, (n, 3))], 1)) if vdo else None
    return SplatTensors(means, log_scales, quats, opacity, sh, v)


def _permuted(s: Any, perm: np.ndarray) -> Any:
    from engines.splat.render import SplatTensors

    p = torch.as_tensor(perm)
    return SplatTensors(s.means[p], s.log_scales[p], s.quats[p], s.opacity_logits[p], s.sh[p],
                        None if s.vdo is None else s.vdo[p])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 400), sh_degree=st.sampled_from([0, 1]),
       mode=st.sampled_from(["wsr-dir", "wsr-exp", "wsr-lc", "wsr-lc-vdo", "alpha"]),
       azimuth=st.floats(0, 360), elevation=st.floats(-60, 60))
def test_render_does_not_depend_on_the_order_of_the_gaussians(seed: int, n: int, sh_degree: int, mode: str,
                                                             azimuth: float, elevation: float) -> None:
    from engines.splat.render import WSRConfig, orbit_camera, render

    scene = _random_scene(seed, n, sh_degree, vdo=mode.endswith("vdo"))
    perm = np.random.default_rng(seed + 1).permutation(n)
    cam = orbit_camera((0, 0, 0), azimuth, elevation, 4.0, 50.0, 40, 32)
    kind, _, variant = mode.partition("-")
    wsr = WSRConfig(variant.split("-")[0]) if kind == "wsr" else None
    outputs = ("rgb", "depth", "alpha")
    with torch.no_grad():
        a = render(scene, cam, kind, outputs, (0.2, 0.3, 0.4), wsr=wsr)
        b = render(_permuted(scene, perm), cam, kind, outputs, (0.2, 0.3, 0.4), wsr=wsr)
    for k in outputs:
        # sums in another order round differently in the last bits; nothing more may change
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=lambda m: f"{mode} {k}: {m}")


# ----------------------------------------------------------------------------- job state machine

LEGAL = {(None, "queued"), ("queued", "running"), ("queued", "canceled"),
         ("running", "completed"), ("running", "failed"), ("running", "canceled")}
TERMINAL = {"completed", "failed", "canceled"}
DEAD = f"{socket.gethostname()}:999999:worker:dead00"  # same host, no such pid: provably dead

_TRIGGERS = """
CREATE TABLE IF NOT EXISTS _status_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT, old TEXT, new TEXT);
CREATE TRIGGER IF NOT EXISTS _status_ins AFTER INSERT ON jobs
  BEGIN INSERT INTO _status_log(job_id, old, new) VALUES (NEW.id, NULL, NEW.status); END;
CREATE TRIGGER IF NOT EXISTS _status_upd AFTER UPDATE OF status ON jobs WHEN OLD.status IS NOT NEW.status
  BEGIN INSERT INTO _status_log(job_id, old, new) VALUES (NEW.id, OLD.status, NEW.status); END;
"""


def _install_status_log(db: Any) -> None:
    """SQLite triggers record every status change, whoever makes it (service, runner, recovery,
    another thread): the test sees transitions, not just snapshots."""
    raw = db.engine.raw_connection()
    try:
        raw.executescript(_TRIGGERS)
        raw.commit()
    finally:
        raw.close()


def test_job_state_machine_never_makes_an_illegal_transition(services) -> None:  # noqa: ANN001
    from sqlalchemy import select, text

    from storage.models import Job
    from studio.errors import Conflict
    from studio.runner import JobRunner
    from studio.wiring import build_runner

    _install_status_log(services.db)
    jobs = services.jobs
    seen = {"seq": 0}

    def row(job_id: str) -> Job:
        with services.db.session() as s:
            return s.get(Job, job_id)

    def status(job_id: str) -> str:
        return row(job_id).status

    def new_transitions() -> list[tuple[str, str | None, str]]:
        with services.db.session() as s:
            rows = s.execute(text("SELECT seq, job_id, old, new FROM _status_log WHERE seq > :q ORDER BY seq"),
                             {"q": seen["seq"]}).all()
        if rows:
            seen["seq"] = rows[-1][0]
        return [(r[1], r[2], r[3]) for r in rows]

    # outcomes depend on thread timing (a cancel may land before or after a short job ends), so
    # the pool of jobs varies from run to run: rules draw a plain integer, never from the pool
    _pick = st.integers(0, 2**16)

    class Jobs(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.ids: list[str] = []

        def _track(self, job_id: str) -> None:
            if job_id not in self.ids:
                self.ids.append(job_id)

        @initialize(kinds=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=2, max_size=4))
        def some_jobs(self, kinds: list[tuple[bool, bool, bool]]) -> None:
            for long, fail, enqueue in kinds:
                self.submit(long, fail, enqueue)

        @rule(long=st.booleans(), fail=st.booleans(), enqueue=st.booleans())
        def submit(self, long: bool, fail: bool, enqueue: bool) -> None:
            # long jobs would run for minutes: every run of one is stopped by cancel/shutdown
            params = ({"steps": 10_000, "step_s": 0.01} if long else {"steps": 2, "step_s": 0}) | {"images": 0}
            if fail:
                params["fail_at"] = 1
            job = jobs.submit("test-steps", params, enqueue=enqueue)
            assert job.status == "queued"
            self._track(job.id)

        @precondition(lambda self: self.ids)
        @rule(pick=_pick, how=st.sampled_from(["to-the-end", "cancel", "shutdown", "stale-recovery"]))
        def run(self, pick: int, how: str) -> None:
            """A live worker runs the job; meanwhile the user cancels, the worker shuts down, or
            recovery wrongly takes the (slow but alive) worker for dead."""
            job_id = self.ids[pick % len(self.ids)]
            before = row(job_id)
            long = before.params["steps"] > 2
            runner = build_runner(services)
            out: list[str] = []
            t = threading.Thread(target=lambda: out.append(runner.execute(job_id)), daemon=True)
            t.start()
            if how != "to-the-end" or long:
                deadline = time.monotonic() + 20
                while status(job_id) == "queued" and t.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.002)
                if how == "shutdown":
                    runner.stopping.set()
                elif how == "stale-recovery":
                    jobs.recover(alive=lambda wid: False, stale_after_s=3600)
                    runner.stopping.set()  # the zombie run ends at its next step
                else:
                    try:
                        jobs.cancel(job_id)
                    except Conflict:
                        pass
            t.join(30)
            assert not t.is_alive(), "a run did not stop"
            runnable = before.status == "queued" and not before.cancel_requested
            if not runnable:  # a second delivery, or a job already claimed/canceled/finished: untouched
                assert out == ["skipped"]
                assert status(job_id) == before.status or how == "stale-recovery"
            elif how == "to-the-end" and not long:
                want = "failed" if before.params.get("fail_at") is not None else "completed"
                assert out == [want] and status(job_id) == want
            assert status(job_id) in TERMINAL or not runnable
            self._refresh()

        @precondition(lambda self: self.ids)
        @rule(pick=_pick)
        def crash(self, pick: int) -> None:
            """A worker claims the job and is SIGKILLed before it does anything else."""
            job_id = self.ids[pick % len(self.ids)]
            dead = JobRunner(services.settings, jobs, services.assets, services.models, DEAD, services.library)
            before = row(job_id)
            claimed = dead._claim(job_id)
            assert claimed == (before.status == "queued" and not before.cancel_requested)

        @precondition(lambda self: self.ids)
        @rule(pick=_pick)
        def cancel(self, pick: int) -> None:
            job_id = self.ids[pick % len(self.ids)]
            before = status(job_id)
            try:
                jobs.cancel(job_id)
            except Conflict:
                assert before in TERMINAL
                return
            assert before not in TERMINAL
            after = row(job_id)
            assert after.cancel_requested
            assert after.status == ("canceled" if before == "queued" else before)

        @precondition(lambda self: self.ids)
        @rule(pick=_pick)
        def retry(self, pick: int) -> None:
            job_id = self.ids[pick % len(self.ids)]
            before = status(job_id)
            try:
                again = jobs.retry(job_id)
            except Conflict:
                assert before not in ("failed", "canceled")
                return
            assert before in ("failed", "canceled")
            assert again.status == "queued" and again.retried_from == job_id and status(job_id) == before
            self._track(again.id)

        @rule()
        def recover(self) -> None:
            """The worker (re)starts: jobs of the dead worker fail as interrupted, idempotent
            ones get one linked automatic retry, queued jobs without a message are re-enqueued."""
            out = jobs.recover(alive=lambda wid: wid != DEAD, stale_after_s=3600)
            for job_id in out["interrupted"]:
                assert status(job_id) == "failed"
            self._refresh()

        def _refresh(self) -> None:
            with services.db.session() as s:  # automatic retries of this run's jobs join the pool
                for jid, parent in s.execute(select(Job.id, Job.retried_from)).all():
                    if parent in self.ids:
                        self._track(jid)

        @invariant()
        def transitions_are_legal(self) -> None:
            for job_id, old, new in new_transitions():
                assert (old, new) in LEGAL, f"job {job_id}: illegal transition {old} -> {new}"

        @invariant()
        def rows_are_consistent(self) -> None:
            with services.db.session() as s:  # this run's jobs (the store is shared across runs)
                for j in s.scalars(select(Job).where(Job.id.in_(self.ids))).all():
                    assert j.status in ("queued", "running", *TERMINAL)
                    assert (j.finished_at is not None) == (j.status in TERMINAL), (j.id, j.status)
                    assert j.status != "completed" or j.progress == 1.0
                    assert j.status != "running" or j.worker_id
                autos = [j.retried_from for j in s.scalars(select(Job).where(Job.auto_retry.is_(True),
                                                                             Job.retried_from.in_(self.ids))).all()]
                assert len(autos) == len(set(autos)), "a job got more than one automatic retry"

    # no shrinking: thread timing makes replays inexact, and each step costs real SQLite commits
    # (a failure prints the whole step list, which is what a reader needs)
    run_state_machine_as_test(Jobs, settings=settings(max_examples=40, stateful_step_count=12, deadline=None,
                                                      phases=[Phase.explicit, Phase.reuse, Phase.generate],
                                                      suppress_health_check=list(HealthCheck)))


def test_recovery_does_not_retry_a_job_the_user_canceled(services) -> None:  # noqa: ANN001
    """Cancel a running job, then its worker dies before it sees the flag: recovery must not
    start it again (the runner, stopping, records such a job as canceled, not interrupted)."""
    from sqlalchemy import select

    from storage.models import Job
    from studio.runner import JobRunner

    job = services.jobs.submit("test-steps", {"steps": 2, "step_s": 0, "images": 0}, enqueue=False)
    dead = JobRunner(services.settings, services.jobs, services.assets, services.models, DEAD, services.library)
    assert dead._claim(job.id)
    assert services.jobs.cancel(job.id).status == "running"  # flagged; the worker would stop at its next step
    out = services.jobs.recover(alive=lambda wid: wid != DEAD, stale_after_s=3600)
    assert out["interrupted"] == [] and services.jobs.get(job.id).status == "canceled"
    with services.db.session() as s:
        assert s.scalars(select(Job).where(Job.retried_from == job.id)).all() == []
    assert out["retried"] == []
