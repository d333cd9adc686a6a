"""The minimal model card written next to every checkpoint (Hub YAML metadata + config)."""

from __future__ import annotations

import json

from zoo.config import Config


def render_card(architecture: str, config: Config) -> str:
    """A Markdown model card with Hub metadata naming the library and the architecture."""
    return (
        "---\n"
        "library_name: biozoo\n"
        f"tags:\n- biozoo\n- {architecture}\n"
        "---\n\n"
        f"# {architecture}\n\n"
        "Load it with:\n\n"
        '```python\nimport zoo\nmodel = zoo.from_pretrained("path/to/this/folder")\n```\n\n'
        "## Configuration\n\n"
        f"```json\n{json.dumps(config.to_dict(), indent=2)}\n```\n"
    )
