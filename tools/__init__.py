"""Project tools that use the model library from outside it (`model/` never imports `tools/`).

`tools.conformance`: the reference-vector runners behind `ovi conformance DIR`.
"""
