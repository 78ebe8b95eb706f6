#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for the Rust parity tests.

For each small model (``bert`` and ``phi``) this script builds a randomly
initialised Hugging Face sequence classifier, attaches LoRA adapters
(PEFT semantics, implemented manually), runs one forward/backward pass with a
class-weighted cross-entropy loss and records:

* ``worker/tests/fixtures/<name>.safetensors``: every model parameter under
  its ``state_dict()`` name, the LoRA tensors as ``<module>.lora_A`` /
  ``<module>.lora_B``, and the inputs ``input_ids``, ``attention_mask``,
  ``labels`` plus the reference ``expected_logits``.
  Every parameter's full gradient is stored as ``grad.<name>``.
* ``worker/tests/fixtures/<name>.json``: the model config, the LoRA settings,
  the class weights, the loss value and the L2 norm of the gradient of every
  parameter (base, head and LoRA).
* ``worker/tests/fixtures/dendrites.safetensors``: an input, three dendrite
  sets (full and low-rank modules, cascade weights, gates) and the dendrite
  term computed here from the formula of ``docs``' dendrite section,
  independently of the Rust code.

Everything runs in fp32 on the CPU with dropout disabled and a fixed seed, so
the output is deterministic.

Requirements::

    pip install torch transformers safetensors

Usage (from the repository root)::

    python3 scripts/make_parity_fixtures.py
