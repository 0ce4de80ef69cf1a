"""compile: from a trained timm ViT and a dataset to a build directory (DESIGN §2), one module per stage.

data (datasets, transforms) → checkpoint (the only timm.create_model / weight loading) → teacher (the original's
outputs, label-order check, class similarity) → partition (class groups) → prune/ (importance, plan, surgery) →
distill (KD fine-tuning with the "other" class) → fuse (fusion heads) → peer (the class-agnostic baseline) →
build (writes / reads the build dir). pipeline runs them; resume, jobs, sizing and ladder serve it.
"""
