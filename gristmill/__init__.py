"""gristmill: one recipe from raw data to a curated, audited dataset and a QLoRA adapter."""

import os

# Freed memory back to the system soon, not kept for reuse: polars' jemalloc holds freed pages ~10 s and pyarrow's
# mimalloc pool holds them too, so each step of a streamed run would peak on what earlier steps freed. Read when
# polars and pyarrow load, so set here, before either is imported; a value already set wins. bench/scale.py at 100k
# rows (bench/RESULTS.md, Scale): run peak 636/633 MB with the defaults, 528/544 with these, same CPU seconds
# (20.5 vs 20.4); dirty_decay_ms:0 saved ~30 MB more for 8% more CPU; the system pool alone saved nothing.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"
