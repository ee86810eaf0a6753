"""`quantbench fit`: the best GGUF that fits a memory budget, chosen tensor by tensor.

candidates.py (which ggml types each tensor can really take), budget.py (what the runtime holds),
sensitivity.py (what each (tensor, type) costs in KL divergence), activations.py (what llama.cpp's rounding of
each matmul's input adds, by type), write.py (llama.cpp writes the plan),
pipeline.py (the whole thing). The allocator itself is methods/allocate.py.
"""
