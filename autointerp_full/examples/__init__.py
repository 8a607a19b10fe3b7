"""Example windows for each latent: quantile-sampled activating windows (train and test) and
non-activating windows from a chosen source (random, neighbours or FAISS)."""

from autointerp_full.examples.builder import ExampleBuilder, build_latent_record, build_records
from autointerp_full.examples.decode import TokenDecoder, load_tokenizer
from autointerp_full.examples.non_activating import make_non_activating_source
from autointerp_full.examples.types import Example, LatentRecord

__all__ = [
    "Example",
    "ExampleBuilder",
    "LatentRecord",
    "TokenDecoder",
    "build_latent_record",
    "build_records",
    "load_tokenizer",
    "make_non_activating_source",
]
