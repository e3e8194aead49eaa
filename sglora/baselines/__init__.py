"""Baselines of the paper: the merging baselines (Model Soups, AdapterSoup, Top-K LoRA
Weighted), MoLE, P-diff and COND P-Diff. Every one of them works on the same LoRA
factor vectors as SG-LoRA, so the comparison is like for like."""
