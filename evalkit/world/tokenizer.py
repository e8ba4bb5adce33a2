"""Word-level tokenizer for the embedded world, saved as a Hugging Face fast tokenizer folder.

transformer-lens wants a `PreTrainedTokenizerFast`; a raw `tokenizers.Tokenizer` passed to it fails, so the
tokenizer is
always saved and loaded back with `from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


def save_tokenizer(vocab: Sequence[str], folder: Path) -> None:
    """Build the word-level tokenizer over `vocab` (ids = positions) and save it into `folder`."""
    ids = {word: i for i, word in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # The tokenizer itself prepends BOS, like most LLM tokenizers; transformer-lens detects that and does not
    # add another.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, ids[BOS])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)
    fast.model_max_length = 1 << 20
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))


def load_tokenizer(folder: Path | str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(folder))
