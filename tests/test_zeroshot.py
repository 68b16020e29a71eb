"""The zero-shot recommender: users as pooled vectors, as text and as a free-text profile; cold start;
explanations; the CLI on a bare catalogue; item text and tags."""

import json

import numpy as np
import pandas as pd
import pytest
from test_encoders import SCENARIO_BAD, SCENARIO_GOOD, SCENARIO_QUERY, BagOfWords

from llmrec import cli, encoders, models, synthetic, text
from llmrec.data import Catalog
from llmrec.errors import DataError, LLMRecError
from llmrec.models.base import load_model

encoders.register("test-bow", BagOfWords, "bag-of-words stub for tests")


@pytest.fixture(scope="module")
def topics():
    """200 synthetic items from 10 topics, with titles, descriptions, tags and genres."""
    return synthetic.make(n_users=50, n_items=200, seed=1)


def _topic_items(ds, name):
    return set(ds.catalog.frame.item_id[ds.catalog.frame.genres == name])


# -- item text ----------------------------------------------------------------------------------------
def test_template_drops_parts_with_missing_fields():
    t = text.DEFAULT_TEMPLATE
    assert text.render({"title": "Alien", "year": 1979, "genres": "Horror, Sci-Fi"}, t) == \
        "Alien (1979). Genres: Horror, Sci-Fi"
    assert text.render({"title": "Alien", "year": float("nan"), "tags": "space"}, t) == "Alien. Tags: space"
    assert text.render({"title": "X"}, "{title} by {author}") == "X by"


def test_template_reads_author_and_publisher_and_leaves_movielens_text_alone():
    t = text.DEFAULT_TEMPLATE
    assert text.render({"title": "Clara Callan", "year": 2001, "author": "Richard Bruce Wright",
                        "publisher": "HarperFlamingo Canada"}, t) == \
        "Clara Callan (2001). By Richard Bruce Wright. HarperFlamingo Canada"
    assert text.render({"title": "Dune", "author": "Frank Herbert"}, t) == "Dune. By Frank Herbert"
    # a film (no author, no publisher): the text the MovieLens figures were measured on, byte for byte
    old = "{title}[ ({year})][. Genres: {genres}][. {description}][. Tags: {tags}]"
    film = {"title": "Toy Story", "year": 1995, "genres": "Animation, Children's, Comedy"}
    assert text.render(film, t) == text.render(film, old) == "Toy Story (1995). Genres: Animation, Children's, Comedy"


def test_catalogue_with_no_text_column_is_a_clear_error():
    cat = Catalog.from_frame(pd.DataFrame({"item_id": ["a", "b"], "price": [1, 2]}))
    with pytest.raises(DataError, match="no text column.*'price'"):
        text.item_texts(cat)


def test_item_with_empty_text_falls_back_to_its_id():
    cat = Catalog.from_frame(pd.DataFrame({"item_id": ["a", "b"], "title": ["Alien", None]}))
    with pytest.warns(UserWarning, match="1 item"):
        assert text.item_texts(cat) == ["Alien", "b"]


