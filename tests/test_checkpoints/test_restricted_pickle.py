"""The restricted unpickler admits Geneformer-style plain-data dictionaries and refuses any
other global before running it."""

import os
import pickle

import numpy as np
import pytest

from checkpoints.restricted_pickle import UnsafePickleError, load_plain_data, loads_plain_data


class WritesMarker:
    """Unpickling this calls ``os.system`` (or ``builtins.exec``) to create a marker file."""

    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_geneformer_style_dictionaries_round_trip(tmp_path, protocol):
    tokens = {"<pad>": 0, "<mask>": 1, "ENSG00000000003": np.int16(2)}
    medians = {"ENSG00000000003": np.float64(2.001186), "ENSG00000000005": np.float64(0.5)}
    data = {"tokens": tokens, "medians": medians, "more": [True, None, 1.5, "x", (1, 2)]}
    path = tmp_path / "dictionary.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_plain_data(path)
    assert loaded == data
    assert type(loaded["tokens"]["ENSG00000000003"]) is np.int16
    assert type(loaded["medians"]["ENSG00000000003"]) is np.float64
    assert type(loaded["tokens"]["<pad>"]) is int


@pytest.mark.parametrize("how, name", [("system", "system"), ("exec", "builtins.exec")])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, how, name):
    marker = tmp_path / "marker"
    payload = pickle.dumps({"ENSG00000000003": WritesMarker(marker, how)})
    with pytest.raises(UnsafePickleError, match=name):
        loads_plain_data(payload)
    assert not marker.exists()
    pickle.loads(payload)  # the same bytes do run code under the ordinary unpickler
    assert marker.exists()


def test_object_arrays_and_other_numpy_globals_are_refused():
    with pytest.raises(UnsafePickleError, match="numpy"):
        loads_plain_data(pickle.dumps(np.arange(3)))
    with pytest.raises(UnsafePickleError, match="not a numeric dtype"):
        loads_plain_data(pickle.dumps(np.dtype("O")))
