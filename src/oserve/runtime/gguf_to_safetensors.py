"""Convert a GGUF checkpoint to a Hugging Face safetensors folder (weights, config, tokenizer).

Run as a script by the interpreter that has vLLM (``PYTHON gguf_to_safetensors.py GGUF OUT_DIR``):
that environment has transformers and torch, and with the ``gguf`` and ``accelerate`` packages
transformers reads GGUF files (dequantising to float32). This file imports nothing from oserve, so it
runs in an environment where oserve is not installed. No network: everything comes from the GGUF file.
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers marks a model read from GGUF as quantized and refuses ``save_pretrained``; its
    # weights are already dequantized to float32, so the state dict and config are written directly
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shares the embedding's storage; vLLM ties it again
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit(f"{gguf_path}: the GGUF file has no chat template")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gguf_to_safetensors.py GGUF_FILE OUT_DIR", file=sys.stderr)
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    return 0


__all__ = ["convert", "main"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
