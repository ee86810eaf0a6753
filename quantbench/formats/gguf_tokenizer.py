"""The tokenizer a GGUF file carries, written as llama.cpp's converter (convert_hf_to_gguf.py) writes it:
SentencePiece-style vocabularies as tokenizer model "llama", byte-level BPE as "gpt2" with llama.cpp's
name for its pre-tokenizer."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from quantbench.errors import QuantbenchError

log = logging.getLogger(__name__)


# Pre-tokenizer names llama.cpp knows, keyed by the sha256 of str(token ids) of the converter's check
# text (llama.cpp convert_hf_to_gguf.py get_vocab_base_pre; the text and hashes are its data).
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM-135M
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding-0.6B
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # gpt2
}


def bpe_pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, or "default" if unknown."""
    chkhsh = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    pre = _PRE_TOKENIZERS.get(chkhsh)
    if pre is None:
        log.warning(
            "unknown BPE pre-tokenizer (hash %s): writing 'default'. quantbench feeds token ids, so "
            "measurements are unaffected, but llama.cpp's own tokenization of text may differ.",
            chkhsh[:12],
        )
        return "default"
    return pre


def add_tokenizer(writer, model_dir: Path, vocab_size: int) -> str:
    """Write the tokenizer as llama.cpp's converter does; returns the tokenizer kind written."""
    import gguf
    from gguf.vocab import LlamaHfVocab, SentencePieceVocab

    vocab = None
    if (model_dir / "tokenizer.model").is_file():
        try:
            vocab = SentencePieceVocab(model_dir)
        except Exception as exc:  # sentencepiece missing or an unusual .model file
            log.info("sentencepiece vocab not usable (%s); trying tokenizer.json", exc)
    if vocab is None and (model_dir / "tokenizer.json").is_file():
        try:
            vocab = LlamaHfVocab(model_dir)  # byte-fallback BPE in SentencePiece style (Llama 2, Mistral)
        except (FileNotFoundError, TypeError):
            vocab = None  # byte-level BPE (Llama 3, SmolLM, Qwen2): handled below
    if vocab is not None:
        tokens, scores, toktypes = [], [], []
        for text, score, toktype in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            toktypes.append(toktype)
        for i in range(len(tokens), vocab_size):  # the embedding may be padded past the tokenizer
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            toktypes.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens[:vocab_size])
        writer.add_token_scores(scores[:vocab_size])
        writer.add_token_types(toktypes[:vocab_size])
        gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        return "llama"
    if not (model_dir / "tokenizer.json").is_file():
        raise QuantbenchError(f"{model_dir}: no tokenizer (tokenizer.json or tokenizer.model); GGUF files carry the tokenizer")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reverse_vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, toktypes = [], []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added:
            special = decoder[i].special if i in decoder else False
            looks_special = token.startswith("<|") and token.endswith("|>")
            toktypes.append(gguf.TokenType.CONTROL if special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(bpe_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(writer, quiet=True)
    return "gpt2"
