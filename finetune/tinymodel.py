"""Build the bundled offline base model: a tiny Llama with a byte-level BPE tokenizer.

Nothing is downloaded. The tokenizer is trained on a fixed corpus (the demo
dataset plus a little general English) and the weights are initialised from a
fixed seed, so every machine builds the same model. It is saved with
``save_pretrained`` and loaded back through ``from_pretrained`` exactly like a
hub model, so the training path has no special case for it.

Build it by hand with ``python -m finetune.tinymodel [DIR]``; the studio builds
it on first use into ``FINETUNE_HOME/models/tiny-llama``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from finetune.demo import demo_rows
from finetune.prep import FALLBACK_CHAT_TEMPLATE

log = logging.getLogger(__name__)

# The id users type to pick the bundled model (the default base_model).
BUNDLED_MODEL_ID = "bundled/tiny-llama"
# Bump when the recipe changes so stale caches are rebuilt, never reused.
RECIPE_VERSION = 2

# ChatML: simple, widely understood, and it marks assistant turns clearly.
CHAT_TEMPLATE = FALLBACK_CHAT_TEMPLATE

_GENERAL_TEXT = """
The quick brown fox jumps over the lazy dog. A model learns from examples.
Questions and answers help a small model learn a task. What is the answer?
The answer is simple. Numbers such as one, two, three, four, five, six, seven,
eight, nine and ten are common. Letters make words and words make sentences.
Colours include red, orange, yellow, green, blue, purple, black and white.
"""

MODEL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
VOCAB_SIZE = 1024


def _corpus() -> list[str]:
    lines = [line.strip() for line in _GENERAL_TEXT.splitlines() if line.strip()]
    for row in demo_rows():
        lines.append(f"{row['prompt']}\n{row['completion']}")
    # Chat-template scaffolding, so role names are single tokens in chat data.
    for role in ("system", "user", "assistant"):
        lines.extend([f"<|im_start|>{role}\n"] * 20)
    # Digits alone so every number tokenises, whatever the vocabulary learnt.
    lines.append(" ".join(str(i) for i in range(100)))
    return lines


def build_tiny_model(out_dir: Path) -> Path:
    """Write tokenizer + randomly initialised tiny Llama to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|pad|>", "<|endoftext|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = MODEL_SHAPE["max_position_embeddings"]

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
        **MODEL_SHAPE,
    )
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    hf_tok.save_pretrained(out_dir)
    (out_dir / "studio_recipe.json").write_text(json.dumps({"recipe_version": RECIPE_VERSION}))
    return out_dir


def ensure_tiny_model(models_dir: Path) -> Path:
    """Return the cached bundled model folder, building it once if needed.

    Built in a temporary sibling folder and renamed into place, so a crash
    mid-build never leaves a half-written model that later loads fail on.
    """
    target = models_dir / f"tiny-llama-v{RECIPE_VERSION}"
    if (target / "studio_recipe.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    log.info("building the bundled tiny model in %s", target)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=models_dir))
    build_tiny_model(tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        # Another thread or process finished first: keep theirs.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


if __name__ == "__main__":
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tiny-llama")
    print(build_tiny_model(dest))
