"""Image folders read batch by batch (``eval --workers``): the same batches as the in-memory loader."""
import torch

from advshield.data.folder import image_folder
from advshield.data.stream import FolderStream


def test_stream_batches_equal_in_memory_batches(gray_tree):
    whole = image_folder(gray_tree)
    for workers in (0, 2):
        stream = image_folder(gray_tree, stream=True, workers=workers)
        assert isinstance(stream, FolderStream) and len(stream) == len(whole) == 10
        assert stream.sample_shape == whole.sample_shape == (1, 28, 28)
        assert torch.equal(stream.labels, whole.labels) and stream.classes == whole.classes
        got, want = list(stream.batches(4)), list(whole.batches(4))
        assert [len(y) for _, y in got] == [4, 4, 2]
        for (xa, ya), (xb, yb) in zip(got, want):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_stream_subset_relabel_and_resize(gray_tree):
    stream = image_folder(gray_tree, stream=True, size=(20, 24))
    part = stream.subset(3, offset=2)
    assert len(part) == 3 and part.sample_shape == (1, 20, 24)
    x, _ = next(part.batches(8))
    assert x.shape == (3, 1, 20, 24) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert torch.equal(x[0], image_folder(gray_tree, size=(20, 24))[2][0])
    relabelled = part.relabel(torch.tensor([7, 8, 9]))
    assert relabelled.labels.tolist() == [7, 8, 9] and len(relabelled) == 3


def test_sharded_batches_read_only_owned_ones(gray_tree, monkeypatch):
    """Rank 1 of 2 reads batch 0 (the engine probes on it) and its own batch 1; batch 2 is a placeholder."""
    from advshield import distributed

    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    stream = image_folder(gray_tree, stream=True)
    reads = []
    real = FolderStream.item
    monkeypatch.setattr(FolderStream, "item", lambda self, i: reads.append(i) or real(self, i))
    got = list(stream.batches(4, sharded=True))
    assert sorted(reads) == list(range(8))
    assert float(got[2][0].abs().sum()) == 0 and got[2][0].shape == (2, 1, 28, 28)
    assert got[2][1].tolist() == stream.labels[8:].tolist()
