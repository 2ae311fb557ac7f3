#!/usr/bin/env python3
"""Calibration aid for the bf16 profile: HF's own GraniteForCausalLM in bf16 against the same fp32 goldens, with the same
metric functions and the bf16 profile (teacher-forced: one forward over prompt + reference tokens).

    python scripts/hf_bf16_vs_goldens.py CHECKPOINT_DIR GOLDENS_DIR
"""
import sys, torch
from transformers import GraniteForCausalLM
from granite_bench.reference.goldens import load_goldens
from granite_bench.parity.metrics import position_metrics, verdict
from granite_bench.parity.tolerances import profile_for
model_dir, golden_dir = sys.argv[1], sys.argv[2]
_, goldens = load_goldens(golden_dir)
model = GraniteForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="eager").eval()
profile = profile_for("bfloat16")
for i, g in enumerate(goldens):
    with torch.no_grad():
        logits = model(torch.tensor([g.prompt + g.tokens])).logits[0].float()
    m = position_metrics(g.logits, logits, profile)
    v = verdict(m)
    print(f"prompt {i} len {len(g.prompt)}: HF bf16 vs fp32 goldens worst top50 err {float(m['err_top50'].max()):.3e} "
          f"failed positions {v.n_failed}/{v.n_positions} max|d| {float(m['max_abs_err'].max()):.3e}", flush=True)
