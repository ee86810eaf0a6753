"""BOS by default exactly when the model's tokenizer adds it (HF folder: the tokenizer's own add_bos_token;
GGUF source: tokenizer.ggml.add_bos_token), overridable."""

from __future__ import annotations

import json

import gguf
import pytest

from quantbench.eval.bos import default_bos, tokenizer_adds_bos
from quantbench.sources.model import SOURCE_GGUF_FILE


def small_tokenizer(add_bos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "x": 3, "y": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return LlamaTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                              add_bos_token=add_bos, add_eos_token=False)


@pytest.mark.parametrize("add_bos", [True, False])
def test_hf_folder_follows_the_tokenizers_own_add_bos_token(add_bos, tmp_path):
    tok = small_tokenizer(add_bos)
    assert tok.add_bos_token is add_bos  # the oracle: the tokenizer's own setting
    assert tokenizer_adds_bos(tok) is add_bos
    decision = default_bos(tmp_path, tok)
    assert decision.add_bos is add_bos and "tokenizer" in decision.reason


@pytest.mark.parametrize("flag", [True, False])
def test_gguf_source_follows_add_bos_token(flag, tmp_path):
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_add_bos_token(flag)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / SOURCE_GGUF_FILE).write_text(json.dumps({"gguf": str(path)}))
    decision = default_bos(folder, small_tokenizer(not flag))  # the GGUF's key wins over the rebuilt tokenizer
    assert decision.add_bos is flag and f"add_bos_token = {str(flag).lower()}" in decision.reason


def test_flags_override(tmp_path):
    assert default_bos(tmp_path, small_tokenizer(True), override=False).add_bos is False
    assert default_bos(tmp_path, small_tokenizer(False), override=True).reason == "--add-bos"


@pytest.mark.parametrize("tokenizer_adds", [True, False])
def test_the_windows_follow_the_models_tokenizer_unless_overridden(tokenizer_adds, tiny_model, tiny_text_file, tmp_path):
    """api.prepare: every window starts with BOS exactly when the model's tokenizer puts BOS first
    (checked on the tokenizer itself), the protocol says why, and --add-bos/--no-add-bos win."""
    import shutil

    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from quantbench import api

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    bos = tok.bos_token_id
    if tokenizer_adds:
        tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
        tok.save_pretrained(folder)
    oracle = AutoTokenizer.from_pretrained(folder)("some text")["input_ids"][0] == bos
    assert oracle is tokenizer_adds

    for override, expect in ((None, tokenizer_adds), (True, True), (False, False)):
        settings = api.Settings(protocol=api.PerplexityProtocol(window=32, max_windows=2), add_bos=override)
        work = api.prepare(str(folder), str(tiny_text_file), settings)
        assert work.settings.protocol.bos_token_id == (bos if expect else None)
        assert all((w.input_ids[0] == bos) is expect for w in work.windows), override
        assert all(len(w.targets) == 31 + expect for w in work.windows)  # with BOS the first token is scored too
        if override is None:
            assert ("adds BOS" if tokenizer_adds else "adds no BOS") in work.bos_rule
        else:
            assert work.bos_rule == ("--add-bos" if override else "--no-add-bos")


def test_cli_bos_flags():
    from quantbench.cli.common import settings_from
    from quantbench.cli.main import build_parser

    parser = build_parser()
    assert settings_from(parser.parse_args(["compare"])).add_bos is None
    assert settings_from(parser.parse_args(["compare", "--add-bos"])).add_bos is True
    assert settings_from(parser.parse_args(["eval", "x", "--no-add-bos"])).add_bos is False
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--add-bos", "--no-add-bos"])
