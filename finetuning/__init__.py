"""Downstream tasks: heads, freezing/LoRA, evaluation, CLI.

The four functions for a user's own data are importable from here: `embed`, `finetune`,
`predict` and `evaluate` (`finetuning.api`). They load on first use, so importing the
package (as the command line does) stays quick.
"""

from __future__ import annotations

from typing import Any

__all__ = ["embed", "evaluate", "finetune", "predict"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from finetuning import api

        return getattr(api, name)
    raise AttributeError(f"module 'finetuning' has no attribute {name!r}")
