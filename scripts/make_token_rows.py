#!/usr/bin/env python3
"""Writes pre-tokenized training rows (`{"input_ids": [...]}` per line) of random token ids.

The baseline kit (../shared/baseline/bench_qlora.py) trains on random ids of its dummy
tokenizer's 128000 plain words; these rows give ferrotune the same kind of data through its
`format = "tokens"` path. ferrotune appends EOS to each row, so rows of 2047 ids become
2048-token sequences.

usage: make_token_rows.py OUT.jsonl [--rows 80] [--len 2047] [--vocab 128000] [--seed 1]
"""
import argparse
import json
import random

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("out")
p.add_argument("--rows", type=int, default=80)
p.add_argument("--len", type=int, default=2047)
p.add_argument("--vocab", type=int, default=128000)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()
rng = random.Random(a.seed)
with open(a.out + ".tmp", "w") as f:
    for _ in range(a.rows):
        f.write(json.dumps({"input_ids": [rng.randrange(a.vocab) for _ in range(a.len)]}) + "\n")
import os

os.replace(a.out + ".tmp", a.out)
