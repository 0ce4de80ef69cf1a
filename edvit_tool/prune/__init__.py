"""Class-wise structured pruning of timm VisionTransformer models (importance -> plan -> surgery).

Import the submodules directly (`from edvit_tool.prune.surgery import apply_keep`); this package imports
nothing heavy so `import edvit_tool.prune` stays cheap.
"""
