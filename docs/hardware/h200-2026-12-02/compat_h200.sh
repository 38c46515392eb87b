set -u
export PYTHONPATH=/tmp/site:$PWD/exporters
for c in 4.8 4.8.3 4.9 4.10; do python3 -m kvscope.cli collect --dcgm.compat $c --no-collector.engines > $OUT/collect-$c.prom 2>$OUT/collect-$c.err; echo "compat $c rc=$?"; done
nvidia-smi --query-gpu=clocks.sm,clocks.mem,memory.used,memory.total,memory.reserved,total_energy_consumption,utilization.gpu,temperature.gpu,power.draw.instant --format=csv,nounits > $OUT/smi.csv
cat $OUT/smi.csv
for c in 4.8 4.10; do echo "== $c"; grep -E '^DCGM_FI_DEV_(SM_CLOCK|MEM_CLOCK|MEMORY_CLOCK|FB_USED|FB_TOTAL|FB_CAPACITY|GPU_UTIL|TOTAL_ENERGY|GPU_ENERGY|GPU_TEMP|POWER_USAGE|BOARD_POWER)' $OUT/collect-$c.prom | sed -E 's/\{.*\}//' ; done
grep -c '^DCGM' $OUT/collect-4.8.prom $OUT/collect-4.10.prom; grep -o 'hostname="[^"]*"\|Hostname="[^"]*"' $OUT/collect-4.8.prom $OUT/collect-4.8.3.prom | sort -u | head
