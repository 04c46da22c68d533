"""The fp16 on-disk feature cache: round trip, invalidation by key and by image source,
atomic writes, resumable and lazily-loading extraction, memory-mapped reads, and the
``feature3dgs extract`` command line on a generated scene."""

from __future__ import annotations

import json
import os
import tracemalloc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feature3dgs.cli.main import main
from feature3dgs.distill.cache import FeatureCache, extract_features
from feature3dgs.distill.teachers.base import Teacher


pytestmark = pytest.mark.usefixtures("one_thread_module")


def extract_main(argv):
    """``feature3dgs extract ARGV`` in this process; its exit status."""
    return main(["extract", *argv])


class CountingTeacher(Teacher):
    """A cheap deterministic teacher: 4x4 average pooling and a fixed 1x1 projection."""

    def __init__(self, dim: int = 6, resolution: int = 16, weights: str = "fake-1"):
        self.name, self.dim, self.resolution, self.weights_id, self.is_random = "fake", dim, resolution, weights, False
        g = torch.Generator().manual_seed(0)
        self.net = torch.nn.Conv2d(3, dim, 1)
        with torch.no_grad():
            self.net.weight.copy_(torch.randn(dim, 3, 1, 1, generator=g) * 50)
        self.calls = 0
        self.images = 0

    @property
    def module(self):
        return self.net

    def feature_size(self, h, w):
        return h // 4, w // 4

    def _extract(self, images):
        self.calls += 1
        self.images += images.shape[0]
        return self.net(F.avg_pool2d(images, 4))


def _img(seed, h=16, w=24):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _items(n, h=16, w=24, calls=None, fail_at=None, sources=None):
    def loader(i):
        def load():
            if calls is not None:
                calls.append(i)
            if fail_at is not None and i == fail_at:
                raise RuntimeError("disk gone")
            return _img(i, h, w)
        return load
    return [(f"view/{i:03d}.png", loader(i), None if sources is None else sources[i]) for i in range(n)]


# ---------------------------------------------------------------------- the cache
def test_round_trip_fp16_memory_mapped(tmp_path):
    cache = FeatureCache(tmp_path, "t|weights=w|res=1|v=1", meta={"dim": 7})
    x = torch.randn(7, 5, 9) * 100
    cache.save("a/b c.png", x, source="s1", info={"image_size": [20, 36]})
    assert cache.has("a/b c.png") and cache.has("a/b c.png", "s1") and not cache.has("a/b c.png", "s2")
    assert "a/b c.png" in cache and cache.names() == ["a/b c.png"] and len(cache) == 1
    y = cache.load("a/b c.png")
    assert y.dtype == torch.float32 and y.shape == (7, 5, 9)
    assert torch.equal(y, x.half().float())                        # exactly the fp16 value
    torch.testing.assert_close(y, x, rtol=1e-3, atol=0)
    assert cache.load("a/b c.png", dtype=torch.float16).dtype == torch.float16
    mm = cache.memmap("a/b c.png")
    assert isinstance(mm, np.memmap) and mm.dtype == np.float16 and not mm.flags.writeable
    assert os.path.samefile(mm.filename, cache.file("a/b c.png"))
    assert cache.file("a/b c.png").stat().st_size == 128 + 7 * 5 * 9 * 2  # .npy header + fp16 payload
    assert cache.info("a/b c.png")["info"] == {"image_size": [20, 36]} and cache.shape("a/b c.png") == (7, 5, 9)
    # a second instance (another process) sees the entry
    again = FeatureCache(tmp_path, "t|weights=w|res=1|v=1")
    assert again.path == cache.path and again.meta == {"dim": 7} and torch.equal(again.load("a/b c.png"), y)
    with pytest.raises(KeyError):
        cache.load("missing")
    cache.remove("a/b c.png")
    assert not cache.has("a/b c.png") and cache.names() == []


def test_load_reads_one_entry_without_extra_copies(tmp_path):
    cache = FeatureCache(tmp_path, "k")
    for i in range(4):
        cache.save(f"n{i}", torch.randn(64, 32, 64))
    fp32 = 64 * 32 * 64 * 4
    tracemalloc.start()
    try:
        for i in range(4):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t = cache.load(f"n{i}")
            peak = tracemalloc.get_traced_memory()[1] - base
            del t
    finally:
        tracemalloc.stop()
    # one float32 array per load (read through the memory map); no fp16 copy, no other entries
    assert fp32 <= peak < 1.2 * fp32


