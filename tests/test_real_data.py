"""Real data: the named data sets load with the published sizes, and the baselines land on the figures
this protocol gives (a different figure means the protocol changed)."""

import pytest

from llmrec import datasets, evaluate, models, split

pytestmark = pytest.mark.slow

# dataset -> (users, rated items, interactions, {model: (HR@10, NDCG@10)}); itemknn at its default
# neighbors=40 (with every neighbour kept, neighbors=0: ml-100k 0.1082 / 0.0558, ml-1m 0.0699 / 0.0359)
EXPECTED = {
    "ml-100k": (943, 1682, 100_000, {"popular": (0.0859, 0.0449), "itemknn": (0.1039, 0.0526)}),
    "ml-1m": (6040, 3706, 1_000_209, {"popular": (0.0369, 0.0180), "itemknn": (0.0722, 0.0367)}),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def real(request):
    ds = datasets.load(request.param, quiet=True)
    return request.param, ds, split.leave_one_out(ds)


def test_sizes(real):
    name, ds, sp = real
    users, items, n, _ = EXPECTED[name]
    st = ds.stats()
    assert (st["users"], st["items_with_interactions"], st["interactions"]) == (users, items, n)
    assert len(sp.test_users) == users  # every MovieLens user has >= 20 ratings
    assert {"title", "genres", "year"} <= set(ds.catalog.frame.columns)


@pytest.mark.parametrize("model", ["popular", "itemknn"])
def test_baseline_figures(real, model):
    name, ds, sp = real
    m = models.get(model).fit(ds, sp, progress=False)
    res = evaluate.evaluate(m, sp, ds.n_users, ds.n_items, ks=(10,), progress=False)
    hr, ndcg = EXPECTED[name][3][model]
    assert res.metrics["HR@10"] == pytest.approx(hr, abs=2e-4)
    assert res.metrics["NDCG@10"] == pytest.approx(ndcg, abs=2e-4)
    assert res.n_candidates == EXPECTED[name][1]


def test_fetch_is_cached_and_checked(tmp_path, monkeypatch):
    path = datasets.fetch("ml-100k", quiet=True)
    assert path.exists() and datasets._sha256(path) == datasets.SOURCES["ml-100k"].sha256


def test_grouplens_folder_loader(tmp_path):
    """The original GroupLens layout (u.data / u.item), written here from the fetched copy."""
    ds = datasets.load("ml-100k", quiet=True)
    inter = ds.interactions
    lines = [f"{ds.users.id(u)}\t{ds.catalog.ids.id(i)}\t{int(v)}\t{int(t)}"
             for u, i, v, t in zip(inter.user[:500], inter.item[:500], inter.value[:500],
                                   inter.timestamp[:500])]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    rows = []
    for r in ds.catalog.frame.itertuples():
        flags = ["0"] * 19
        rows.append("|".join([r.item_id, f"{r.title} ({r.year})", f"01-Jan-{r.year}", "", "url", *flags]))
    (tmp_path / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1", errors="replace")
    g = datasets.load_grouplens(tmp_path)
    assert len(g.interactions) == 500
    assert g.catalog.titles()[0] == ds.catalog.titles()[0]


def test_demo_the_readme_main_job(capsys):
    from llmrec.cli import main
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "users evaluated: 943" in out and "HR@10  0.1039" in out
    tail = out.split("a new user, no history, says:")[1]
    assert tail.count("closest words:") == 5
    assert "Star" in tail  # "space adventures and robots": a space film leads the zero-shot list
