"""The speech pipeline, one stage per module, in flow order:

decode -> resample -> vad -> recognize, tied together per call by `engine.EngineStream`.
`models` resolves model names to loaded model objects (loaded once per process).
"""