def test_key_change_is_a_different_cache(tmp_path):
    a = FeatureCache(tmp_path, "sam-vit_h|weights=sha256:aa|res=1024|v=1")
    b = FeatureCache(tmp_path, "sam-vit_h|weights=sha256:bb|res=1024|v=1")
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path
    a.save("x", torch.ones(2, 2, 2))
    assert a.has("x") and not b.has("x") and b.names() == []
    # teachers: weights, resolution and feature version all change the key
    t = CountingTeacher()
    keys = {FeatureCache.for_teacher(tmp_path, tt).path
            for tt in (t, CountingTeacher(resolution=32), CountingTeacher(weights="fake-2"))}
    assert len(keys) == 3
    t2 = CountingTeacher()
    t2.version = 2
    assert FeatureCache.for_teacher(tmp_path, t2).path != FeatureCache.for_teacher(tmp_path, t).path
    assert FeatureCache.for_teacher(tmp_path, CountingTeacher()).path == FeatureCache.for_teacher(tmp_path, t).path
    found = FeatureCache.find(tmp_path)
    assert len(found) == 6
    assert {c.key for c in FeatureCache.find(tmp_path, "fake")} == {t.cache_key(), t2.cache_key(),
                                                                    CountingTeacher(resolution=32).cache_key(),
                                                                    CountingTeacher(weights="fake-2").cache_key()}
    with pytest.raises(FileNotFoundError):
        FeatureCache(tmp_path, "never-created", create=False)


def test_manifest_mismatch_is_refused(tmp_path):
    c = FeatureCache(tmp_path, "k1")
    m = json.loads((c.path / "manifest.json").read_text())
    (c.path / "manifest.json").write_text(json.dumps(dict(m, key="other")))
    with pytest.raises(RuntimeError, match="holds key"):
        FeatureCache(tmp_path, "k1")
    (c.path / "manifest.json").write_text(json.dumps(dict(m, format=99)))
    with pytest.raises(RuntimeError, match="format"):
        FeatureCache(tmp_path, "k1")


