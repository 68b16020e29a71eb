"""Items with pictures: an image-text model (CLIP-style: a text tower and an image tower trained into one
vector space) encodes an item's image beside its text, so an item with a picture and no text is still
recommendable and a text query finds items by their picture.

The model is read offline from a local folder holding a transformers ``CLIPModel`` (``config.json`` and
weights), its tokenizer and its image processor: the encoder name ``clip:/path/to/folder``. No package on
the registries this project installs from ships CLIP weights, so none is built in.

``ClipEncoder`` is an ``encoders.Encoder`` (texts, through the text tower) that also ``encode_images``
(paths, through the image tower); ``fuse`` mixes an item's two unit vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .encoders import Encoder
from .errors import DataError, LLMRecError
from .vectors import l2_normalize

PREFIX = "clip:"


@runtime_checkable
class EncodesImages(Protocol):
    """An encoder that also maps images into its text vector space: float32 [n, dim] per image path."""

    def encode_images(self, paths: list[str], batch_size: int = 16) -> np.ndarray: ...


def load_image(path: str | Path, field: str = "image"):
    """The image at ``path`` as RGB (PIL); a missing file or one that is not an image is a ``DataError``
    naming the path."""
    from PIL import Image, UnidentifiedImageError
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError("no such image file" if not p.exists() else "is not a file, expected an image",
                        path=str(path), field=field)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"not an image ({type(e).__name__}: {e})", path=str(path), field=field) from None


def fuse(text: np.ndarray, image: np.ndarray, has_text: np.ndarray, has_image: np.ndarray,
         image_weight: float) -> np.ndarray:
    """Per item: ``(1 - w) * text + w * image`` renormalised when it has both, the image vector alone when
    it has no text, the text vector alone when it has no image. All float32 [n, d], rows unit length."""
    text, image = l2_normalize(np.asarray(text, np.float32)), np.asarray(image, np.float32)
    both = has_text & has_image
    out = text.copy()
    if both.any():
        out[both] = l2_normalize((1 - image_weight) * text[both] + image_weight * l2_normalize(image[both]))
    only = has_image & ~has_text
    if only.any():
        out[only] = l2_normalize(image[only])
    return out


class ClipEncoder(Encoder):
    """A local CLIP folder: texts through the text tower, images through the image tower, both projected
    into the shared space (``dim`` = the projection size)."""

    def __init__(self, folder: str | Path, threads: int = 0):
        super().__init__()
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
        folder = Path(folder).expanduser()
        if not (folder / "config.json").exists():
            raise LLMRecError(f"{folder}: not an image-text model folder (no config.json)")
        try:
            self.model = CLIPModel.from_pretrained(folder).eval()
            self.tok = AutoTokenizer.from_pretrained(folder)
            self.processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise LLMRecError(f"cannot load the image-text model in {folder}: {e}") from None
        cfg = self.model.config
        self.name, self.key = f"{PREFIX}{folder}", f"clip:{folder.resolve()}"
        self.dim = int(cfg.projection_dim)
        self.max_tokens = int(cfg.text_config.max_position_embeddings)
        self.threads = threads

    @staticmethod
    def _features(out) -> np.ndarray:
        """transformers returns a tensor, or (5.x) an output whose pooled, projected vector is the answer."""
        import torch
        t = out if isinstance(out, torch.Tensor) else out.pooler_output
        return t.detach().float().cpu().numpy()

    def _encode_batch(self, texts: list[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from .lm import torch_threads
        enc = self.tok(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        full = self.tok(texts, add_special_tokens=True)["input_ids"]
        with torch_threads(self.threads), torch.inference_mode():
            v = self._features(self.model.get_text_features(input_ids=enc["input_ids"],
                                                            attention_mask=enc["attention_mask"]))
        return v.astype(np.float32), np.array([len(x) > self.max_tokens for x in full])

    def encode_images(self, paths: list[str], batch_size: int = 16) -> np.ndarray:
        """float32 [n, dim], L2-normalised; each path is checked (``load_image``) before any is encoded."""
        import torch

        from .lm import torch_threads
        images = [load_image(p) for p in paths]
        out = np.zeros((len(paths), self.dim), np.float32)
        for s in range(0, len(images), batch_size):
            px = self.processor(images=images[s:s + batch_size], return_tensors="pt")["pixel_values"]
            with torch_threads(self.threads), torch.inference_mode():
                out[s:s + batch_size] = self._features(self.model.get_image_features(pixel_values=px))
        return l2_normalize(out)
