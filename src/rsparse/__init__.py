"""rsparse: rank-aware activation sparsity (R-Sparse) for Hugging Face causal LMs.

```python
import rsparse
rsparse.sparsify(model, target=0.5)   # calibrate, budget, install RSparseLinear
print(rsparse.summary(model))
```
"""

__version__ = "0.1.0"

from rsparse.api import sparsify
from rsparse.config import LayerBudget, RSparseConfig
from rsparse.hf import from_pretrained  # also registers the "rsparse" method with transformers
from rsparse.nn import RSparseLinear, set_mode
from rsparse.ops import set_backend
from rsparse.summary import Summary, summary

__all__ = [
    "sparsify",
    "from_pretrained",
    "summary",
    "set_mode",
    "set_backend",
    "RSparseConfig",
    "LayerBudget",
    "RSparseLinear",
    "Summary",
    "__version__",
]
