"""Encoders: the protocol, the on-disk cache, bad input, and (marked slow) the real models: the ONNX fast
path against the sentence-transformers reference, the Chinese scenario, SmolLM2."""

import warnings

import numpy as np
import pandas as pd
import pytest

from llmrec import encoders
from llmrec.errors import LLMRecError, UnknownNameError


class BagOfWords(encoders.Encoder):
    """A deterministic stub: hashed word counts; 'truncates' texts over 32 words. Counts calls."""

    name, key, dim, max_tokens = "bow", "test:bow", 64, 32

    def __init__(self, fail_on: str | None = None):
        super().__init__()
        self.calls, self.encoded, self.fail_on = 0, [], fail_on

    def _encode_batch(self, texts, kind):
        self.calls += 1
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError("model crashed")
        self.encoded += texts
        out = np.zeros((len(texts), self.dim), np.float32)
        for r, t in enumerate(texts):
            for w in t.lower().split()[:self.max_tokens]:
                out[r, sum(map(ord, w)) % self.dim] += 1.0
        return out, np.array([len(t.split()) > self.max_tokens for t in texts])


def test_protocol_shape_dtype_normalisation_and_order():
    enc = BagOfWords()
    texts = ["a long text about space and robots", "space", "cooking bread"]
    x = enc.encode(texts, batch_size=2)
    assert x.shape == (3, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)
    one_by_one = np.vstack([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(x, one_by_one, rtol=1e-6)  # length-sorted batches keep input order
    raw = enc.encode(texts, normalize=False)
    assert raw[0].sum() == 7.0
    assert enc.encode([]).shape == (0, 64)


@pytest.mark.parametrize("bad,msg", [(["ok", ""], "text 1 is empty"), (["  \n"], "text 0 is empty"),
                                     ([None], "text 0 is NoneType"), ("one string", "not one string")])
def test_empty_or_wrong_text_is_an_error(bad, msg):
    with pytest.raises(LLMRecError, match=msg):
        BagOfWords().encode(bad)


def test_overlong_text_truncated_with_one_warning():
    enc = BagOfWords()
    long = " ".join(["word"] * 50)
    with pytest.warns(UserWarning, match=r"1 text\(s\) longer than the model's window of 32 tokens"):
        enc.encode([long, "short"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: no second warning
        enc.encode([long + " again"])


def test_unknown_encoder_name_lists_the_choices():
    with pytest.raises(UnknownNameError, match=r"unknown encoder 'no-such-encoder'; valid choices: .*minilm"):
        encoders.get("no-such-encoder")
    with pytest.raises(LLMRecError, match="empty"):
        encoders.get("")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LLMRecError, match="not a model folder"):
        encoders.get(str(tmp_path))
    with pytest.raises(LLMRecError, match="not a model folder"):
        encoders.get(str(tmp_path / "notes.txt"))


def test_cache_encodes_only_new_texts(tmp_path):
    inner = BagOfWords()
    enc = encoders.CachedEncoder(inner, folder=tmp_path)
    a = enc.encode(["space opera", "bread baking", "space opera"])
    assert enc.misses == 2 and enc.hits == 1 and len(inner.encoded) == 2
    b = enc.encode(["bread baking", "new item about robots"])
    assert inner.encoded[-1] == "new item about robots" and len(inner.encoded) == 3
    np.testing.assert_allclose(a[1], b[0])
    # a new process (a fresh wrapper) reads the shards back: nothing is encoded again
    inner2 = BagOfWords()
    enc2 = encoders.CachedEncoder(inner2, folder=tmp_path)
    c = enc2.encode(["space opera", "bread baking", "new item about robots"])
    assert inner2.encoded == [] and enc2.hits == 3
    np.testing.assert_allclose(c[:2], a[:2], rtol=1e-6)
    # the kind is part of the key: a query is cached apart from a passage
    enc2.encode(["space opera"], kind="query")
    assert inner2.encoded == ["space opera"]
    assert (next(tmp_path.iterdir()) / "model.txt").read_text().strip() == "test:bow"


def test_queries_are_cached_in_memory_only_and_bounded(tmp_path):
    """What users type never reaches the disk (no one can fill it, no one's words outlive the process),
    and the in-memory copy keeps only the most recent queries."""
    inner = BagOfWords()
    enc = encoders.CachedEncoder(inner, folder=tmp_path, query_cache=3)
    enc.encode(["a catalogue item"])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    texts = [f"my private interests number {j}" for j in range(10)]
    first = enc.encode(texts, kind="query")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a query was written to disk"
    for f in tmp_path.rglob("*.npy"):
        assert b"private" not in f.read_bytes()
    assert len(enc._queries) == 3
    n = len(inner.encoded)
    again = enc.encode(texts[-3:] + texts[-1:], kind="query")  # the newest three are served from memory
    assert len(inner.encoded) == n
    np.testing.assert_allclose(again[:3], first[-3:], rtol=1e-6)
    enc.encode(texts[:1], kind="query")  # the oldest was dropped: encoded again
    assert len(inner.encoded) == n + 1


def test_cache_writes_whole_shards_only(tmp_path):
    enc = encoders.CachedEncoder(BagOfWords(fail_on="boom"), folder=tmp_path, shard_size=2)
    with pytest.raises(RuntimeError):
        enc.encode(["a b", "c d", "e f boom", "g h"], batch_size=1)
    with pytest.raises(LLMRecError):
        enc.encode(["fine", ""])  # bad input is refused before anything is encoded
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith(".tmp")]
    shards = list(tmp_path.rglob("*.keys.npy"))
    assert len(shards) == 1  # the first whole chunk, nothing from the chunk that failed
    fresh = BagOfWords()
    encoders.CachedEncoder(fresh, folder=tmp_path).encode(["a b", "c d", "g h"])
    assert fresh.encoded == ["g h"]


def test_register_and_describe():
    encoders.register("test-bow", BagOfWords, "a stub")
    assert encoders.get("test-bow") is encoders.get("test-bow")
    assert encoders.describe()["test-bow"] == "a stub"
    assert encoders.describe()["multilingual"].startswith("alias of")


# -- real models (offline, from the llm extra's packages) -------------------------------------------
SCENARIO_QUERY = "我最近喜欢看科幻电影和编程书籍"
SCENARIO_GOOD = ["一本关于深度学习的经典书籍", "一部关于外星生命的科幻电影", "一本关于机器学习的教材",
                 "一部关于时空旅行的科幻电影"]
SCENARIO_BAD = ["一本家常菜谱", "一套园艺工具", "一本浪漫爱情小说", "一本关于烘焙甜点的食谱", "一双跑步鞋",
                "一部浪漫喜剧电影", "一本关于园艺种植的指南", "一套厨房刀具", "一张古典音乐专辑",
                "一本关于理财投资的书", "一部关于婚礼的爱情电影"]


@pytest.fixture(scope="module")
def sentences():
    from llmrec import synthetic
    ds = synthetic.make(n_users=5, n_items=120, seed=3)
    return [f"{t}. {d}" for t, d in zip(ds.catalog.frame.title, ds.catalog.frame.description, strict=True)]


@pytest.mark.slow
def test_onnx_fast_path_agrees_with_sentence_transformers(sentences):
    ref = encoders.get("minilm").encode(sentences)
    fast = encoders.get("minilm-onnx").encode(sentences)
    cos = (ref * fast).sum(1)
    assert cos.min() >= 0.9999, cos.min()  # fp32 ONNX: the same function to float rounding
    int8 = encoders.get("minilm-onnx-int8").encode(sentences)
    cos8 = (ref * int8).sum(1)
    assert cos8.min() >= 0.98 and cos8.mean() >= 0.99, (cos8.min(), cos8.mean())  # int8: looser, stated


@pytest.mark.slow
def test_minilm_l3_int8_agrees_with_its_fp32_graph_and_finds_the_same_neighbour(sentences):
    fp32 = encoders.get("minilm-l3-onnx").encode(sentences)
    int8 = encoders.get("minilm-l3-onnx-int8").encode(sentences)
    assert fp32.shape == (len(sentences), 384)
    cos = (fp32 * int8).sum(1)
    assert cos.min() >= 0.98 and cos.mean() >= 0.99, (cos.min(), cos.mean())
    a, b = fp32 @ fp32.T, int8 @ int8.T
    np.fill_diagonal(a, -1)
    np.fill_diagonal(b, -1)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9


@pytest.mark.slow
def test_real_encoder_warns_once_on_overlong_text():
    enc = encoders.get("minilm-onnx")
    enc._warned = False
    with pytest.warns(UserWarning, match="window of 256 tokens were truncated"):
        enc.encode(["space " * 600])


@pytest.mark.slow
def test_chinese_scenario_with_the_multilingual_encoder():
    enc = encoders.get("multilingual")
    q = enc.encode([SCENARIO_QUERY], kind="query")
    s = (enc.encode(SCENARIO_GOOD + SCENARIO_BAD) @ q.T).ravel()
    assert s[:4].min() > s[4:].max(), np.round(s, 3)


@pytest.mark.slow
def test_smollm2_causal_lm_as_encoder():
    enc = encoders.get("smollm2")
    x = enc.encode(["a film about aliens", "a film about aliens", "a bread recipe"])
    assert x.shape == (3, enc.dim) and enc.dim == 576 and np.isfinite(x).all()
    np.testing.assert_allclose(x[0], x[1], atol=1e-5)


class DiesAfter(BagOfWords):
    """Raises (as a kill would stop it) once ``n_batches`` batches have been encoded."""

    def __init__(self, n_batches: int):
        super().__init__()
        self.left = n_batches

    def _encode_batch(self, texts, kind):
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return super()._encode_batch(texts, kind)


def test_streamed_encode_killed_midway_resumes_without_re_encoding(tmp_path):
    texts = [f"item number {i} about {'space ' * (i % 7)}robots" for i in range(1_000)]
    reference = BagOfWords().encode(texts)
    # chunks of 100 texts, batches of 25: the kill comes in the 4th batch of the 4th chunk
    dying = DiesAfter(3 * 4 + 3)
    with pytest.raises(KeyboardInterrupt):
        encoders.CachedEncoder(dying, folder=tmp_path, shard_size=100).encode(texts, batch_size=25)
    done = len(dying.encoded)
    assert done == 375 and len(list(tmp_path.rglob("*.keys.npy"))) == 3  # 3 whole chunks on disk
    fresh = BagOfWords()
    enc = encoders.CachedEncoder(fresh, folder=tmp_path, shard_size=100)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(1_000, 64))
    got = enc.encode(texts, batch_size=25, out=out)
    assert got is out
    assert len(fresh.encoded) == 700 and not set(fresh.encoded) & set(dying.encoded[:300])
    assert (enc.hits, enc.misses) == (300, 700)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy", mmap_mode="r"), reference)
    # a second run reads every vector back from the memory-mapped chunks
    again = BagOfWords()
    np.testing.assert_array_equal(encoders.CachedEncoder(again, folder=tmp_path).encode(texts), reference)
    assert again.encoded == []


def test_progress_bar_counts_every_text(tmp_path, monkeypatch):
    seen = []
    real = encoders._bar

    def spy(total, done, name, progress):
        bar = real(total, done, name, progress)
        seen.append(bar)
        return bar
    monkeypatch.setattr(encoders, "_bar", spy)
    enc = encoders.CachedEncoder(BagOfWords(), folder=tmp_path, shard_size=10)
    enc.encode([f"text {i}" for i in range(25)], progress=True)
    enc.encode([f"text {i}" for i in range(30)], progress=True)
    assert [(b.total, b.n) for b in seen] == [(25, 25), (30, 30)]  # not chunks: texts, cached ones included


def test_auto_encoder_by_catalogue_language_and_size():
    """The fast path (minilm-onnx: cosine >= 0.9999 to minilm, the same benchmark figures) by default;
    a catalogue with CJK text gets the multilingual encoder, at any size."""
    english = ["Alien Worlds", "Home Cooking", "Deep learning with Python"] * 10
    assert encoders.auto(3_706) == encoders.auto(30, english) == "minilm-onnx"
    assert encoders.auto(encoders.LARGE_CATALOGUE) == encoders.auto(1_000_000) == "minilm-onnx-int8"
    mixed = english + SCENARIO_GOOD
    assert encoders.auto(len(mixed), mixed) == encoders.auto(10**6, mixed) == "use-multilingual"
    assert encoders.auto(2_000, english * 100 + ["一本书"]) == "minilm-onnx"  # one stray title is not a language
    assert "CJK" in encoders.auto_reason("use-multilingual")


def test_one_way_to_obtain_minilm(monkeypatch, tmp_path):
    """textseq's and semantic-ids' item embeddings come from ``encoders.get`` (with its cache), and the
    fine-tuner's trainable model from ``encoder_backends.sentence_transformer``: no loader of their own."""
    from llmrec import encoder_backends, finetune
    from llmrec.data import Catalog
    from llmrec.models import semantic_ids, textseq
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path))
    stub = BagOfWords()
    monkeypatch.setitem(encoders.BUILTIN, "minilm", ("stub", lambda: stub))
    monkeypatch.setattr(encoders, "_LOADED", {})
    texts = ["a film about space", "a bread recipe"]
    np.testing.assert_allclose(textseq.text_embeddings(texts, "minilm"), stub.encode(texts), atol=1e-6)
    cat = Catalog.from_frame(pd.DataFrame({"item_id": ["a", "b"], "title": texts}))
    x = semantic_ids.embed_items(cat, "minilm", 0)
    assert x.shape == (2, stub.dim) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert stub.encoded.count("a film about space") == 2  # once per loaded copy, then the cache
    loaded = []
    monkeypatch.setattr(encoder_backends, "sentence_transformer",
                        lambda name, device="cpu": loaded.append((name, device)) or "model")
    assert finetune.load_encoder("minilm", "cpu") == "model" and loaded == [("minilm", "cpu")]
