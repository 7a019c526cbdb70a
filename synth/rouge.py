"""ROUGE-L lives in ``gristmill.common.rouge`` (synthesis and evaluation both use it); the synthesis methods import
it from here."""

from gristmill.common.rouge import lcs_length, max_rouge_l, rouge_l, tokens

__all__ = ["lcs_length", "max_rouge_l", "rouge_l", "tokens"]
