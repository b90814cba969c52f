"""litere: LiteResearcher-style agentic RL in plain PyTorch."""
import importlib.util
from pathlib import Path


def _check_kernels_package() -> None:
    """`kernels/` sits beside `litere/`; another distribution named `kernels` (the Hugging Face Hub's, which
    transformers 5.25 and later install) can shadow it, and the model would then fail deep inside a forward pass."""
    spec = importlib.util.find_spec("kernels")
    ours = Path(__file__).resolve().parents[1] / "kernels" / "__init__.py"
    found = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if found != ours:
        raise ImportError(
            f"the module 'kernels' resolves to {found or 'nothing'}, not litere's {ours}: another package named "
            "'kernels' is installed in this environment (the Hugging Face 'kernels', which transformers>=5.25 "
            "depends on). Remove it (`pip uninstall kernels`, with transformers<5.25) or use a separate environment.")


_check_kernels_package()
