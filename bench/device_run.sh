#!/usr/bin/env bash
# The --real comparison on a GPU machine, in under 8 minutes, everything written into "$OUT"
# (six files, flat). Run from the repository root with kvscope's dependencies and the bench
# extra importable (the device tool's prefix installs the wheels of ./.whl into /tmp/site and
# puts it and ./exporters on PYTHONPATH).
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
} >"$OUT/machine.txt" 2>&1

# 1. kvscope, nvitop-exporter, the naive exporter and the floor on this machine's GPUs, then
#    the quick growth sweeps on the simulated node (about 5 minutes on 16 CPUs).
timeout 390 "$PY" bench/scrape_bench.py --real --out-dir "$OUT" --warmup 6 --idle 30 \
  --steady 10 --rounds 2 --quick --sweep-seconds 10 2>&1 | tee "$log"
echo "scrape_bench exit: $?" | tee -a "$log"

# 2. The engine cycle: 16 targets x 100 KB (about 1 minute).
timeout 90 "$PY" bench/engines_bench.py --targets 16 --cycles 40 --seconds 6 \
  2>&1 | tee "$OUT/engines.txt"
echo "engines_bench exit: $?" | tee -a "$log"
ls -la "$OUT" | tee -a "$log"
