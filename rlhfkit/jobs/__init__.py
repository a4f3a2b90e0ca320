"""Data-making verbs: compare, judge, cai, sample / eval, best-of-n, score, label. Each has a typed
config at the top and `run(cfg, out, resume=False) -> Path`, like the training recipes."""
