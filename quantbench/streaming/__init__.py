"""Models bigger than memory: quantize straight from the checkpoint on disk.

Every method here reads the source safetensors one tensor (or one decoder layer) at a time
(formats/safetensors_stream.py) and appends its output to the artifact as it goes, so host memory
holds a process baseline, one decoder layer and the calibration activations, never the model.
`budget.py` states that peak, term by term, and the disk each method needs, for `quantbench plan`.
"""
