"""Special tokens shared by scratch tokenizers (Qwen2's names, so chat tooling recognises them)."""
EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS, "<|im_start|>", "<|im_end|>")
