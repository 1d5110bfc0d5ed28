"""The scripts behind docs/RESULTS.md (benchmarks/quality.py and the studies that read
its rows: fidelity_confusion, prompt_sensitivity, decomposition_settings): their reports,
resumable row store, fingerprints and measures, on fakes and the tiny model."""

import numpy as np
import pytest

from dreamlayer_jax.errors import DreamLayerError
from dreamlayer_jax.eval.evaluate import AblationRow


def _quality_module(name: str = "quality"):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_exits_2_when_the_model_is_missing(tmp_path, capsys):
    module = _quality_module()
    assert module.main(["--model", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "RESULTS.md")]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert not (tmp_path / "RESULTS.md").exists()
    assert module.main(["--notes", str(tmp_path / "missing.md"), "--out",
                        str(tmp_path / "RESULTS.md")]) == 2
    assert "--notes" in capsys.readouterr().err
    assert not (tmp_path / "RESULTS.md").exists()


def test_quality_report_places_the_notes_and_resume_refuses_other_arguments(tmp_path):
    module = _quality_module()
    notes = tmp_path / "reading.md"
    notes.write_text("## Reading it\n\nColour is short because ...\n")
    out = tmp_path / "RESULTS.md"
    args = module.parse_args(["--scenes", "200", "--notes", str(notes), "--out", str(out)])
    args.argv = ["--scenes", "200"]
    module.write_report(out, args, [["## `builtin:box`", "box rows"]], 60.0, ["builtin:paper"])
    text = out.read_text()
    assert "`python benchmarks/quality.py --scenes 200`" in text and "1.0 min." in text
    args.kept_rows = 3
    module.write_report(out, args, [["## `builtin:box`", "box rows"]], 60.0, [])
    assert "1.0 min (this run; 3 rows were measured by an earlier run" in out.read_text()
    args.kept_rows = 0
    module.write_report(out, args, [["## `builtin:box`", "box rows"]], 60.0, ["builtin:paper"])
    text = out.read_text()
    assert (text.index("# Quality results") < text.index("Colour is short because")
            < text.index("**Still running:** `builtin:paper`") < text.index("box rows"))

    rows = tmp_path / "RESULTS.rows.json"
    resume = module.parse_args(["--steps", "10", "--resume"])
    store = module.RowStore(rows, resume, {"builtin:box": "aaaa", "builtin:paper": "bbbb"})
    store.add("builtin:box", AblationRow("all", 200, 2, {"colour": (0.5, 0.1)}, {}))
    store.add("builtin:paper", AblationRow("all", 200, 2, {"colour": (0.4, 0.1)}, {}))
    again = module.RowStore(rows, resume, {"builtin:box": "aaaa", "builtin:paper": "bbbb"})
    assert again.done("builtin:box")["all"].measures == {"colour": (0.5, 0.1)}
    assert again.stale == []
    # the box model's weights changed: its rows are measured again, the paper's kept
    changed = module.RowStore(rows, resume, {"builtin:box": "cccc", "builtin:paper": "bbbb"})
    assert changed.stale == ["builtin:box"] and changed.done("builtin:box") == {}
    assert changed.done("builtin:paper")["all"].measures == {"colour": (0.4, 0.1)}
    # the sampling code changed, which no fingerprint sees: --remeasure names the model
    redo = module.RowStore(rows, module.parse_args(
        ["--steps", "10", "--resume", "--model", "builtin:paper", "--remeasure",
         "builtin:paper"]), {"builtin:box": "aaaa", "builtin:paper": "bbbb"})
    assert redo.stale == ["builtin:paper"] and redo.done("builtin:paper") == {}
    assert redo.done("builtin:box")["all"].measures == {"colour": (0.5, 0.1)}
    with pytest.raises(SystemExit):
        module.parse_args(["--remeasure", "builtin:paper"])  # not a --model
    with pytest.raises(DreamLayerError, match="--resume"):
        module.RowStore(rows, module.parse_args(["--steps", "20", "--resume"]))


def test_fidelity_confusion_counts_what_is_read_and_how_faint_the_layers_are():
    module = _quality_module("fidelity_confusion")
    table = module.confusion(["star", "star", "ring"], ["circle", "star", None],
                             ("star", "ring", "circle"))
    lines = table.splitlines()
    assert lines[2] == "| star | 1 | 0 | 1 | 0 | 0.50 |"
    assert lines[3] == "| ring | 0 | 0 | 0 | 1 | 0.00 |"
    assert lines[5] == "| **all (read)** | 1 | 0 | 1 | 1 | 0.33 |"
    layer = np.zeros((8, 8, 4), np.uint8)
    layer[0:4, 0:4, 3] = 255  # the box's upper-left quarter, opaque
    layer[6, 6, 3] = 255  # one pixel outside the box
    stats = module.alpha_stats([layer], [(0.0, 0.0, 0.5, 0.5)])
    assert stats["peak alpha (median)"] == 1.0 and stats["mean alpha in box"] == 1.0
    assert stats["alpha mass outside box"] == pytest.approx(1 / 17)
    # extent rows 0-6 and columns 0-6 against the box's 0-3: 3 px past on two sides
    assert stats["extent past box (px)"] == 6.0 and stats["extent short of box (px)"] == 0.0


