"""gristmill: one recipe from raw data to a curated, audited dataset and a QLoRA adapter."""

import os

# Freed memory back to the system soon, not kept for reuse: polars' jemalloc holds freed pages ~10 s and pyarrow's
# mimalloc pool holds them too, so each step of a streamed run would peak on what earlier steps freed. Read when
# polars and pyarrow load, so set here, before either is imported; a value already set wins. bench/scale.py at 100k
# rows (bench/RESULTS.md, Scale): run peak 636/633 MB with the defaults, 528/544 with a 1 s decay; the system pool
# alone saved nothing. 250 ms, not 1 s: the next step starts at once, before a 1 s decay has returned the pages
# (1M rows: steps started 20-90 MB lower, run peak 571 vs 586 MB; 100k: 487/469 vs 538/497 MB, CPU 19.6/19.4 vs
# 19.9/19.2 s); 0 cost 8% more CPU at 100k.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:250,muzzy_decay_ms:0")
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"
