"""Class-wise structured pruning of timm VisionTransformer models (importance -> plan -> surgery).

Import the submodules directly (`from edvit_tool.compile.prune.surgery import apply_keep`); this package imports
nothing heavy so `import edvit_tool.compile.prune` stays cheap.
"""
