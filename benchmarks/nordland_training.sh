#!/usr/bin/env bash
# Training proven on real drives (training/README.md, "Training on your own drives"): train NetVLAD on
# Nordland (both seasons, both ways), then measure the held-out test stretch it never saw, per frame and
# with sequence matching, against the untrained model (k-means init), the synthetic world's model, raw
# pixels and SeqSLAM (the shared anchor, run as it is) on the same frames.
#
#   bash benchmarks/nordland_training.sh            # from the project root, after `make install`
#
# Steps whose output exists are skipped (rerun resumes). Environment: RUN (the Nordland training folder,
# default runs/nordland), SYNTH (a synthetic-world training folder, default runs/synth: trained here with
# the default recipe when missing), OUT (default runs/nordland-eval), THREADS (default 2).
# Writes OUT/report.md and the JSON files it is made from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
RUN=${RUN:-runs/nordland}
SYNTH=${SYNTH:-runs/synth}
OUT=${OUT:-runs/nordland-eval}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
step() { echo "== $* ($(date +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }

[ -f "$RUN/model.pt" ] || { step "train on Nordland"; "$PY" -m training.train --dataset nordland --out "$RUN" --threads "$THREADS"; }
[ -f "$SYNTH/model.pt" ] || { step "train on the synthetic world"; "$PY" -m training.train --out "$SYNTH" --threads "$THREADS"; }

step "the held-out test stretch as a dataset folder"
"$PY" -m training.split --dataset nordland --split test --out "$OUT/test-split"

step "per frame: every model on the test stretch (one backbone pass per input size)"
[ -f "$OUT/compare.json" ] || "$PY" -m training.compare --dataset "$OUT/test-split" --json "$OUT/compare.json" \
    --threads "$THREADS" trained="$RUN/model.pt" untrained="$RUN/init.pt" synthetic="$SYNTH/model.pt"

step "the whole route, each frame labelled with its split (condition column)"
"$PY" -m training.split --dataset nordland --split all --out "$OUT/whole-route"

for name in trained untrained synthetic; do
    case $name in trained) ckpt=$RUN/model.pt ;; untrained) ckpt=$RUN/init.pt ;; synthetic) ckpt=$SYNTH/model.pt ;; esac
    dir=$OUT/$name
    if [ ! -f "$dir/model.onnx" ]; then
        step "export $name"
        "$BIN/netvlad-export" "$ckpt" --out "$dir" --threads "$THREADS"
    fi
    if [ ! -f "$dir/map/map.json" ]; then
        step "map of the test stretch with $name"
        "$BIN/netvlad-map" build --model "$dir/model.onnx" --dataset "$OUT/test-split" --out "$dir/map"
    fi
    anchor=--no-anchor
    [ $name = trained ] && anchor=--anchor  # SeqSLAM once: it does not depend on the model
    if [ ! -f "$dir/bench/sequence.json" ]; then
        step "sequence matching with $name"
        "$BIN/netvlad-bench" sequence --model "$dir/model.onnx" --map "$dir/map" --dataset "$OUT/test-split" \
            --out "$dir/bench" --frames 10,20 --cost-sizes 1000 $anchor --threads "$THREADS"
    fi
    # deployed as a robot would be: a map of the whole route, the winter drive in order, scored per split
    if [ ! -f "$dir/route-map/map.json" ]; then
        step "map of the whole route with $name"
        "$BIN/netvlad-map" build --model "$dir/model.onnx" --dataset "$OUT/whole-route" --out "$dir/route-map"
    fi
    if [ ! -f "$dir/route-bench/sequence.json" ]; then
        step "sequence matching along the whole route with $name"
        "$BIN/netvlad-bench" sequence --model "$dir/model.onnx" --map "$dir/route-map" --dataset "$OUT/whole-route" \
            --out "$dir/route-bench" --frames 10,20 --cost-sizes 1000 $anchor --threads "$THREADS"
    fi
done

step "synthetic world: the Nordland model against the synthetic model on the synthetic test split"
world=$(ls -d "$SYNTH"/cache/synth-small-seed0 2>/dev/null || true)
if [ -n "$world" ] && [ ! -f "$OUT/synthetic-world.json" ]; then
    "$PY" -m training.split --dataset "$world" --split test --out "$OUT/synth-test-split"
    "$PY" -m training.compare --dataset "$OUT/synth-test-split" --json "$OUT/synthetic-world.json" \
        --threads "$THREADS" nordland="$RUN/model.pt" synthetic="$SYNTH/model.pt"
fi

step "report"
"$PY" - "$OUT" "$RUN" <<'EOF'
import json, sys
from pathlib import Path

out, run = Path(sys.argv[1]), Path(sys.argv[2])
compare = json.loads((out / "compare.json").read_text())
rows = ["| model | map | R@1 (training.evaluate) | R@1 per frame (runtime) | sequence 10 frames | sequence 20 frames |",
        "|---|---|---|---|---|---|"]
nan = float("nan")
for where, folder, pick in (("test stretch (874 places)", "bench", lambda r: r["R@1"]),
                            ("whole route (3,576), test frames scored", "route-bench",
                             lambda r: r.get("by_condition", {}).get("test", nan))):
    anchor = {}
    for name in ("trained", "untrained", "synthetic"):
        bench = json.loads((out / name / folder / "sequence.json").read_text())
        runs = bench["runs"]
        anchor = bench.get("seqslam", anchor) if name == "trained" else anchor
        single = pick(runs["single frame"])
        r1 = f"{compare[name]['recall']['1']:.3f}" if folder == "bench" else ""
        rows.append(
            f"| {name} ({compare[name]['resolution']}) | {where} | {r1} | {single:.3f} | "
            f"{pick(runs['sequence 10 frames']):.3f} | {pick(runs['sequence 20 frames']):.3f} |"
        )
    seq = anchor.get("R@1", {}) if folder == "bench" else {
        k: v.get("test", nan) for k, v in anchor.get("by_condition", {}).items()}
    rows.append(f"| raw pixels (SAD, 64x32) | {where} | | {seq.get('raw pixels', nan):.3f} | | |")
    rows.append(f"| SeqSLAM (speed unknown, 0.25-4) | {where} | | | {seq.get('10', nan):.3f} | {seq.get('20', nan):.3f} |")
summary = json.loads((run / "summary.json").read_text())
lines = [
    "# Training on real drives: Nordland, the held-out test stretch", "",
    f"Test stretch: {compare['trained']['num_db']} summer places, {compare['trained']['num_queries']} winter "
    "queries (the route split of training.train; none within 25 m of a training place), +-1 frame.", "",
    *rows, "",
    "R@1 (training.evaluate): PyTorch, the model as trained. Per frame (runtime): `netvlad-run`'s default, "
    "descriptors centred on the stream (adaptation). Sequences: `netvlad-run --temporal`, the speed not told. "
    "The whole-route rows are a map of every summer frame and the winter drive in order, scored on the "
    "test-stretch frames only (neither SeqSLAM nor the kit sees the splits).", "",
    f"Training: {summary['steps']} steps, {summary['train_seconds']} s, {summary['train_images_per_s']} images/s "
    f"in steps, descriptor-cache refresh {summary.get('refresh_images_per_s')} images/s, "
    f"{summary.get('threads')} threads on {summary.get('device')}.",
]
world = out / "synthetic-world.json"
if world.is_file():
    w = json.loads(world.read_text())
    lines += ["", "Synthetic world (its test split), R@1: " + ", ".join(
        f"{k} model {v['recall']['1']:.3f} ({v['resolution']})" for k, v in w.items())]
(out / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
