"""The zoo: small real models trained here from Python's own text (no hub needed).

``build_zoo("demo")`` gives a Llama **base** trained on code + prose, two **experts**
fine-tuned from it (feed-forward blocks only), one per domain, and a narrower **GPT-2** model
trained on code: the sets that merging, MoE assembly and MoL fusion need.
"""

from mol.zoo._build import Zoo, build_zoo, cache_root, load_zoo, zoo_dir
from mol.zoo._corpus import DOMAINS, Corpus, load_corpus
from mol.zoo._specs import ZOO_SIZES, ZOO_VERSION, ModelSpec, ZooSpec, get_spec

__all__ = [
    "DOMAINS",
    "ZOO_SIZES",
    "ZOO_VERSION",
    "Corpus",
    "ModelSpec",
    "Zoo",
    "ZooSpec",
    "build_zoo",
    "cache_root",
    "get_spec",
    "load_corpus",
    "load_zoo",
    "zoo_dir",
]
