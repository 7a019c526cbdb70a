"""gristmill's opt-in CPU embedding path through OpenVINO (static int8 by NNCF, FFN output projections in float):
padding of token batches, which nodes the FFN pattern keeps out of int8, that its vectors match
sentence-transformers' fp32 on the real MiniLM, and that the export is cached on disk."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_exported_embedder_like_fp32


def test_padded_right_pads_to_the_longest_row() -> None:
    from gristmill.curation.embed import _padded

    tokens, mask = _padded([[101, 7, 102], [101, 102]], 0)
    assert tokens.tolist() == [[101, 7, 102], [101, 102, 0]] and tokens.dtype == np.int64
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_ffn_pattern_matches_only_the_ffn_output_projections() -> None:
    from gristmill.curation.embed import FFN_OUTPUT_PATTERN

    stem = "__module.st.0.model.encoder.layer.{}.{}/aten::linear/MatMul"
    ffn_out = [stem.format(i, "output.dense") for i in (0, 5, 11)]
    others = [stem.format(0, n) for n in ("attention.output.dense", "attention.self.query", "intermediate.dense")]
    assert all(re.fullmatch(FFN_OUTPUT_PATTERN, n) for n in ffn_out)
    assert not any(re.fullmatch(FFN_OUTPUT_PATTERN, n) for n in others)


@pytest.mark.slow
def test_real_minilm_openvino_matches_fp32_and_export_is_reused(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino

    from bench.corpus import real_paragraphs
    from gristmill import models
    from gristmill.curation.embed import FFN_OUTPUT_PATTERN, Embedder

    path = models.resolve("minilm-l6")
    texts = real_paragraphs(170, seed=3, min_words=40, max_words=200)
    docs, refs = texts[20:], texts[:20]
    fast = Embedder(path, cache_path=tmp_path / "emb.sqlite", export_dir=tmp_path / "ov", precision="int8")
    assert fast.backend.startswith("openvino int8")
    exported = list((tmp_path / "ov").glob("*/model.xml"))
    assert len(exported) == 1
    ops = openvino.Core().read_model(exported[0]).get_ordered_ops()
    float_matmuls = [op for op in ops if op.get_type_name() == "MatMul"
                     and all(i.get_source_output().get_node().get_type_name() != "FakeQuantize"
                             for i in op.inputs())]
    quantized = [op for op in ops if op.get_type_name() == "MatMul" and op not in float_matmuls]
    # the six FFN output projections stay float (their weights feed the MatMul directly); Q/K/V, attention
    # output and FFN input projections (24) plus the attention score/context products read FakeQuantize
    assert sum(re.fullmatch(FFN_OUTPUT_PATTERN, op.get_friendly_name()) is not None
               for op in float_matmuls) == 6
    assert len(quantized) >= 24

    assert_exported_embedder_like_fp32(fast, path, tmp_path / "ov", exported[0], docs, refs, min_cosine=0.98)
