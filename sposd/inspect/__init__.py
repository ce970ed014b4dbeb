"""`sposd inspect`: the distillation signal, token by token.

record.py    during training (train.inspect.every): a tap on the learner's student pass reads a few distilled rows'
             student and teacher logits (no extra forward) -> run_dir/inspect/step_N.jsonl.gz
signal.py    the per-position values, with the loss's own op (DistillTerm.per_token)
records.py   reading a recording, the per-step summary
arith.py     where a toy-task completion first goes wrong
page.py      one self-contained HTML page per step
plot.py      a PNG across steps (divergence by relative position, clipped fraction)
"""
