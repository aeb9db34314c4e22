"""make demo, end to end on a tiny world: every step runs for real, the report holds measured numbers."""

import json

import pytest

from benchmarks.demo import STEPS, DemoConfig, run_demo
from runtime.errors import ConfigError
from runtime.optional import available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (available("torch") and available("onnx") and available("matplotlib")),
        reason="needs torch, onnx and matplotlib (pip install 'netvlad-kit[train,export,plots]')",
    ),
]


def test_demo_runs_every_step_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "demo"
    report = run_demo(out, DemoConfig.preset("tiny", threads=1))
    steps = json.loads((out / "demo.json").read_text())["steps"]
    assert list(steps) == list(STEPS)
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(STEPS, "done")

    parity = json.loads((out / "bench" / "parity.json").read_text())
    by_label = {b["label"]: b for b in parity["backends"]}
    assert set(by_label) >= {
        "PyTorch FP32 (reference)",
        "ORT CPU FP32 (model.onnx)",
        "ORT CPU INT8 QDQ (model.int8.onnx)",
        "ORT CPU INT8 QDQ (model.int8-cpu.onnx)",
    }
    assert by_label["ORT CPU FP32 (model.onnx)"]["parity"]["cosine_min"] >= 0.9999
    loc = steps["localize"]
    from benchmarks.demo_report import frame_outcomes, localisation_errors
    from runtime import open_dataset

    dataset = open_dataset(out / "data" / "synth")
    text = report.read_text()
    for mode in ("raw", "temporal"):
        recall = loc[mode]["recall"]["recall"]
        assert loc[mode]["summary"]["frames"] == loc[mode]["recall"]["queries"] > 0
        outcome = frame_outcomes(out / "localize" / f"{mode}.jsonl", dataset)
        # the report's R@1 is the share of frames whose best match lies within 25 m of the query
        assert recall["1"] == pytest.approx(outcome["hit"].mean())
        assert loc[mode]["summary"]["unknown"] == int(outcome["unknown"].sum())
        _, _, err = localisation_errors(out / "localize" / f"{mode}.jsonl", dataset.q_utm)
        row = next(
            line
            for line in text.splitlines()
            if line.startswith(f"| {'frame by frame' if mode == 'raw' else 'sequence matching'} |")
        )
        # the table's position column is the number the route plot's legend shows
        assert f"| {100 * (err <= 25).mean():.1f} |" in row
        trust = loc[mode]["recall"]["trust"]  # the tiny world's 48 unmapped places are scored too
        assert trust["unmapped_frames"] == 48
        assert trust["frames"] == trust["unmapped_frames"] + loc[mode]["recall"]["queries"]
        assert 0.0 <= trust["auc_pr"] <= 1.0 and len(loc[mode]["recall"]["pr_curve"]["precision"]) > 0

    for heading in (
        "## Localising the query video",
        "## Recall per backend and parity against PyTorch",
        "## Latency per stage",
        "NetVLAD layer, batch 1: loop-free",
        "![route](route.png)",
        "### Recall per query condition",
        "| condition | queries | R@1 % frame by frame | R@1 % sequence matching |",
        "### Failures (frame by frame)",
        "![failures](failures.png)",
        "were flagged as an unknown place",
        "faiss runs a batch of queries on its OpenMP threads",
        "## Can the answer be trusted?",
        "![precision-recall](precision_recall.png)",
    ):
        assert heading in text
    assert (out / "route.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "failures.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "precision_recall.png").read_bytes()[:4] == b"\x89PNG"

    # a second run finds every artifact and redoes nothing but the localisation recall and the report
    run_demo(out, DemoConfig.preset("tiny", threads=1))
    again = json.loads((out / "demo.json").read_text())["steps"]
    for name in ("synth", "train", "export", "map", "parity", "latency"):
        assert again[name]["status"] == "skipped (artifact exists)", name
    # a map an older netvlad-kit built (another map format) is rebuilt, not reused and then refused
    meta = json.loads((out / "map" / "map.json").read_text())
    (out / "map" / "map.json").write_text(json.dumps({**meta, "format_version": 3}))
    run_demo(out, DemoConfig.preset("tiny", threads=1))
    assert json.loads((out / "demo.json").read_text())["steps"]["map"]["status"] == "done"
    assert json.loads((out / "map" / "map.json").read_text())["format_version"] == meta["format_version"]
    # a plain `make demo` on the tiny folder: refused, not reused and labelled "small"
    with pytest.raises(ConfigError) as info:
        run_demo(out, DemoConfig.preset("default", threads=1))
    message = str(info.value)
    assert message.startswith(
        f"demo folder '{out}' was made with other arguments (preset 'tiny'; now 'default'; "
    )
    assert message.endswith(f"Rerun with the same arguments to resume it, or start over with: rm -rf {out}")


def test_demo_reports_a_missing_upstream_artifact_instead_of_faking_it(tmp_path):
    out = tmp_path / "demo"
    (out / "data" / "synth").mkdir(parents=True)  # no database.csv: the synth step must run...
    cfg = DemoConfig.preset("tiny", threads=1, synth_overrides={"route_length_m": -5.0})
    run_demo(out, cfg)
    steps = json.loads((out / "demo.json").read_text())["steps"]
    assert steps["synth"]["status"] == "failed" and "route_length_m" in steps["synth"]["reason"]
    assert steps["train"]["status"] == "unavailable"
    assert "needs '" in steps["train"]["reason"] and "from the synth step" in steps["train"]["reason"]
    assert steps["parity"]["status"] == "unavailable" and steps["report"]["status"] == "done"
    assert "| train | unavailable |" in (out / "report.md").read_text()


def test_demo_config_errors():
    with pytest.raises(ConfigError, match="unknown demo preset 'huge'; known presets: default, tiny"):
        DemoConfig.preset("huge")
