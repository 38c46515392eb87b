#!/usr/bin/env bash
# The --real comparison on a GPU machine in under 8 minutes, everything written into "$OUT"
# (at most eight files, flat). Run from the repository root with kvscope's dependencies and
# the bench extra importable (the device tool's prefix installs the wheels of ./.whl into
# /tmp/site and puts it and ./exporters on PYTHONPATH).
set -u -o pipefail
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$PWD/exporters"
PY=${PYTHON:-python3}
log="$OUT/log.txt"

{
  date -u
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  nproc; free -m | head -2
  "$PY" -c 'import sys, pynvml, aiohttp, pydantic, prometheus_client, nvitop
print(sys.version); print("nvidia-ml-py", pynvml.__version__ if hasattr(pynvml, "__version__") else "?",
      "aiohttp", aiohttp.__version__, "pydantic", pydantic.VERSION,
      "prometheus_client", getattr(prometheus_client, "__version__", "?"), "nvitop", nvitop.__version__)'
  echo; echo "RSS by import (bench/import_memory.py --nvml):"
  "$PY" bench/import_memory.py --nvml
} >"$OUT/machine.txt" 2>&1

# 1. kvscope, nvitop-exporter, the naive exporter and the floor on this machine's GPUs, then
#    the quick growth sweeps on the simulated node (about 5 minutes on 16 CPUs).
timeout 360 "$PY" bench/scrape_bench.py --real --out-dir "$OUT" --warmup 5 --idle 30 \
  --steady 10 --rounds 2 --quick --sweep-seconds 8 2>&1 | tee "$log"
echo "scrape_bench exit: $?" | tee -a "$log"

# 2. The engine cycle: 16 targets x 100 KB (about 1 minute).
timeout 60 "$PY" bench/engines_bench.py --targets 16 --cycles 40 --seconds 6 \
  2>&1 | tee "$OUT/engines.txt"
echo "engines_bench exit: $?" | tee -a "$log"

# 3. Where kvscope's idle CPU goes on real NVML: py-spy (bench extra) on `kvscope serve`,
#    samples of the thread holding the interpreter lock, 30 s, collapsed stacks.
SPY=$(command -v py-spy || echo /tmp/site/bin/py-spy)
if [ -x "$SPY" ]; then
  port=19447
  "$PY" -m kvscope.cli serve --web.listen-address "127.0.0.1:$port" --log.level error &
  agent=$!
  sleep 12
  timeout 45 "$SPY" record --gil --nonblocking -r 200 -d 30 -f raw -p "$agent" \
    -o "$OUT/pyspy-idle.txt" >>"$log" 2>&1
  kill "$agent"; wait "$agent" 2>/dev/null
else
  echo "py-spy not found: no idle profile" | tee -a "$log"
fi
ls -la "$OUT" | tee -a "$log"
