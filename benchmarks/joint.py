"""What joint training changes: the published single-cell foundation model's embeddings
feed a parametric UMAP and a cell-type classifier, trained end to end on pbmc3k; the 2-D
k-nearest-neighbour accuracy of held-out cells is measured before and after.

``python -m benchmarks.joint``; the last line is one JSON object.
"""

from __future__ import annotations

import json
import time

import zoo
from finetuning.joint import train_cell_map
from finetuning.tasks import cell_types


def main() -> None:
    task = cell_types("pbmc3k")
    backbone = zoo.from_pretrained("fm-pbmc3k-tiny")
    start = time.perf_counter()
    result = train_cell_map(backbone, task, steps=300, umap_steps=500)
    print(
        json.dumps(
            {
                "name": "joint_fm_umap_classifier_pbmc3k",
                "seconds": round(time.perf_counter() - start, 1),
                "steps": result.steps,
                "knn_accuracy_before": round(result.knn_accuracy_before, 4),
                "knn_accuracy_after": round(result.knn_accuracy_after, 4),
                "backbone_gradient_norm_first_step": result.backbone_gradient_norm,
            }
        )
    )


if __name__ == "__main__":
    main()
