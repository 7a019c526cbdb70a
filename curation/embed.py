"""Sentence embeddings with an on-disk cache keyed by (model, text hash).

Embedding is the CPU bottleneck of curation, so every vector is computed once per (model, text) and reused by
later steps and re-runs. Vectors are L2-normalized float32, so a dot product is the cosine similarity.

``backend="onnxruntime"`` (opt-in, CPU, BERT-family models; needs ``onnxruntime`` and ``onnx``) runs the model
through ONNX Runtime: the sentence-transformers model is exported once, its attention / LayerNorm / GELU fused by ORT's
transformer optimizer, and its matrix products quantized to int8 (per-channel weights, dynamic activations) except
each FFN's output projection, whose GELU outputs carry outliers that int8 distorts (bench/RESULTS.md has the
per-layer fidelity figures). The exported model is cached on disk keyed on the model's content and the exporter's
versions. It is not the default: in two locked runs of bench/embed.py it ran at 1.11x and 0.94x of the torch bf16
path (noisy 2-core machine) with Spearman 0.996 vs bf16's 0.9999 (bench/RESULTS.md), so no speed win is shown.

``backend="openvino"`` (``precision="int8"``; CPU, BERT-family models; needs ``openvino`` and ``nncf``) runs the
model through OpenVINO: converted from the torch module once, its matrix products quantized to static int8 by NNCF
(activation ranges measured on ``embed_calibration.TEXTS``) except each FFN's output projection (as for ORT), the
rest in bf16 where the CPU runs it natively. On the 2-core AVX512-BF16/VNNI machine it ran at 1.7-1.9x the torch bf16
path with Spearman 0.997 of quality scores vs fp32 (bench/RESULTS.md). Exports are cached like ORT's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gristmill.common.hardware import cpu_has_bf16
from gristmill.common.identity import model_identity
from gristmill.common.store import cache_root, open_store, select_in

_HINT = "pip install 'gristmill[models]'  (sentence-transformers, torch)"
ONNX_EXPORT_VERSION = "1"
"""Bump when ``export_onnx_int8`` changes what it writes (part of the exported model's cache key)."""
_GELU_OPS = {"Gelu", "BiasGelu", "FastGelu"}
OPENVINO_EXPORT_VERSION = "1"
"""Bump when ``export_openvino_int8`` changes what it writes (part of the exported model's cache key)."""
FFN_OUTPUT_PATTERN = r".*\.layer\.\d+\.output\.dense/.*"
"""OpenVINO node names of a BERT's FFN output projections (``encoder.layer.N.output.dense``, not
``attention.output.dense``), kept out of int8: all-int8 gave Spearman 0.993 with calibration on other text than the
scored one, 0.997 without them (bench/RESULTS.md)."""


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingCache:
    """A sqlite table of (model_key, text_key) -> float32 vector bytes."""

    def __init__(self, path: Path) -> None:
        self.db = open_store(path, "CREATE TABLE IF NOT EXISTS emb (model TEXT, key TEXT, vec BLOB, "
                                   "PRIMARY KEY (model, key))")

    def get(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        rows = select_in(self.db, "SELECT key, vec FROM emb WHERE model=? AND key IN ({marks})", keys, [model])
        return {k: np.frombuffer(v, dtype=np.float32) for k, v in rows}

    def put(self, model: str, items: dict[str, np.ndarray]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
            [(model, k, v.astype(np.float32).tobytes()) for k, v in items.items()],
        )
        self.db.commit()


def fast_dtype(device: str) -> Any:
    """bf16 where the hardware runs it natively (CUDA; CPUs with AVX512-BF16 or AMX), else fp32.

    On this project's CPUs (AMX) bf16 weights embed 3-4.5x faster than fp32 with Spearman 0.9998 of quality
    scores (bench/embed.py); on CPUs without native bf16 it would be slower, so fp32 is kept there.
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    capability = torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if capability in ("AVX512", "AMX") and cpu_has_bf16() else torch.float32


def default_export_dir() -> Path:
    """``onnx/`` under gristmill's cache root (it holds the OpenVINO exports too, each in its own keyed folder), so
    every run and test session on a machine shares one export per model."""
    return cache_root() / "onnx"


def onnxruntime_available() -> bool:
    """ONNX Runtime and the ``onnx`` package (torch's exporter and ORT's quantizer need it) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def int8_nodes(graph: Any) -> list[str]:
    """Names of the nodes of a fused BERT graph to quantize: every ``Attention`` (Q, K, V projections) and
    ``MatMul`` except those reading a GELU's output (each FFN's output projection).

    Why: on MiniLM-L6, int8 on every matrix product gave Spearman 0.92 of quality scores vs fp32 (0.985 with
    per-channel weights); the FFN output projections alone cost most of it (0.993 when only they are int8), the
    others together keep 0.995. Example: nodes ``Attention_0 (x) -> MatMul_a``, ``MatMul_b -> BiasGelu -> MatMul_c``
    give ``["Attention_0", "MatMul_a", "MatMul_b"]``.
    """
    gelu_out = {o for n in graph.node if n.op_type in _GELU_OPS for o in n.output}
    return [n.name for n in graph.node
            if n.op_type == "Attention" or (n.op_type == "MatMul" and n.input[0] not in gelu_out)]


class _QuietRoot(logging.Filter):
    """ORT's quantizer advises pre-processing through the root logger on every call; the fused graph is already
    optimized, so the advice is noise in a user's run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _export_folder(out: Path, marker: str) -> Any:
    """A fresh temporary folder beside ``out`` to write an export into, renamed to ``out`` when the block ends
    without error, so a killed export leaves nothing half-written under ``out``; ``marker`` is the file a complete
    export holds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the export from a shared cache's other users
        if out.is_dir() and not (out / marker).is_file():
            shutil.rmtree(out)  # left by an older layout or by hand: nothing to keep
        with contextlib.suppress(OSError):  # another process finished the same export first: keep theirs
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_key(parts: Sequence[str]) -> str:
    """The folder name of an export: a hash of everything that changes what the export holds."""
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def _pooled_module(model: Any) -> Any:
    """The sentence-transformers ``model`` (all its modules) as a torch module taking token ids, attention mask and
    optionally token type ids (zeros when left out) and returning the sentence embedding: the form exporters
    trace (they name the graph's inputs after ``forward``'s parameters)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": types}
            return self.st(features)["sentence_embedding"]

    return Pooled().eval()


def export_onnx_int8(model: Any, out: Path) -> Path:
    """Export a BERT-family sentence-transformers ``model`` (all its modules: transformer, pooling, normalization
    if it has one; inputs ``input_ids``, ``attention_mask``, ``token_type_ids``; output ``embedding``, what
    sentence-transformers calls ``sentence_embedding``) to ``out/model.onnx``:
    fused by ORT's transformer optimizer, int8 on the nodes ``int8_nodes`` picks. Written to a temporary folder
    and renamed, so a killed export leaves nothing half-written under ``out``."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    bert = model[0].auto_model
    config = bert.config
    names = ["input_ids", "attention_mask", "token_type_ids"]
    attn = getattr(config, "_attn_implementation", None)
    quiet = _QuietRoot()
    try:
        with _export_folder(out, "model.onnx") as tmp:
            # Eager attention exports as the MatMul/Softmax pattern ORT fuses into one Attention op; the SDPA
            # kernel exports as a graph the fuser does not recognise (0 Attention nodes, 2.3x slower in fp32).
            bert.set_attn_implementation("eager")
            example = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
            inputs = (example, (example != 0).long(), torch.zeros_like(example))
            dynamic = {0: "batch", 1: "tokens"}
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
                torch.onnx.export(_pooled_module(model), inputs, str(tmp / "fp32.onnx"), dynamo=False,
                                  opset_version=17, input_names=names, output_names=["embedding"],
                                  dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic,
                                                "token_type_ids": dynamic, "embedding": {0: "batch"}})
            fused = optimizer.optimize_model(str(tmp / "fp32.onnx"), model_type="bert", opt_level=1,
                                             num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
            fused.save_model_to_file(str(tmp / "fused.onnx"))
            logging.getLogger().addFilter(quiet)
            quantize_dynamic(str(tmp / "fused.onnx"), str(tmp / "model.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True,
                             nodes_to_quantize=int8_nodes(onnx.load(str(tmp / "fused.onnx")).graph),
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            (tmp / "fp32.onnx").unlink()
            (tmp / "fused.onnx").unlink()
    finally:
        logging.getLogger().removeFilter(quiet)
        if attn is not None:
            bert.set_attn_implementation(attn)
    return out / "model.onnx"


def openvino_available() -> bool:
    """OpenVINO and NNCF (its int8 quantizer) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def export_openvino_int8(model: Any, out: Path, calibration: Sequence[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Convert a BERT-family sentence-transformers ``model`` (inputs ``input_ids``, ``attention_mask``, int64,
    any batch and length; output the sentence embedding) to OpenVINO IR at ``out/model.xml``, its matrix products
    quantized to static int8 by NNCF except the FFN output projections (``FFN_OUTPUT_PATTERN``). ``calibration``
    holds (token ids, attention mask) batches on which NNCF measures the activation ranges. Weights are stored in
    fp32; the CPU plugin runs the float parts in bf16 where the hardware does."""
    import nncf
    import openvino
    import torch

    names = ["input_ids", "attention_mask"]
    example = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    with _export_folder(out, "model.xml") as tmp:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's warnings on Python-side shape checks
            converted = openvino.convert_model(
                _pooled_module(model), example_input=(example, (example != 0).long()),
                input=[(n, openvino.PartialShape([-1, -1]), openvino.Type.i64) for n in names])
        dataset = nncf.Dataset([dict(zip(names, batch, strict=True)) for batch in calibration])
        quantized = nncf.quantize(converted, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calibration),
                                  ignored_scope=nncf.IgnoredScope(patterns=[FFN_OUTPUT_PATTERN]))
        openvino.save_model(quantized, str(tmp / "model.xml"), compress_to_fp16=False)
    return out / "model.xml"


def _padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``rows`` right-padded with ``pad`` to the longest row, and the attention mask.

    Example: ``_padded([[101, 7, 102], [101, 102]], 0)`` gives ids ``[[101, 7, 102], [101, 102, 0]]`` and mask
    ``[[1, 1, 1], [1, 1, 0]]``.
    """
    tokens = np.full((len(rows), max(len(r) for r in rows)), pad, dtype=np.int64)
    mask = np.zeros_like(tokens)
    for j, row in enumerate(rows):
        tokens[j, : len(row)] = row
        mask[j, : len(row)] = 1
    return tokens, mask


class Embedder:
    """A sentence-transformers model plus the cache. ``model_path`` is a local model directory.

    ``precision="fast"``: bf16 where the CPU runs it natively, bf16 (fp16 on older GPUs) on GPU; ``"fp32"`` is
    sentence-transformers' default; ``"int8"`` is ``backend="openvino"``. ``backend="onnxruntime"`` /
    ``"openvino"`` run ONNX Runtime / OpenVINO int8 instead (module docstring); ``export_dir`` holds their exported
    models (default ``default_export_dir()``).
    """

    def __init__(
        self,
        model_path: str,
        *,
        cache_path: Path | None = None,
        batch_size: int | None = None,
        max_seq_length: int | None = 256,
        precision: Literal["fast", "fp32", "int8"] = "fast",
        device: str | None = None,
        trust_remote_code: bool = False,
        backend: Literal["torch", "onnxruntime", "openvino"] = "torch",
        export_dir: Path | None = None,
    ) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"embeddings need sentence-transformers: {_HINT}") from err
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Explicit: code in a model directory runs only when the recipe says so (recipe key trust_remote_code).
        self.model = SentenceTransformer(model_path, device=device, trust_remote_code=trust_remote_code)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        if precision == "int8":
            backend = "openvino"
        if backend != "torch" and not (device == "cpu" and self._bert_family()):
            raise ValueError(f"the {backend} backend runs BERT-family models on CPU only")
        if backend == "onnxruntime" and not onnxruntime_available():
            raise ImportError("the onnxruntime backend needs onnxruntime and onnx: pip install 'gristmill[cpu]'")
        if backend == "openvino" and not openvino_available():
            raise ImportError("the openvino backend needs openvino and nncf: pip install 'gristmill[cpu]'")
        self._fast_tokenizer = self._rust_tokenizer()
        # Keyed on the model's content (config + tokenizer + weights), never its folder name: another model in a
        # folder called `model`, or new weights at the same path, must not be served these vectors.
        memo = cache_path.parent / "model_identity.sqlite" if cache_path else None
        identity = model_identity(model_path, memo)
        self._run: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
        self.dtype = torch.float32  # the exported backends' float parts are fp32 or set by the runtime
        if backend == "onnxruntime":
            self.backend = f"onnxruntime int8 (export v{ONNX_EXPORT_VERSION})"
            self._run = self._onnx_session(identity, export_dir or default_export_dir())
            precision_key = f"ort-int8-{ONNX_EXPORT_VERSION}"
        elif backend == "openvino":
            self._run, float_type = self._openvino_request(identity, export_dir or default_export_dir())
            self.backend = f"openvino int8+{float_type} (export v{OPENVINO_EXPORT_VERSION})"
            precision_key = f"ov-int8-{float_type}-{OPENVINO_EXPORT_VERSION}"
        else:
            self.dtype = fast_dtype(device) if precision == "fast" else torch.float32
            if self.dtype != torch.float32:
                self.model = self.model.to(self.dtype)
            self.backend = f"torch {str(self.dtype).split('.')[-1]}"
            precision_key = str(self.dtype).split(".")[-1]
        # Small batches suit CPUs (little padding, cache-resident activations); GPUs want wide batches.
        self.batch_size = batch_size or (1024 if device.startswith("cuda") else 16)
        self.model_key = f"v3|{identity}|seq{self.model.max_seq_length}|{precision_key}"
        self.cache = EmbeddingCache(cache_path) if cache_path else None
        self.device = device
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)
        self._token_types = "token_type_ids" in self.model.tokenizer.model_input_names
        self.computed = 0
        self.cached = 0

    def _bert_family(self) -> bool:
        """The first module is a BERT transformer: the architecture ORT's optimizer fuses and whose int8
        fidelity was measured (MiniLM)."""
        auto = getattr(self.model[0], "auto_model", None)
        return getattr(getattr(auto, "config", None), "model_type", None) == "bert"

    def _onnx_session(self, identity: str, export_dir: Path) -> Any:
        """An ORT session on the model's int8 export, exported first unless ``export_dir`` holds it. The folder
        name covers the model's content, its truncation and the exporter's versions, so a new model, torch or
        ONNX Runtime gets a fresh export."""
        import onnxruntime
        import torch

        key = export_key([identity, f"seq{self.model.max_seq_length}", ONNX_EXPORT_VERSION, torch.__version__,
                          onnxruntime.__version__, importlib.metadata.version("onnx")])
        path = export_dir / key / "model.onnx"
        if not path.is_file():
            path = export_onnx_int8(self.model, export_dir / key)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
            feeds = {"input_ids": tokens, "attention_mask": mask, "token_type_ids": np.zeros_like(tokens)}
            return session.run(None, feeds)[0]

        return run

    def _openvino_request(self, identity: str, export_dir: Path) -> tuple[Callable[..., np.ndarray], str]:
        """An OpenVINO infer function on the model's int8 export (exported first unless ``export_dir`` holds it;
        keyed like ``_onnx_session``, plus the calibration texts) and the float type the CPU plugin runs the
        non-int8 parts in (bf16 where the CPU has it natively, else f32)."""
        import nncf
        import openvino
        import torch

        from gristmill.curation.embed_calibration import TEXTS

        texts_hash = hashlib.blake2b("\n".join(TEXTS).encode(), digest_size=8).hexdigest()
        key = export_key([identity, f"seq{self.model.max_seq_length}", OPENVINO_EXPORT_VERSION, torch.__version__,
                          openvino.__version__, nncf.__version__, texts_hash])
        path = export_dir / key / "model.xml"
        if not path.is_file():
            ids = self._tokenize(list(TEXTS))
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            pad = self.model.tokenizer.pad_token_id or 0
            calibration = [_padded([ids[i] for i in order[start : start + 8]], pad)
                           for start in range(0, len(order), 8)]
            path = export_openvino_int8(self.model, export_dir / key, calibration)
        core = openvino.Core()
        # LATENCY: one stream using every thread for one request at a time, which is how ``_encode`` calls it.
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request = compiled.create_infer_request()
        float_type = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

        def run(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
            # copy: the returned array is the request's output buffer, overwritten by its next call
            return request.infer({"input_ids": tokens, "attention_mask": mask})[0].copy()

        return run, float_type

    @property
    def chunk_size(self) -> int:
        """Texts per tokenizer call, cache write and progress tick: on CPU a few batches (frequent progress); on a
        GPU enough batches that tokenizing the next chunk (a thread) overlaps the model's work on this one."""
        return self.batch_size * 16 if self.device == "cpu" else max(4 * self.batch_size, 8192)

    def _rust_tokenizer(self) -> Any:
        """The model's Rust tokenizer set to truncate like sentence-transformers (same ids), or None. Its
        ``encode_batch_fast`` skips character offsets and the Python-side BatchEncoding: on the H200 machine
        tokenizing through the transformers wrapper was slower than the GPU embedding the texts."""
        import copy

        rust = getattr(self.model.tokenizer, "_tokenizer", None)
        if rust is None or not hasattr(rust, "encode_batch_fast"):
            return None
        rust = copy.deepcopy(rust)
        rust.enable_truncation(self.model.max_seq_length)
        rust.no_padding()
        return rust

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Unpadded token ids of ``texts`` in one call: the Rust tokenizer spreads a batch over the cores and
        releases the GIL, so the next chunk is tokenized while the model computes this one (``encode``)."""
        if self._fast_tokenizer is not None:
            return [e.ids for e in self._fast_tokenizer.encode_batch_fast(texts)]
        return self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length,
                                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def _encode(self, texts: list[str], ids: list[list[int]] | None = None) -> np.ndarray:
        """Vectors of ``texts`` through the model's own modules (transformer, pooling), in batches of similar
        token length padded to their longest row; sentence-transformers' ``encode`` would re-tokenize per batch,
        sort by characters and, on a GPU, wait for every batch (outputs stay on the device here until the end)."""
        import torch

        ids = self._tokenize(texts) if ids is None else ids
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        device = self.model.device
        pad = self.model.tokenizer.pad_token_id or 0
        outs = []
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                tokens, mask = _padded([ids[i] for i in order[start : start + self.batch_size]], pad)
                if self._run is not None:
                    outs.append(torch.from_numpy(self._run(tokens, mask)))
                    continue
                features = {"input_ids": torch.from_numpy(tokens).to(device, non_blocking=True),
                            "attention_mask": torch.from_numpy(mask).to(device, non_blocking=True)}
                if self._token_types:
                    features["token_type_ids"] = torch.zeros_like(features["input_ids"])
                outs.append(self.model(features)["sentence_embedding"].float())
            if not outs:
                return np.zeros((0, self.dim), dtype=np.float32)
            # Normalized in fp32: a bf16 model's own normalization leaves norms off by ~1e-3.
            vecs = torch.nn.functional.normalize(torch.cat(outs), dim=-1).cpu().numpy()
        result = np.empty_like(vecs)
        result[order] = vecs
        return result

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        keys = [_text_key(t) for t in texts]
        have = self.cache.get(self.model_key, keys) if self.cache else {}
        # Longest first across the whole call (not per chunk), so each batch pads to near its own length.
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in have}.items(),
                      key=lambda kv: -len(kv[1]))
        self.cached += len(texts) - len(todo)
        if progress:
            progress(len(texts) - len(todo))
        chunks = [todo[start : start + self.chunk_size] for start in range(0, len(todo), self.chunk_size)]
        with ThreadPoolExecutor(1) as pool:  # tokenizes chunk i+1 while chunk i is embedded
            pending = pool.submit(self._tokenize, [t for _, t in chunks[0]]) if chunks else None
            for i, chunk in enumerate(chunks):
                ids = pending.result() if pending else None
                pending = pool.submit(self._tokenize, [t for _, t in chunks[i + 1]]) if i + 1 < len(chunks) else None
                vecs = self._encode([t for _, t in chunk], ids)
                new = {k: v for (k, _), v in zip(chunk, vecs, strict=True)}
                have.update(new)
                if self.cache:
                    self.cache.put(self.model_key, new)
                self.computed += len(chunk)
                if progress:
                    progress(len(chunk))
        dim = self.dim
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([have[k] for k in keys])