def test_tags_chosen_from_a_vocabulary_and_written_back(tmp_path):
    cat = Catalog.from_frame(pd.DataFrame({"item_id": ["a", "b", "c"],
                                           "title": ["space robots", "bread baking", "old"],
                                           "tags": [None, None, "kept"]}))
    vocab = ["space", "bread", "robots", "garden"]
    tagged, n = text.tag_catalog(cat, vocab, BagOfWords(), k=2, min_similarity=0.1)
    assert n == 2
    assert set(text.split_tags(tagged.frame.tags[0])) == {"space", "robots"}
    assert text.split_tags(tagged.frame.tags[1]) == ["bread"]
    assert tagged.frame.tags[2] == "kept" and cat.frame.tags[:2].isna().all()  # a copy: original untouched
    out = text.write_catalog(tagged, tmp_path / "tagged.jsonl")
    back = pd.read_json(out, lines=True, dtype=False)
    assert list(back.tags) == list(tagged.frame.tags)
    (tmp_path / "vocab.txt").write_text("# tags\nspace\n\nbread\n")
    assert text.load_vocabulary(tmp_path / "vocab.txt") == ["space", "bread"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        text.load_vocabulary(tmp_path / "empty.txt")


# -- the model with the stub encoder (fast) -------------------------------------------------------------
def test_history_user_is_recency_weighted(topics):
    m = models.get("zero-shot", encoder="test-bow", cache=False, recency=0.5).fit(topics, progress=False)
    h = np.array([3, 7, 11])
    v = m.user_vectors([h])[0]
    w = np.array([0.25, 0.5, 1.0])
    np.testing.assert_allclose(v, (w[:, None] * m.item_vectors[h]).sum(0) / w.sum(), rtol=1e-5)
    assert not m.user_vectors([np.zeros(0, np.int64)]).any()


def test_history_as_text_encodes_the_titles(topics):
    m = models.get("zero-shot", encoder="test-bow", cache=False, user="text", max_history=2).fit(
        topics, progress=False)
    v = m.user_vectors([np.array([3, 7, 11])])[0]
    t = topics.catalog.titles([7, 11])
    np.testing.assert_allclose(v, BagOfWords().encode([f"{t[0]}; {t[1]}"])[0], rtol=1e-5)


@pytest.mark.parametrize("user,encoder", [("pool", "test-bow"),
                                          pytest.param("text", "minilm-onnx", marks=pytest.mark.slow)])
def test_recommends_the_users_topic(topics, user, encoder):
    m = models.get("zero-shot", encoder=encoder, user=user).fit(topics, progress=False)
    sci = sorted(_topic_items(topics, "science fiction"))
    recs = m.recommend(histories=[sci[:5]], k=10)
    got = [x for x in recs.item_ids[0] if x is not None]
    assert not set(got) & set(sci[:5])
    assert len(set(got) & set(sci)) >= 6, got


def test_explanations_name_history_items_similarities_and_shared_tags(topics):
    m = models.get("zero-shot", encoder="test-bow", cache=False).fit(topics, progress=False)
    sci = sorted(_topic_items(topics, "science fiction"))
    recs = m.recommend(histories=[sci[:4] + sci[:2]], k=3, explain=True)
    for e in recs.explanations[0]:
        assert 1 <= len(e["because"]) <= 3
        assert len({b["item_id"] for b in e["because"]}) == len(e["because"])  # a repeat is named once
        b = e["because"][0]
        assert b["item_id"] in sci[:4] and -1.0 <= b["similarity"] <= 1.0 and "title" in b
        assert "science fiction" in e["shared_tags"]


def test_approximate_index_agrees_with_exact(topics):
    exact = models.get("zero-shot", encoder="test-bow", cache=False).fit(topics, progress=False)
    hnsw = models.get("zero-shot", encoder="test-bow", cache=False, index="hnsw").fit(topics, progress=False)
    users = list(topics.users.ids()[:10])
    a, b = exact.recommend(users=users, k=5), hnsw.recommend(users=users, k=5)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert all(not set(b.item_ids[r]) & set(topics.catalog.ids.ids(hnsw.history_of(u)))
               for r, u in enumerate(users))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_items_added_to_an_approximate_index_without_a_rebuild(topics, tmp_path, kind):
    """A PUT at a million items must not rebuild the index: new items are added to it, an updated item is
    scored exactly beside it; answers equal the exact index's, also after a save and load."""
    exact = models.get("zero-shot", encoder="test-bow", cache=False).fit(topics, progress=False)
    ann = models.get("zero-shot", encoder="test-bow", cache=False, index=kind,
                     tune_queries=0).fit(topics, progress=False)  # the default search: exhaustive at this size
    built = ann.index
    new = [{"item_id": f"n{j}", "title": t} for j, t in enumerate(["red planet colony", "bread and soup"])]
    changed = [{"item_id": topics.catalog.ids.id(3), "title": "red planet colony ships"},
               {"item_id": topics.catalog.ids.id(7), "title": "soup of the day"}]
    for m in (exact, ann):
        m.add_items(new)
        m.add_items(changed)
    assert ann.index is built and len(ann.index) == len(topics.catalog) + 2, "the index was rebuilt"
    users = list(topics.users.ids()[:10])
    queries = ["red planet colony", "soup", "a quiet garden"]

    def same(a, b):
        for x, y in ((a.recommend(users=users, k=8), b.recommend(users=users, k=8)),
                     (a.recommend_text(queries, k=8), b.recommend_text(queries, k=8))):
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
    same(exact, ann)
    top = ann.recommend_text(["red planet colony ships"], k=2).item_ids[0]
    assert topics.catalog.ids.id(3) in top and "n0" in top
    ann.save(tmp_path / "ck")
    same(exact, models.load_model(tmp_path / "ck"))


def test_bad_config_values():
    with pytest.raises(LLMRecError, match="recency"):
        models.get("zero-shot", recency=0.0)
    with pytest.raises(LLMRecError, match="unknown key"):
        models.get("zero-shot", encoderr="minilm")


# -- real encoders: cold start, new users, the Chinese scenario, the CLI --------------------------------
@pytest.fixture(scope="module")
def zs(topics):
    return models.get("zero-shot", encoder="minilm-onnx").fit(topics, progress=False)


@pytest.mark.slow
def test_new_user_with_a_sentence_gets_that_topic(zs, topics):
    recs = zs.recommend_text(["I want to learn python programming and write better code"], k=10)
    prog = _topic_items(topics, "programming")
    assert len(set(recs.item_ids[0]) & prog) >= 7, recs.item_ids[0]


@pytest.mark.slow
def test_profile_explanation_names_profile_words(zs):
    recs = zs.recommend_text(["gardening: flowers and tomato seeds"], k=3, explain=True)
    e = recs.explanations[0][0]
    assert e["profile_words"][0]["word"] in {"gardening", "flowers", "tomato", "seeds"}
    assert e["shared_tags"]


@pytest.mark.slow
def test_new_item_by_text_alone_is_recommendable_at_once(topics, tmp_path):
    enc = encoders.CachedEncoder(encoders.get("minilm-onnx"), folder=tmp_path)
    m = models.get("zero-shot", encoder="minilm-onnx").fit(topics, progress=False)
    m._encoder = enc  # a private cache folder, to count what is encoded
    m._encode_catalog(progress=False)
    before = enc.misses
    idx = m.add_items([{"item_id": "new-1", "title": "Kubernetes for Python developers",
                        "description": "deploying software and databases with code"}])
    assert enc.misses == before + 1  # only the new item was encoded
    assert idx[0] == len(topics.catalog) and len(m.catalog) == len(topics.catalog) + 1
    recs = m.recommend_text(["kubernetes deployment for python developers"], k=3)
    assert recs.item_ids[0][0] == "new-1"
    m.add_items([{"item_id": "new-1", "title": "A bread recipe", "description": "baking"}])  # update
    assert "new-1" not in set(m.recommend_text(["kubernetes deployment"], k=3).item_ids[0])


@pytest.mark.slow
def test_chinese_scenario_through_the_recommender():
    cat = Catalog.from_frame(pd.DataFrame({"item_id": [f"i{i}" for i in range(15)],
                                           "title": SCENARIO_GOOD + SCENARIO_BAD}))
    m = models.get("zero-shot", encoder="multilingual").fit_catalog(cat, progress=False)
    recs = m.recommend_text([SCENARIO_QUERY], k=4)
    assert set(recs.item_ids[0]) == {"i0", "i1", "i2", "i3"}


@pytest.mark.slow
def test_cli_chinese_profile_over_a_chinese_english_catalogue_with_the_default_encoder(tmp_path, capsys):
    """`llmrec recommend --items F --text "我最近喜欢看科幻电影和编程书籍"` with no --encoder: the catalogue's
    CJK text picks the multilingual encoder (said on stderr), and the sci-fi films and programming books
    come first (MiniLM, the old default, put a romance novel, a gardening book and a wok there)."""
    english = ["A romance novel for the beach", "Garden tools for beginners", "A carbon steel wok",
               "Easy weeknight cookbook", "A mechanical keyboard"]
    titles = SCENARIO_GOOD + SCENARIO_BAD + english
    p = tmp_path / "zh.csv"
    pd.DataFrame({"item_id": [f"i{i}" for i in range(len(titles))], "title": titles}).to_csv(p, index=False)
    rc = cli.main(["recommend", "--items", str(p), "--text", SCENARIO_QUERY, "-k", "4", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "encoder use-multilingual" in err
    assert {it["item_id"] for it in json.loads(out)["items"]} == {"i0", "i1", "i2", "i3"}


@pytest.fixture
def catalog_file(tmp_path):
    p = tmp_path / "items.csv"
    pd.DataFrame({"item_id": ["b1", "f1", "c1", "g1"],
                  "title": ["Deep learning with Python", "Alien invasion: a science fiction film",
                            "Home cooking recipes", "Gardening tools"],
                  "tags": ["programming, books", "sci-fi, film", "cooking", "garden"]}).to_csv(p, index=False)
    return p


@pytest.mark.slow
def test_cli_recommend_free_text_on_a_bare_catalogue(catalog_file, capsys):
    rc = cli.main(["recommend", "--items", str(catalog_file), "--text",
                   "I have been into sci-fi films and programming books lately", "-k", "2",
                   "--encoder", "minilm-onnx", "--explain", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {it["item_id"] for it in out["items"]} == {"b1", "f1"}
    assert out["items"][0]["explanation"]["profile_words"]


@pytest.mark.slow
def test_service_serves_zero_shot_from_a_bare_catalogue(catalog_file, tmp_path):
    from llmrec import pipeline, service
    model, source = pipeline.obtain(items=str(catalog_file), model="zero-shot")
    engine = service.open_engine(model, tmp_path / "state", source)
    try:
        out = engine.recommend(text="a science fiction film about aliens", k=1, explain=True)
        assert out["items"][0]["item_id"] == "f1" and out["items"][0]["explanation"]["profile_words"]
        engine.upsert_item("n1", {"title": "Time travel paradoxes: a science fiction film"})
        assert "n1" in {it["item_id"] for it in engine.recommend(text="time travel film", k=2)["items"]}
    finally:
        engine.store.close()


def test_cli_errors_are_one_line(tmp_path, capsys):
    p = tmp_path / "items.csv"
    pd.DataFrame({"item_id": ["a"], "price": [3]}).to_csv(p, index=False)
    assert cli.main(["recommend", "--items", str(p), "--text", "space", "--encoder", "test-bow"]) == 2
    assert "no text column" in capsys.readouterr().err
    assert cli.main(["recommend", "--items", str(p), "--text", "space", "--encoder", "nope"]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err
    assert cli.main(["recommend", "--items", str(p), "--text", "", "--encoder", "test-bow"]) == 2
    assert cli.main(["evaluate", "--dataset", "synthetic-20-20-0", "--encoder", "minilm"]) == 2
    assert "uses no text encoder" in capsys.readouterr().err
    assert cli.main(["recommend", "--items", str(p)]) == 2
    assert "--user" in capsys.readouterr().err


def test_cli_tags_command(catalog_file, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("science fiction\nprogramming\ncooking\n")
    out = tmp_path / "tagged.csv"
    assert cli.main(["tags", "--items", str(catalog_file), "--vocab", str(vocab), "--out", str(out),
                     "--encoder", "test-bow", "--all", "-k", "1"]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 4 and frame.tags.notna().all()
    assert cli.main(["encoders"]) == 0 and "minilm-onnx" in capsys.readouterr().out


def test_auto_encoder_chosen_once_and_saved_with_index(topics, tmp_path, monkeypatch):
    """``encoder=auto`` picks by catalogue size at fit and the checkpoint keeps that choice (queries must
    use the catalogue's encoder); an approximate index is saved beside it and loaded, not rebuilt."""
    monkeypatch.setattr(encoders, "auto", lambda n, texts=None: "test-bow" if n == len(topics.catalog) else "nope")
    m = models.get("zero-shot", cache=False, index="ivf").fit(topics, progress=False)
    assert m.encoder_name == "test-bow" and m.benchmark_extra()["encoder"] == "test-bow"
    users = list(topics.users.ids()[:5])
    before = m.recommend(users=users, k=5)
    m.save(tmp_path / "zs")
    assert (tmp_path / "zs" / "encoder.txt").read_text().strip() == "test-bow"
    assert (tmp_path / "zs" / "items.index").exists()
    built = []
    monkeypatch.setattr(models.zeroshot.vindex, "make", lambda *a, **k: built.append(a) or None)
    back = models.load_model(tmp_path / "zs")
    assert built == [] and back.encoder_name == "test-bow" and len(back.index) == len(topics.catalog)
    np.testing.assert_array_equal(back.recommend(users=users, k=5).item_ids, before.item_ids)
    monkeypatch.undo()
    exact = models.get("zero-shot", encoder="test-bow", cache=False).fit(topics, progress=False)
    with pytest.raises(LLMRecError, match="an index of kind ivf over 200 cosine vectors, but this model"):
        exact.load_index(tmp_path / "zs" / "items.index")


def test_fit_tunes_an_approximate_index_on_users_queries(topics, tmp_path):
    m = models.get("zero-shot", encoder="test-bow", cache=False, index="hnsw", recall=0.99)
    m.fit(topics, progress=False)
    t = m.index_tuning
    assert t["param"] == "ef_search" and m.index.params["ef_search"] == t["value"] and t["recall_at_k"] >= 0.99
    assert t["queries"] == sum(len(h) > 0 for h in m._histories[:500])
    m.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.index.params["ef_search"] == t["value"]  # the setting travels with the saved index
    off = models.get("zero-shot", encoder="test-bow", cache=False, index="hnsw", tune_queries=0)
    off.fit(topics, progress=False)
    assert off.index_tuning == {} and off.index.params["ef_search"] == 512


def test_reindex_rebuilds_the_index_without_encoding(topics):
    m = models.get("zero-shot", encoder="test-bow", cache=False).fit(topics, progress=False)
    users = list(topics.users.ids()[:10])
    before = m.recommend(users=users, k=5)
    vectors = m.item_vectors
    tuning = m.reindex("ivf")
    assert m.config.index == "ivf" and m.index.kind == "ivf" and m.item_vectors is vectors
    assert tuning["param"] == "nprobe" and tuning["recall_at_k"] >= 0.95
    after = m.recommend(users=users, k=5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(before.item_ids, after.item_ids)]) >= 0.9
