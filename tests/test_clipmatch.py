"""ClipMatch with a tiny offline open_clip model, hand-worked cases with a stub embedder, the
class-embedding cache (miss, hit, new key), deduplication, and exact / contains matching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vqa_ood_bench.errors import ConfigError, DataError
from vqa_ood_bench.score.clipmatch import (
    ClipMatcher,
    OpenClipTextEmbedder,
    TextEmbedder,
    resolve_templates,
)
from vqa_ood_bench.score.text import contains_match, exact_match, text_match

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = ["dog", "cat", "hot_air_balloon", "bicycle", "tree", "car", "sea_turtle"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip config in a folder and a seeded checkpoint file for it (no network)."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "configs").mkdir()
    (folder / "configs" / "TinyCLIP-vqa-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder / "configs")
    torch.manual_seed(1234)
    model = open_clip.create_model("TinyCLIP-vqa-test", pretrained=None)
    ckpt = folder / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return {"configs": folder / "configs", "ckpt": ckpt, "name": "TinyCLIP-vqa-test"}


def _embedder(tiny, **kw):
    return OpenClipTextEmbedder(tiny["name"], str(tiny["ckpt"]), config_dir=tiny["configs"], device="cpu", batch_size=4, **kw)


def test_tiny_open_clip_matches_an_independent_computation(tiny_clip, tmp_path):
    """Top-1/top-5 equal a direct computation with the open_clip model: every prediction and
    every (template, class) prompt encoded on its own, template means, cosine, argmax."""
    import open_clip
    import torch

    templates = ["a photo of a {}.", "a drawing of the {}.", "{}"]
    preds = ["dog", "Dog", "a red car", "dog", "balloon", "sea turtle", "", "tree tree"]
    targets = ["dog", "dog", "car", "dog", "hot_air_balloon", "sea_turtle", "cat", "tree"]
    emb = _embedder(tiny_clip)
    matcher = ClipMatcher(CLASSES, emb, templates=templates, cache_dir=tmp_path)
    res = matcher.score(preds, targets)

    model = open_clip.create_model(tiny_clip["name"], pretrained=str(tiny_clip["ckpt"])).eval()
    tok = open_clip.get_tokenizer(tiny_clip["name"])

    def enc(text):
        with torch.no_grad():
            v = model.encode_text(tok([text]))[0].numpy().astype(np.float64)
        return v / np.linalg.norm(v)

    cls = np.stack([np.mean([enc(t.format(c.replace("_", " "))) for t in templates], axis=0) for c in CLASSES])
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    sims = np.stack([enc(p) for p in preds]) @ cls.T
    want_top = np.argsort(-sims, axis=1)[:, :5]
    tgt = np.array([CLASSES.index(t) for t in targets])
    want1 = want_top[:, 0] == tgt
    want5 = (want_top == tgt[:, None]).any(axis=1)

    np.testing.assert_array_equal(res.correct_top1, want1.astype(float))
    np.testing.assert_array_equal(res.correct_top5, want5.astype(float))
    assert res.top1 == pytest.approx(100 * want1.mean())
    assert res.top5 == pytest.approx(100 * want5.mean())
    assert res.predicted == [CLASSES[i] for i in want_top[:, 0]]
    assert res.n == len(preds) and res.n_unique_predictions == 7  # "dog" repeated once


def test_token_level_dedup_embeds_case_variants_once(tiny_clip):
    emb = _embedder(tiny_clip)
    out = emb.encode(["Dog", "dog ", "DOG", "cat"])  # CLIP's tokenizer lower-cases and strips
    assert emb.texts_requested == 4 and emb.rows_embedded == 2
    assert emb.forward_calls == 1
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_class_embedding_cache_miss_hit_and_new_key(tiny_clip, tmp_path):
    first = ClipMatcher(CLASSES, _embedder(tiny_clip), templates="simple_imagenet", cache_dir=tmp_path)
    a = first.class_embeddings
    assert first.cache_hit is False
    path = first.cache_path()
    assert path is not None and path.is_file()

    counting = _embedder(tiny_clip)
    second = ClipMatcher(CLASSES, counting, templates="simple_imagenet", cache_dir=tmp_path)
    b = second.class_embeddings
    assert second.cache_hit is True
    assert counting.texts_requested == 0 and counting._model is None  # the model was not even built
    np.testing.assert_array_equal(a, b)
    # Scoring from the cached embeddings embeds only the predictions.
    second.score(["dog", "dog", "cat"], ["dog", "dog", "cat"])
    assert counting.texts_requested == 2

    other = ClipMatcher(CLASSES[:-1], _embedder(tiny_clip), templates="simple_imagenet", cache_dir=tmp_path)
    assert other.cache_path() != path
    other.class_embeddings
    assert other.cache_hit is False
    again = ClipMatcher(CLASSES, _embedder(tiny_clip), templates="none", cache_dir=tmp_path)
    assert again.cache_path() != path


def test_random_init_is_never_cached(tiny_clip, tmp_path):
    emb = OpenClipTextEmbedder(tiny_clip["name"], None, config_dir=tiny_clip["configs"], device="cpu")
    m = ClipMatcher(CLASSES, emb, templates="none", cache_dir=tmp_path)
    assert m.cache_path() is None
    m.class_embeddings
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_a_config_error():
    emb = OpenClipTextEmbedder("No-Such-Model-xyz", None, device="cpu")
    with pytest.raises(ConfigError, match="No-Such-Model-xyz"):
        emb.encode(["x"])


# --- hand-worked cases with a stub embedder ---------------------------------------------

class StubEmbedder:
    """Fixed vectors per word: a text's embedding is the normalised sum of its words' vectors."""

    def __init__(self, vectors: dict[str, list[float]], key: str | None = "stub-v1"):
        self.vectors = {k: np.asarray(v, dtype=np.float64) for k, v in vectors.items()}
        self.key = key
        self.calls: list[list[str]] = []

    @property
    def cache_key(self):
        return self.key

    def encode(self, texts):
        self.calls.append(list(texts))
        dim = len(next(iter(self.vectors.values())))
        out = np.zeros((len(texts), dim))
        for i, t in enumerate(texts):
            for w in t.split():
                out[i] += self.vectors.get(w, np.zeros(dim))
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n else out[i]
        return out.astype(np.float32)


def test_stub_is_a_text_embedder():
    assert isinstance(StubEmbedder({"a": [1.0]}), TextEmbedder)


def test_hand_worked_top1_top5_and_dedup(tmp_path):
    vec = {"dog": [1, 0, 0], "cat": [0, 1, 0], "car": [0, 0, 1], "puppy": [0.9, 0.1, 0], "kitten": [0.2, 1, 0]}
    stub = StubEmbedder(vec)
    m = ClipMatcher(["dog", "cat", "car"], stub, templates="none", cache_dir=tmp_path)
    preds = ["puppy", "kitten", "puppy", "car", "puppy"]
    # puppy -> dog, kitten -> cat, car -> car; with 3 classes top-5 holds every class.
    res = m.score(preds, ["dog", "dog", "dog", "car", 1])
    np.testing.assert_array_equal(res.correct_top1, [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(res.correct_top5, [1, 1, 1, 1, 1])
    assert res.top1 == pytest.approx(60.0) and res.top5 == pytest.approx(100.0)
    assert res.predicted == ["dog", "cat", "dog", "car", "dog"]
    # One call for the class prompts, one for the 3 distinct predictions (not 5).
    assert stub.calls[-1] == ["puppy", "kitten", "car"]


def test_template_mean_decides(tmp_path):
    # Without templates: x = (1, 0), y = (3, 1)/|.|; p = (0, 1) is closer to y (0.316 vs 0).
    # With "{} a" / "{} b" (a = b = (0, 3)): x's prompts = (0.1, 3)/|.| (cos 0.9994 with p),
    # y's prompts = (3, 4)/5 (cos 0.8), so the template mean makes p match x.
    vec = {"x": [0.1, 0], "y": [3, 1], "a": [0, 3], "b": [0, 3], "p": [0, 1]}
    stub = StubEmbedder(vec)
    with_templates = ClipMatcher(["x", "y"], stub, templates=["{} a", "{} b"], cache_dir=False)
    no_templates = ClipMatcher(["x", "y"], stub, templates="none", cache_dir=False)
    assert with_templates.score(["p"], ["x"]).top1 == 100.0
    assert no_templates.score(["p"], ["y"]).top1 == 100.0
    assert stub.calls[0] == ["x a", "x b", "y a", "y b"]


def test_underscores_read_as_spaces_in_prompts(tmp_path):
    stub = StubEmbedder({"hot": [1, 0], "air": [1, 0], "cat": [0, 1]})
    m = ClipMatcher(["hot_air", "cat"], stub, templates=["a {}."], cache_dir=False)
    m.class_embeddings
    assert stub.calls[0] == ["a hot air.", "a cat."]


def test_errors(tmp_path):
    stub = StubEmbedder({"a": [1, 0]})
    m = ClipMatcher(["a", "b"], stub, templates="none", cache_dir=False)
    with pytest.raises(DataError, match="not in the class list"):
        m.score(["a"], ["zebra"])
    with pytest.raises(DataError, match="outside"):
        m.score(["a"], [5])
    with pytest.raises(ConfigError):
        ClipMatcher(["a", "a"], stub)
    with pytest.raises(ConfigError):
        resolve_templates("no-such-set")
    with pytest.raises(ConfigError):
        resolve_templates(["no placeholder"])


def test_resolve_templates_from_open_clip():
    t = resolve_templates("openai_imagenet")
    assert len(t) == 80 and all(s.count("{}") == 1 for s in t)
    assert resolve_templates([lambda c: f"a photo of {c}."]) == ("a photo of {}.",)


# --- exact match / contains ------------------------------------------------------------

def test_exact_and_contains_by_hand():
    preds = ["Dog.", "a red fire truck", "cathedral", "hot air balloon", "Two", "tree"]
    targets = ["dog", "fire_truck", "cat", ["balloon", "hot_air_balloon"], "2", ["bush", "shrub"]]
    np.testing.assert_array_equal(exact_match(preds, targets), [1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(contains_match(preds, targets), [1, 1, 0, 1, 1, 0])
    tm = text_match(preds, targets)
    assert tm.exact_match == pytest.approx(50.0) and tm.contains == pytest.approx(400 / 6)


def test_text_match_errors():
    with pytest.raises(DataError):
        exact_match(["a"], [])
    with pytest.raises(DataError, match="no target"):
        contains_match(["a"], [[]])
