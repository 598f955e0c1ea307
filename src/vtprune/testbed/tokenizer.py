"""An offline tokenizer for the tiny models: byte-level BPE trained in-process on a fixed corpus.

Deterministic (same corpus, same merges), built in milliseconds, and covers any text (byte-level), so the
random and zoo models need no hub. The special tokens follow the Qwen-VL and LLaVA chat conventions.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "<pad>",
]

_WORDS = (
    "what which where who how many is are the a an of in on at to left right above below next color colour "
    "shape letter digit number value key table form red green blue yellow purple orange black white gray grey "
    "cyan pink brown circle square triangle star cross ring object moved appeared disappeared first second "
    "third last order before after count counted times changed direction up down read symbol shown briefly "
    "inside holds contains with frame video image question answer user assistant system yes no none zero one "
    "two three four five six seven eight nine ten A B C D E F G H I J K L M N O P Q R S T U V W X Y Z "
    "0 1 2 3 4 5 6 7 8 9 name price total date id code item qty amount"
)


def build_tokenizer(vocab_size: int = 600, *, bos_first: bool = False, image_token: str = "<|image_pad|>"
                    ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus and wrap it for transformers.

    ``bos_first``: encoding with special tokens puts the BOS token (here ``<|endoftext|>``) first, as Llama's
    tokenizer does (LLaVA-1.5); ``image_token``: the image token HF's processor reads (``tokenizer.image_token``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [_WORDS, _WORDS.lower(), _WORDS.upper()] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    if bos_first:
        bos = ("<|endoftext|>", tok.token_to_id("<|endoftext|>"))
        tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                           special_tokens=[bos])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token="<|endoftext|>",
        extra_special_tokens={"image_token": image_token, "video_token": "<|video_pad|>"},
    )
