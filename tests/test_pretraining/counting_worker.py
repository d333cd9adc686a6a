"""``python -m pretraining`` with a counting reader, for the multi-process tests: every batch
a process asks for (step, part, global rows) and every row read from a cell file is
appended to the JSON-lines file ``$COUNT_LOG``.

    COUNT_LOG=reads.jsonl python counting_worker.py expression CORPUS --out OUT ...
"""

from __future__ import annotations

import json
import os
import sys

from pretraining import cli
from pretraining.count_files import CountFile
from pretraining.expression_data import CellBatches


def main() -> int:
    log = open(os.environ["COUNT_LOG"], "a", buffering=1)  # noqa: SIM115 (lives as long as the run)
    batch, read_rows = CellBatches.batch, CountFile.read_rows

    def counted_batch(self, step, rows, part=0):
        log.write(json.dumps({"step": int(step), "part": int(part), "rows": list(rows)}) + "\n")
        return batch(self, step, rows, part)

    def counted_rows(self, rows):
        log.write(json.dumps({"read": len(rows)}) + "\n")
        return read_rows(self, rows)

    CellBatches.batch, CountFile.read_rows = counted_batch, counted_rows
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