def test_save_validates(tmp_path):
    c = FeatureCache(tmp_path, "k", meta={"dim": 3})
    with pytest.raises(ValueError, match="not finite"):
        c.save("a", torch.full((3, 2, 2), 1e6))     # overflows float16
    with pytest.raises(ValueError, match="not finite"):
        c.save("a", torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\(D, h, w\)"):
        c.save("a", torch.ones(3, 4))
    with pytest.raises(ValueError, match="channels"):
        c.save("a", torch.ones(4, 2, 2))
    assert c.names() == []


def test_failed_write_leaves_no_entry_and_no_stale_data(tmp_path, monkeypatch):
    c = FeatureCache(tmp_path, "k")
    c.save("a", torch.ones(2, 3, 3))

    def broken(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        c.save("a", torch.zeros(2, 3, 3))
    with pytest.raises(OSError):
        c.save("b", torch.zeros(2, 3, 3))
    monkeypatch.undo()
    # the old "a" is no longer reported (it was being replaced), "b" never was; no temp files left
    assert not c.has("a") and not c.has("b") and c.names() == []
    assert sorted(p.name for p in c.path.iterdir()) == sorted(["manifest.json", c.file("a").name])
    c.save("a", torch.zeros(2, 3, 3))
    assert torch.equal(c.load("a"), torch.zeros(2, 3, 3))


# ---------------------------------------------------------------------- extraction
def test_extract_resumable(tmp_path):
    t = CountingTeacher()
    cache = FeatureCache.for_teacher(tmp_path, t)
    calls: list[int] = []
    res = extract_features(t, _items(5, calls=calls), cache, batch_size=2, progress=False)
    assert res.extracted == [f"view/{i:03d}.png" for i in range(5)] and res.skipped == []
    assert t.calls == 3 and t.images == 5 and calls == [0, 1, 2, 3, 4]
    for i in range(5):
        f = cache.load(f"view/{i:03d}.png")
        assert f.shape == (6, 4, 6)
        torch.testing.assert_close(f, t.extract(_img(i)), rtol=1e-3, atol=1e-3)
        assert cache.info(f"view/{i:03d}.png")["info"]["image_size"] == [16, 24]
    # a second run extracts nothing and loads no image
    calls.clear()
    t.calls = t.images = 0
    res = extract_features(t, _items(5, calls=calls), cache, batch_size=2, progress=False)
    assert res.extracted == [] and len(res.skipped) == 5 and t.calls == 0 and calls == []
    # overwrite re-extracts everything
    res = extract_features(t, _items(5), cache, batch_size=4, progress=False, overwrite=True)
    assert len(res.extracted) == 5 and t.calls == 2


def test_interrupted_extraction_finishes_the_rest(tmp_path):
    t = CountingTeacher()
    cache = FeatureCache.for_teacher(tmp_path, t)
    with pytest.raises(RuntimeError, match="disk gone"):
        extract_features(t, _items(6, fail_at=3), cache, batch_size=2, progress=False)
    done = cache.names()
    assert done == ["view/000.png", "view/001.png"]   # item 2 was in the unfinished batch
    t.calls = t.images = 0
    res = extract_features(t, _items(6), cache, batch_size=2, progress=False)
    assert res.skipped == done and res.extracted == [f"view/{i:03d}.png" for i in range(2, 6)]
    assert t.images == 4 and len(cache) == 6


def test_changed_source_is_extracted_again(tmp_path):
    t = CountingTeacher()
    cache = FeatureCache.for_teacher(tmp_path, t)
    extract_features(t, _items(3, sources=["s0", "s1", "s2"]), cache, progress=False)
    res = extract_features(t, _items(3, sources=["s0", "s1-new", "s2"]), cache, progress=False)
    assert res.extracted == ["view/001.png"] and res.skipped == ["view/000.png", "view/002.png"]
    assert cache.info("view/001.png")["source"] == "s1-new"
    assert cache.missing(["view/000.png", "view/009.png"]) == ["view/009.png"]


def test_extraction_holds_at_most_one_batch_of_images(tmp_path):
    t = CountingTeacher()
    cache = FeatureCache.for_teacher(tmp_path, t)
    alive: list[weakref.ref] = []
    worst = []

    def items():
        for i in range(9):
            def load(i=i):
                worst.append(sum(r() is not None for r in alive))
                im = _img(i)
                alive.append(weakref.ref(im))
                return im
            yield f"n{i}", load

    extract_features(t, items(), cache, batch_size=3, progress=False, total=9)
    assert len(cache) == 9
    assert max(worst) <= 2   # while loading an image, only the current batch's earlier images exist
    assert all(r() is None for r in alive)


def test_extract_checks_key_and_names(tmp_path):
    t = CountingTeacher()
    other = FeatureCache(tmp_path, "another-teacher")
    with pytest.raises(ValueError, match="cache key"):
        extract_features(t, _items(1), other, progress=False)
    cache = FeatureCache.for_teacher(tmp_path, t)
    dup = _items(2)
    with pytest.raises(ValueError, match="duplicate"):
        extract_features(t, [dup[0], dup[0]], cache, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(t, dup, cache, batch_size=0, progress=False)


def test_random_teacher_warns(tmp_path):
    t = CountingTeacher()
    t.is_random = True
    with pytest.warns(UserWarning, match="RANDOM"):
        extract_features(t, _items(1), FeatureCache.for_teacher(tmp_path, t), progress=False)


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    from feature3dgs.data import make_synthetic_scene

    return make_synthetic_scene(tmp_path_factory.mktemp("scene"), n_views=3, n_test=1, width=40, height=30,
                                n_points=200, supersample=1)


def test_extract_cli_end_to_end(small_scene, tmp_path, capsys):
    pytest.importorskip("open_clip")
    from feature3dgs.data import load_scene
    from feature3dgs.distill.teachers import DenseClipTeacher

    argv = ["--data", str(small_scene), "--teacher", "clip", "--random-weights-for-testing", "--cache-dir",
            str(tmp_path), "--no-progress", "--batch-size", "2", "--device", "cpu"]
    assert extract_main(argv) == 0
    err = capsys.readouterr().err
    assert "RANDOM" in err and "extracted 4, already cached 0" in err
    (cache,) = FeatureCache.find(tmp_path, "clip-tiny")
    scene = load_scene(small_scene)
    names = [v.name for v in scene.views]
    assert cache.names() == sorted(names) and len(names) == 4
    teacher = DenseClipTeacher.tiny_random(seed=0, resolution=64)
    assert cache.key == teacher.cache_key() and cache.meta["is_random"] is True
    for v in scene.views:
        f = cache.load(v.name)
        assert f.shape == (512, 3, 4)       # 30x40 -> 48x64 input -> 3x4 patches
        torch.testing.assert_close(f, teacher.extract(scene.load_image(v)), atol=2e-3, rtol=2e-3)
    mtimes = {n: cache.file(n).stat().st_mtime_ns for n in names}

    # resume: nothing to do
    assert extract_main(argv) == 0
    assert "extracted 0, already cached 4" in capsys.readouterr().err
    assert {n: cache.file(n).stat().st_mtime_ns for n in names} == mtimes

    # an image file that changed is extracted again, and only that one
    v0 = scene.views[0]
    st = v0.image_path.stat()
    os.utime(v0.image_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert extract_main(argv) == 0
    assert "extracted 1, already cached 3" in capsys.readouterr().err
    assert all((cache.file(n).stat().st_mtime_ns == mtimes[n]) == (n != v0.name) for n in names)

    # another input resolution is another cache
    assert extract_main(argv + ["--resolution", "32", "--split", "train"]) == 0
    assert "extracted 3, already cached 0" in capsys.readouterr().err
    assert len(FeatureCache.find(tmp_path, "clip-tiny")) == 2


def test_extract_cli_errors(small_scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEATURE3DGS_OFFLINE", "1")
    base = ["--data", str(small_scene), "--cache-dir", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert extract_main(base + ["--teacher", "lseg"]) == 2
    assert "demo_e200.ckpt" in capsys.readouterr().err
    assert extract_main(base + ["--teacher", "sam", "--weights-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "sam_vit_h_4b8939.pth" in err and "dl.fbaipublicfiles.com" in err
    assert extract_main(["--data", str(tmp_path / "nowhere"), "--teacher", "clip"]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        extract_main(base + ["--teacher", "dino"])
