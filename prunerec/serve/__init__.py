"""`prunerec serve`: an HTTP recommendation service over one engine (vLLM, transformers or
onnxruntime). Every answer is a ranked list of real catalog items, produced by the same
trie-constrained beam search as `prunerec evaluate` (prunerec.search.beam), with BIGRec-style L2
grounding of a free generation as a fallback. See docs/serve.md."""
