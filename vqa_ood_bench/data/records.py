"""The one record type every loader yields: :class:`VQARecord`.

Loaders for released datasets, the embedded suite and the HF hub all answer in this type, so
training, prediction, scoring and shift measurement never look at a dataset's own format.
Images stay on disk until :meth:`VQARecord.load_image` is called.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from ..errors import DataError

ImageRef = Union[str, Path, Image.Image]

ROLES = ("id", "near", "far")
SHIFT_TYPES = ("none", "vision", "question", "answer", "multimodal", "adversarial", "far")


def open_image(path: str | Path, *, record: object = None) -> Image.Image:
    """The image at ``path`` as RGB; a missing, unreadable or oversized file raises a DataError
    naming it (and ``record``, the question asking about it, where given).

    Every image the package opens goes through here. Images over PIL's ``MAX_IMAGE_PIXELS`` are
    refused, including those PIL would only warn about (up to twice the limit): no VQA image
    needs ~90 megapixels, decoding one costs hundreds of MB per batch, and a warning would be
    lost among a run's output while the run swaps.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.convert("RGB")
    except FileNotFoundError:
        raise DataError("image file not found", path=path, record=record) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image too large, refused as a possible decompression bomb ({exc})", path=path, record=record) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: truncated or non-image files, oversized text chunks
        raise DataError(f"unreadable image ({exc})", path=path, record=record) from None


@dataclass(frozen=True)
class VQARecord:
    """One question about one image, with every annotator's answer (order kept).

    ``question_id`` is a string because several released sets key questions by strings or
    repeat integer ids across image edits (IV-VQA); loaders make it unique within a split.
    ``answers`` may be empty only for unlabelled test splits (scoring then refuses them).
    """

    question_id: str
    image: ImageRef
    question: str
    answers: list[str] = field(default_factory=list)
    answer_type: str = ""
    question_type: str = ""
    dataset: str = ""
    split: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        qid = self.question_id
        if not isinstance(qid, str) or not qid:
            raise DataError(f"question_id must be a non-empty string, got {qid!r}", record=qid)
        if not isinstance(self.question, str):
            raise DataError(f"question must be a string, got {type(self.question).__name__}", record=qid)
        if not isinstance(self.answers, list) or not all(isinstance(a, str) for a in self.answers):
            raise DataError("answers must be a list of strings", record=qid)
        if not isinstance(self.image, (str, Path, Image.Image)):
            raise DataError(f"image must be a path or a PIL image, got {type(self.image).__name__}", record=qid)
        if not isinstance(self.meta, dict):
            raise DataError("meta must be a dict", record=qid)

    @property
    def image_path(self) -> Path | None:
        return None if isinstance(self.image, Image.Image) else Path(self.image)

    def load_image(self) -> Image.Image:
        """Open the image as RGB; a missing or unreadable file raises a DataError naming it."""
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        return open_image(self.image, record=self.question_id)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (image as a path string; in-memory images are not serialisable)."""
        if isinstance(self.image, Image.Image):
            raise DataError("an in-memory image cannot be written to JSON", record=self.question_id)
        return {
            "question_id": self.question_id,
            "image": str(self.image),
            "question": self.question,
            "answers": list(self.answers),
            "answer_type": self.answer_type,
            "question_type": self.question_type,
            "dataset": self.dataset,
            "split": self.split,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, root: str | Path | None = None) -> "VQARecord":
        """Inverse of :meth:`to_json`; a relative image path is resolved against ``root``."""
        image = obj["image"]
        if root is not None and not Path(image).is_absolute():
            image = str(Path(root) / image)
        return cls(
            question_id=str(obj["question_id"]),
            image=image,
            question=obj["question"],
            answers=list(obj.get("answers", [])),
            answer_type=obj.get("answer_type", ""),
            question_type=obj.get("question_type", ""),
            dataset=obj.get("dataset", ""),
            split=obj.get("split", ""),
            meta=dict(obj.get("meta", {})),
        )
