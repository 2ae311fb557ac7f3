"""`granite-bench perf`: latency and throughput sweeps over dtype × TP × compile × batch × bucket grids.

grid.py       what a point is, suite + command line -> points, point keys, shards
timing.py     perf_counter_ns with device sync, the timed generation loop, threads, peak memory
hf_baseline.py HF Transformers generate (dynamic and static cache) on the same files, timed per token
roofline.py   measured ceilings (plain read, large matrix-vector, matmul) and bytes / FLOPs per step
stats.py      n/min/p50/p90/p99/mean/std
sweep.py      one point: implementation and baselines interleaved round by round -> sample and summary rows
command.py    the command: skip stored points, run the rest one at a time, store each at once, print the summary
"""
