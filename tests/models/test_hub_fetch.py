"""A hub model is downloaded by rank 0 only; the other ranks wait and load the same local snapshot."""

from __future__ import annotations

import pytest

from sposd.errors import UserError
from sposd.models.paths import fetch_hub_model


class Ranks:
    """Two ranks' calls, interleaved as the gather orders them: rank 0 runs up to the gather, then rank 1."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail, self.outcome = [], fail, []

    def download(self, rank):
        def call(model_id, *, local_files_only):
            self.calls.append((rank, "cache" if local_files_only else "network"))
            if self.fail and not local_files_only:
                raise OSError("401 Client Error: Repository Not Found\nmore detail")
            return f"/hf/{model_id}/snap"

        return call

    def gather(self, rank):
        def call(obj):
            self.calls.append((rank, "gather"))
            if rank == 0:
                self.outcome = [obj]
            return self.outcome

        return call


def test_rank_0_downloads_then_the_others_read_the_cache():
    r = Ranks()
    paths = [fetch_hub_model("Qwen/Qwen3-8B", rank=k, download=r.download(k), gather=r.gather(k)) for k in (0, 1)]
    assert paths == ["/hf/Qwen/Qwen3-8B/snap"] * 2
    assert r.calls == [(0, "network"), (0, "gather"), (1, "gather"), (1, "cache")]  # rank 1 never downloads


def test_a_failed_download_is_one_line_on_every_rank():
    r = Ranks(fail=True)
    for k in (0, 1):
        with pytest.raises(UserError, match=r"model.path='no/such': cannot fetch it .*Repository Not Found\)$"):
            fetch_hub_model("no/such", rank=k, download=r.download(k), gather=r.gather(k))
    assert (1, "cache") not in r.calls
