"""Model adapters: one per model family, chosen from the model's class (see :func:`get_adapter`)."""

from vtprune.adapters.base import Adapter, EncodedBatch, Sample, get_adapter, register_adapter, supported_families
from vtprune.adapters import internvl as _internvl  # noqa: F401  (registration)
from vtprune.adapters import llava as _llava  # noqa: F401  (registration)
from vtprune.adapters import llava_onevision as _llava_onevision  # noqa: F401  (registration)
from vtprune.adapters import molmo2 as _molmo2  # noqa: F401  (registration)
from vtprune.adapters import qwen2_vl as _qwen2_vl  # noqa: F401  (registration)
from vtprune.adapters import qwen3_vl as _qwen3_vl  # noqa: F401  (registration)
from vtprune.adapters import qwen3_5 as _qwen3_5  # noqa: F401  (registration)
from vtprune.adapters.spec import FamilySpec, family_spec, family_specs

__all__ = ["Adapter", "EncodedBatch", "FamilySpec", "Sample", "family_spec", "family_specs", "get_adapter",
           "register_adapter", "supported_families"]
