"""The AutoInterp Kubeflow pipeline: its DAG (pipeline.py), compile step and submission CLI."""