def test_pipeline_fingerprint_follows_the_weights_and_the_settings():
    import dataclasses

    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    module = _quality_module()
    box = DreamLayerPipeline.from_pretrained("builtin:box")
    first = module.pipeline_fingerprint(box)
    assert first == module.pipeline_fingerprint(DreamLayerPipeline.from_pretrained("builtin:box"))
    assert first != module.pipeline_fingerprint(DreamLayerPipeline.from_pretrained("builtin:paper"))
    floor = dataclasses.replace(box.config, guidance_min_timestep=0.0)
    assert module.pipeline_fingerprint(
        DreamLayerPipeline(box.unet, box.conditioner, box.codec, box.scheduler)) == first
    box.unet.config = floor  # the sampler reads the floor from the model's config
    assert module.pipeline_fingerprint(box) != first


def test_prompt_sensitivity_swaps_one_word_and_measures_changes_over_the_box():
    from dreamlayer_jax.pipeline.scene import Layer, Scene

    module = _quality_module("prompt_sensitivity")
    attrs = {"size": "small", "colour": "red", "shape": "star"}
    request = Scene("a small red star in front of a blue floor", "a blue floor",
                    (Layer("a small red star", (0.1, 0.2, 0.5, 0.6)),))
    ring = module.variant(request, attrs, "a blue floor", shape="ring")
    assert ring.layers == (Layer("a small red ring", (0.1, 0.2, 0.5, 0.6)),)
    assert ring.prompt == "a small red ring in front of a blue floor"
    assert module.variant(request, attrs, "a blue floor", colour="orange").layers[0].prompt \
        == "a small orange star"
    assert module.pairwise([np.array(0.0), np.array(1.0), np.array(3.0)],
                           lambda a, b: float(abs(a - b))) == pytest.approx(2.0)  # (1+3+2)/3
    coverage = np.zeros((4, 4))
    coverage[:2, :2] = 1.0
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    b[0, 0], b[3, 3] = 1.0, 1.0  # one pixel changed inside the box, one outside
    assert module.alpha_distance(coverage)(a, b) == pytest.approx(0.25)
    layer = np.zeros((2, 2, 4), np.uint8)
    layer[0, 0] = (255, 0, 0, 255)
    layer[1, 1] = (0, 0, 255, 0)  # invisible: not counted
    np.testing.assert_allclose(module.body_colour(layer), [1.0, 0.0, 0.0])
    shapes = module.truth_shapes((0.25, 0.25, 0.75, 0.75), "large", 32)
    assert len(shapes) == 8 and all(s.max() == 1.0 for s in shapes)
    assert min(np.abs(x - y).mean() for i, x in enumerate(shapes) for y in shapes[i + 1:]) > 0


def test_decomposition_settings_measure_each_setting_on_true_composites(tiny_pipe):
    from dreamlayer_jax.eval.scenes import held_out_scenes

    module = _quality_module("decomposition_settings")
    pairs = held_out_scenes(2, 7, tiny_pipe.config.resolution, max_foregrounds=1)
    kept, regenerated = (module.measure(tiny_pipe, pairs, {"keep_background": keep, "eta": 1.0},
                                        steps=2, guidance=5.0, seed=0)
                         for keep in (True, False))
    assert set(kept) == {"background_psnr", "alpha_iou"}
    assert all(np.isfinite(v).all() for v in (*kept.values(), *regenerated.values()))
    # a random model's background: the picture kept outside the boxes is closer to the truth
    assert kept["background_psnr"][0] > regenerated["background_psnr"][0]


def test_published_report_is_the_measurement_of_the_shipped_models():
    """docs/RESULTS.md shows exactly the rows of docs/RESULTS.rows.json, and those were
    measured on the weights and settings the package ships (their fingerprints)."""
    import json
    from pathlib import Path

    from dreamlayer_jax.eval.evaluate import format_table
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    module = _quality_module()
    docs = Path(__file__).resolve().parent.parent / "docs"
    store = json.loads((docs / "RESULTS.rows.json").read_text())
    report = (docs / "RESULTS.md").read_text()
    assert set(store["models"]) == {"builtin:box", "builtin:paper"}
    for model, rows in store["models"].items():
        section = report.split(f"## `{model}`\n", 1)[1].split("\n## `", 1)[0]
        table = format_table([module.stored_row(r) for r in rows.values()])
        for line in table.splitlines()[2:]:
            assert line in section, f"{model}: {line.split(' |')[0]} not as stored"
        shipped = module.pipeline_fingerprint(DreamLayerPipeline.from_pretrained(model))
        assert store["fingerprints"][model] == shipped, f"{model} changed since measured"
