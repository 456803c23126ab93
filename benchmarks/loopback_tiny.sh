#!/usr/bin/env bash
# The tiny preset against an agent served on loopback (the real deployment path), cold caches:
# the supernet stage's time with a remote-style agent (issue 15). Usage: benchmarks/loopback_tiny.sh [OUT_DIR]
set -u
OUT=${1:-/tmp/loopback}; mkdir -p "$OUT"; cd "$OUT"
rm -rf run lat.sqlite cache
autonad-agent serve --host 127.0.0.1 --port 50077 --insecure-no-auth > agent.log 2>&1 &
AGENT=$!
sleep 6
cat > targets.toml <<'T'
[targets.loop]
agents = ["127.0.0.1:50077"]
backend = "onnxruntime"
T
start=$(date +%s)
AUTONAD_EXPORT_CACHE="$OUT/cache" autonad-edge search --preset tiny --target loop --targets targets.toml --out run --table lat.sqlite --quiet > out.txt 2> err.txt
echo "rc $? wall $(( $(date +%s) - start )) s" >> out.txt
kill $AGENT
python -c "
import json; s=json.load(open('run/stages.json'))
for k,v in s.items(): print(k, round(v['wall_s'],1))
sm=json.load(open('run/supernet/summary.json')); print('supernet epochs time', round(sm['time'],1))
"