"""

import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "worker", "tests", "fixtures")

LORA_R = 4
LORA_ALPHA = 8.0
CLASS_WEIGHTS = [0.5, 1.0, 2.0]
LABELS = [0, 2, 1]
LENGTHS = [7, 5, 3]
SEQ_LEN = max(LENGTHS)


# ---------------------------------------------------------------------------
# Model construction helpers
# ---------------------------------------------------------------------------


def init_weights(model: nn.Module) -> None:
    """Overwrite all parameters with non-trivial random values.

    Linear / embedding weights and biases: N(0, 0.2).
    LayerNorm weights: 1 + N(0, 0.1); LayerNorm biases: N(0, 0.1).
    """
    with torch.no_grad():
        layer_norm_params = set()
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                if module.weight is not None:
                    module.weight.data.normal_(0.0, 0.1).add_(1.0)
                    layer_norm_params.add(id(module.weight))
                if module.bias is not None:
                    module.bias.data.normal_(0.0, 0.1)
                    layer_norm_params.add(id(module.bias))
        for _, p in model.named_parameters():
            if id(p) not in layer_norm_params:
                p.data.normal_(0.0, 0.2)


class LoraAdapter(nn.Module):
    """LoRA factors for one nn.Linear: delta(x) = (x @ A^T @ B^T) * alpha / r."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float):
        super().__init__()
        self.r = r
        self.alpha = alpha
        self.scale = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features).normal_(0.0, 0.3))
        self.lora_B = nn.Parameter(torch.empty(out_features, r).normal_(0.0, 0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def attach_lora(model: nn.Module, target_suffixes, r: int, alpha: float):
    """Patch the forward of every nn.Linear whose last name component is in
    ``target_suffixes``. Returns an ordered dict-like list of
    (module_name, adapter). Adapters are kept outside the model so that the
    model's ``state_dict()`` keeps its original key names."""
    adapters = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if name.split(".")[-1] not in target_suffixes:
            continue
        adapter = LoraAdapter(module.in_features, module.out_features, r, alpha)
        base_forward = module.forward

        def patched_forward(x, _base=base_forward, _adapter=adapter):
            return _base(x) + _adapter(x)

        module.forward = patched_forward
        adapters.append((name, adapter))
    if not adapters:
        raise RuntimeError(f"no LoRA targets matched {target_suffixes}")
    return adapters


def make_inputs(low: int, high: int, pad_id: int):
    """Random ids in [low, high] (inclusive), right-padded with ``pad_id``."""
    batch = len(LENGTHS)
    input_ids = torch.full((batch, SEQ_LEN), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((batch, SEQ_LEN), dtype=torch.int64)
    for row, length in enumerate(LENGTHS):
        input_ids[row, :length] = torch.randint(low, high + 1, (length,), dtype=torch.int64)
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


def json_safe(value):
    """Recursively drop values that cannot be serialised to JSON."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = json_safe(v)
            if v is not _DROP:
                out[str(k)] = v
        return out
    if isinstance(value, (list, tuple)):
        items = [json_safe(v) for v in value]
        return [v for v in items if v is not _DROP]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    return _DROP


_DROP = object()


# ---------------------------------------------------------------------------
# Fixture definitions
# ---------------------------------------------------------------------------


def build_bert():
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification._from_config(
        config, attn_implementation="eager"
    )
    targets = ("query", "value")
    input_ids, attention_mask = make_inputs(1, 98, pad_id=0)
    return model, targets, input_ids, attention_mask


def build_phi():
    config = transformers.PhiConfig(
        vocab_size=99,
        hidden_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu_new",
        max_position_embeddings=64,
        partial_rotary_factor=0.4,
        rope_theta=10000.0,
        layer_norm_eps=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        qk_layernorm=False,
        pad_token_id=98,
        num_labels=3,
        tie_word_embeddings=False,
    )
    model = transformers.PhiForSequenceClassification._from_config(
        config, attn_implementation="eager"
    )
    targets = ("q_proj", "k_proj", "v_proj", "dense")
    input_ids, attention_mask = make_inputs(1, 97, pad_id=98)
    return model, targets, input_ids, attention_mask


def check_phi_pooling(model, input_ids, attention_mask, logits):
    """Assert that the classifier logits come from position length-1 of each
    row (the last non-pad token under right padding)."""
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        all_logits = model.score(hidden)
        idx = torch.tensor([length - 1 for length in LENGTHS])
        manual = all_logits[torch.arange(len(LENGTHS)), idx]
    if not torch.allclose(manual, logits.detach(), atol=1e-6, rtol=1e-5):
        raise AssertionError(
            f"phi pooling mismatch: max diff {(manual - logits.detach()).abs().max().item()}"
        )


def flat_config(model) -> dict:
    cfg = json_safe(model.config.to_dict())
    # Newer transformers releases nest the rotary settings under
    # "rope_parameters"; expose them at the top level as well so readers
    # written against either layout find them.
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict):
        for key in ("rope_theta", "partial_rotary_factor"):
            if key in rope and key not in cfg:
                cfg[key] = rope[key]
    return cfg


def make_fixture(name, builder):
    torch.manual_seed(0)
    model, targets, input_ids, attention_mask = builder()
    init_weights(model)
    adapters = attach_lora(model, targets, LORA_R, LORA_ALPHA)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    class_weights = torch.tensor(CLASS_WEIGHTS, dtype=torch.float32)

    model.float()
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    for _, adapter in adapters:
        for p in adapter.parameters():
            p.requires_grad_(True)

    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if name == "bert":
        kwargs["token_type_ids"] = torch.zeros_like(input_ids)
    logits = model(**kwargs).logits
    loss = F.cross_entropy(logits, labels, weight=class_weights)
    loss.backward()

    if name == "phi":
        check_phi_pooling(model, input_ids, attention_mask, logits)

    params = dict(model.named_parameters())
    tensors = {}
    grad_norms = {}
    for key, value in model.state_dict().items():
        # Keep real weights only (every parameter); skip non-weight buffers.
        if key not in params:
            continue
        tensors[key] = value.detach().to(torch.float32).contiguous().clone()
    for n, p in params.items():
        if n not in tensors:
            raise RuntimeError(f"parameter {n} missing from state_dict")
        if p.grad is None:
            raise RuntimeError(f"parameter {n} has no gradient")
        grad_norms[n] = float(p.grad.norm().item())
        tensors[f"grad.{n}"] = p.grad.detach().to(torch.float32).contiguous().clone()

    lora_targets = []
    for module_name, adapter in adapters:
        lora_targets.append(module_name)
        for suffix in ("lora_A", "lora_B"):
            p = getattr(adapter, suffix)
            key = f"{module_name}.{suffix}"
            tensors[key] = p.detach().contiguous().clone()
            if p.grad is None:
                raise RuntimeError(f"{key} has no gradient")
            grad_norms[key] = float(p.grad.norm().item())
            tensors[f"grad.{key}"] = p.grad.detach().contiguous().clone()

    tensors["input_ids"] = input_ids.contiguous()
    tensors["attention_mask"] = attention_mask.contiguous()
    tensors["labels"] = labels.contiguous()
    tensors["expected_logits"] = logits.detach().to(torch.float32).contiguous().clone()

    os.makedirs(OUT_DIR, exist_ok=True)
    st_path = os.path.join(OUT_DIR, f"{name}.safetensors")
    json_path = os.path.join(OUT_DIR, f"{name}.json")
    save_file(tensors, st_path)

    meta = {
        "config": flat_config(model),
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "targets": lora_targets},
        "class_weights": CLASS_WEIGHTS,
        "loss": float(loss.item()),
        "grad_norms": grad_norms,
    }
    with open(json_path, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=False)
        f.write("\n")

    zero_grads = [k for k, v in grad_norms.items() if v == 0.0]
    print(
        f"{name}: loss={loss.item():.6f} logits={tuple(logits.shape)} "
        f"tensors={len(tensors)} lora_modules={len(lora_targets)} "
        f"grads={len(grad_norms)} zero_grads={len(zero_grads)} "
        f"size={os.path.getsize(st_path)}B+{os.path.getsize(json_path)}B -> {st_path}"
    )
    return zero_grads


DENDRITE_IN = 6
DENDRITE_C = 4
DENDRITE_SETS = 3
DENDRITE_RANK = 2


def dendrite_term(x, modules, gates, cascades, act):
    """sum_j T_j * a_j with a_0 = act(g_0(x)) and
    a_j = act(g_j(x) + sum_{i<j} D_j[i] * a_i): written out per set."""
    acts = []
    out = torch.zeros(x.shape[0], DENDRITE_C)
    for j, g in enumerate(modules):
        z = g(x)
        if j >= 1:
            for i in range(j):
                z = z + cascades[j - 1][i] * acts[i]
        a = act(z)
        acts.append(a)
        out = out + gates[j] * a
    return out


def make_dendrite_fixture():
    """Full (sigmoid) and low-rank (tanh) dendrites with biases, three sets."""
    torch.manual_seed(1)
    x = torch.randn(5, DENDRITE_IN)
    tensors = {"x": x}
    for kind, act in (("full", torch.sigmoid), ("low_rank", torch.tanh)):
        prefix = f"{kind}.dendrites"
        modules, gates, cascades = [], [], []
        for j in range(DENDRITE_SETS):
            b = torch.randn(DENDRITE_C) * 0.5
            tensors[f"{prefix}.{j}.bias"] = b
            if kind == "full":
                w = torch.randn(DENDRITE_C, DENDRITE_IN) * 0.5
                tensors[f"{prefix}.{j}.weight"] = w
                modules.append(lambda v, w=w, b=b: v @ w.t() + b)
            else:
                a_mat = torch.randn(DENDRITE_RANK, DENDRITE_IN) * 0.5
                b_mat = torch.randn(DENDRITE_C, DENDRITE_RANK) * 0.5
                tensors[f"{prefix}.{j}.lora_A"] = a_mat
                tensors[f"{prefix}.{j}.lora_B"] = b_mat
                modules.append(lambda v, a=a_mat, bm=b_mat, b=b: (v @ a.t()) @ bm.t() + b)
            t = torch.randn(DENDRITE_C)
            tensors[f"{prefix}.{j}.T"] = t
            gates.append(t)
            if j >= 1:
                d = torch.randn(j, DENDRITE_C)
                tensors[f"{prefix}.{j}.D"] = d
                cascades.append(d)
        tensors[f"{kind}.expected"] = dendrite_term(x, modules, gates, cascades, act)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    path = os.path.join(OUT_DIR, "dendrites.safetensors")
    save_file(tensors, path)
    print(f"dendrites: tensors={len(tensors)} -> {path}")


def main() -> int:
    torch.set_default_dtype(torch.float32)
    make_fixture("bert", build_bert)
    make_fixture("phi", build_phi)
    make_dendrite_fixture()
    return 0


if __name__ == "__main__":
    sys.exit(main())
