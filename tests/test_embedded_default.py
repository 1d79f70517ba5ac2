"""With no model configured the Studio generates with the shipped embedded world model."""
from __future__ import annotations

from PIL import Image

from studio.wiring import build_runner


def test_default_model_is_the_embedded_one(services) -> None:  # noqa: ANN001
    spec = services.models.resolve(None)
    assert spec.kind == "embedded" and (spec.path / "model_index.json").is_file()
    job = services.jobs.submit("t2i", {"prompt": "a large red solid star in the center on a navy background",
                                       "steps": 4, "seed": 7, "guidance_scale": 4, "preview_every": 2},
                               enqueue=False)
    assert job.params["model"] == "embedded"
    runner = build_runner(services)
    assert runner.execute(job.id) == "completed", services.jobs.get(job.id).error
    (asset,) = services.jobs.get(job.id).assets
    with Image.open(services.assets.path(asset.id)) as im:
        assert im.size == (64, 64)
        assert "Model: embedded-world" in im.text["parameters"]


def test_embedded_model_ships_a_clockwork_adaptor(services) -> None:  # noqa: ANN001
    job = services.jobs.submit("t2i", {"prompt": "a small blue dotted heart on the left on a white background",
                                       "steps": 4, "seed": 1, "guidance_scale": 4, "clockwork": "adaptor",
                                       "preview_every": 0}, enqueue=False)
    runner = build_runner(services)
    assert runner.execute(job.id) == "completed", services.jobs.get(job.id).error
    done = services.jobs.get(job.id)
    assert done.result_meta["clockwork_cheap_steps"] == 2
    assert "Clockwork: adaptor/2" in done.assets[0].meta["parameters"]


def test_default_jobs_run_the_shipped_quality_holding_clock(services) -> None:  # noqa: ANN001
    """The shipped profile matches the shipped weights, so a job with every default (20 steps,
    DPM++ 2M, clockwork auto) runs the measured quality-holding settings of the depth-0 adaptor:
    period 3 for one object, period 2 for two objects drawn region by region."""
    runner = build_runner(services)
    for prompt, cheap, regional in (("a red star on a blue background", 13, 0),
                                    ("a red star left of a blue ring", 10, 1)):
        job = services.jobs.submit("t2i", {"prompt": prompt, "seed": 3, "preview_every": 0}, enqueue=False)
        assert runner.execute(job.id) == "completed", services.jobs.get(job.id).error
        meta = services.jobs.get(job.id).result_meta
        assert meta["clockwork"] == {"mode": "adaptor", "period": 3, "depth": 0, "warmup": 0}
        assert meta["clockwork_regional"] == {"mode": "adaptor", "period": 2, "depth": 0, "warmup": 0}
        assert meta["clockwork_cheap_steps"] == cheap and meta["clockwork_regional_images"] == regional
        assert "clockwork_auto_off" not in meta
