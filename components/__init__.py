"""Kubeflow Pipelines components of AutoInterp Full: one per stage (see steps.py).

`components.runtime` holds what the components do as plain functions; `components.steps` holds
the KFP component definitions (importing it needs the `kfp` extra).
"""
