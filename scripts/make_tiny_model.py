"""Writes tests/fixtures/tiny-bert/: a randomly initialised BERT small enough
to train a job in well under a second (2 layers, hidden size 16, a
character-level WordPiece vocabulary of 128 tokens), for tests of the queue
machinery under load. Its scores mean nothing.

    python3 scripts/make_tiny_model.py
"""
import pathlib
import string

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-bert"
out.mkdir(parents=True, exist_ok=True)
chars = string.ascii_lowercase + string.digits + ".,;:!?'\"()-%$&/"
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars) + ["##" + c for c in chars]
vocab += [f"[unused{i}]" for i in range(128 - len(vocab))]
(out / "vocab.txt").write_text("\n".join(vocab) + "\n")
tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
tok.save_pretrained(out)
for extra in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]:
    (out / extra).unlink(missing_ok=True)
torch.manual_seed(0)
config = BertConfig(
    vocab_size=128,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
    num_labels=3,
)
BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
for f in sorted(out.iterdir()):
    print(f.name, f.stat().st_size)
