"""gristmill's opt-in CPU embedding path through ONNX Runtime (int8 on the attention and FFN-input matrix products):
which nodes get int8, that its vectors match sentence-transformers' fp32 on the real MiniLM, that the export is
cached on disk, and that the default stays the torch path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import assert_exported_embedder_like_fp32

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _node(op: str, name: str, inputs: list[str], outputs: list[str]) -> object:
    return onnx.helper.make_node(op, inputs, outputs, name=name, domain="com.microsoft" if op in
                                 ("Attention", "BiasGelu") else "")


def test_int8_nodes_skips_only_the_matmuls_reading_a_gelu() -> None:
    from gristmill.curation.embed import int8_nodes

    # x -> Attention_0 -> MatMul_a (attention output) -> MatMul_b (FFN in) -> BiasGelu -> MatMul_c (FFN out)
    graph = onnx.helper.make_graph(
        [_node("Attention", "Attention_0", ["x", "wqkv", "bqkv"], ["ctx"]),
         _node("MatMul", "MatMul_a", ["ctx", "wo"], ["h"]),
         _node("MatMul", "MatMul_b", ["h", "w1"], ["f"]),
         _node("BiasGelu", "BiasGelu_0", ["f", "b1"], ["g"]),
         _node("MatMul", "MatMul_c", ["g", "w2"], ["y"]),
         _node("Gelu", "Gelu_1", ["y"], ["g2"]),
         _node("MatMul", "MatMul_d", ["w3", "g2"], ["z"])],  # reads the GELU as its second input: still int8
        "g", [], [])
    assert int8_nodes(graph) == ["Attention_0", "MatMul_a", "MatMul_b", "MatMul_d"]


@pytest.mark.slow
def test_real_minilm_onnx_matches_fp32_and_export_is_reused(tmp_path: Path) -> None:
    from bench.corpus import real_paragraphs
    from gristmill import models
    from gristmill.curation.embed import Embedder

    path = models.resolve("minilm-l6")
    texts = real_paragraphs(170, seed=3, min_words=40, max_words=200)
    docs, refs = texts[20:], texts[:20]
    fast = Embedder(path, cache_path=tmp_path / "emb.sqlite", export_dir=tmp_path / "onnx", backend="onnxruntime")
    assert fast.backend.startswith("onnxruntime int8")
    exported = list((tmp_path / "onnx").glob("*/model.onnx"))
    assert len(exported) == 1
    graph = onnx.load(str(exported[0])).graph
    ops = [n.op_type for n in graph.node]
    # fused (one Attention per layer, quantized) and the six FFN output projections left in fp32
    assert ops.count("QAttention") == 6 and ops.count("MatMul") == 6 and ops.count("MatMulInteger") == 12

    assert_exported_embedder_like_fp32(fast, path, tmp_path / "onnx", exported[0], docs, refs, min_cosine=0.99)


@pytest.mark.slow
def test_default_is_the_torch_path(tmp_path: Path) -> None:
    from gristmill import models
    from gristmill.curation import embed

    embedder = embed.Embedder(models.resolve("minilm-l6"), export_dir=tmp_path / "onnx")
    assert embedder.backend.startswith("torch ") and not (tmp_path / "onnx").exists()
    assert embedder.encode(["one short text"]).shape == (1, 384)
