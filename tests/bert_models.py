"""A BERT-style sentence encoder built from a `transformers` config (random weights, no download), as a
team would bring its own model: ids and an attention mask in, the last hidden state and the pooled
output out. `transformers` is a test-only dependency, imported by the factories (which the harness
calls after torch.manual_seed(seed)), so this module imports without it."""

from __future__ import annotations

import torch
from torch import nn

#: the vocabulary is smaller than BERT's 30522 to keep the files and memory down; the embedding
#: lookup is a gather, so its size hardly changes the time per call
VOCAB = 8192
SEQ = 128
SMALL_SEQ = 32
#: full size: the shape the issue measured (hidden 384, 6 layers, 12 heads, seq 128)
BERT_SPEC = f"input_ids:int64[batch,{SEQ}]=0..{VOCAB}; attention_mask:int64[batch,{SEQ}]!padding_mask"
#: a two-layer, seq-32 variant that exports and selects in seconds, for the tests
SMALL_BERT_SPEC = f"input_ids:int64[batch,{SMALL_SEQ}]=0..{VOCAB}; attention_mask:int64[batch,{SMALL_SEQ}]!padding_mask"
OUTPUTS = ("last_hidden_state", "pooler_output")
#: what eager torch and a correct ONNX file may differ by, as for the built-in transformer: every
#: variant of the 6-layer encoder (both exporters' files, ORT's fusions, all levels) stays within 3.1e-6
ATOL, RTOL = 1e-4, 1e-3


class Encoder(nn.Module):
    """BertModel with plain tensors out, so every exporter and the harness can name the outputs."""

    def __init__(self, layers: int, seq: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=VOCAB, hidden_size=384, num_hidden_layers=layers, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=max(512, seq))
        self.bert = BertModel(config).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}


def make_bert_encoder() -> nn.Module:
    """6 layers, hidden 384, 12 heads, intermediate 1536: a MiniLM-sized sentence encoder."""
    return Encoder(6, SEQ)


def make_small_bert_encoder() -> nn.Module:
    """The same architecture at 2 layers, for tests that export and time it in seconds."""
    return Encoder(2, SMALL_SEQ)


def bert_spec(small: bool = False):
    """The harness's spec of the encoder (bring-your-own-model, as `bench run --model-factory` makes one)."""
    from fixtures.custom import make_custom_model
    from fixtures.specs import parse_input_spec

    if small:
        return make_custom_model("bert-small", "tests.bert_models:make_small_bert_encoder",
                                 parse_input_spec(SMALL_BERT_SPEC), OUTPUTS, atol=ATOL, rtol=RTOL,
                                 description="BertModel from a config, 2 layers, d=384, seq 32, random weights")
    return make_custom_model("bert", "tests.bert_models:make_bert_encoder", parse_input_spec(BERT_SPEC), OUTPUTS,
                             atol=ATOL, rtol=RTOL,
                             description="BertModel from a config, 6 layers, d=384, 12 heads, seq 128, random weights")
