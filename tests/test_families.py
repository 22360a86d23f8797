"""Model families: training labels, generation, shift-feature positions, LoRA placement, parts,
batch invariance and detection, for every family with its tiny model.

PaliGemma runs on the shipped tiny model; LLaVA and Idefics3 on tiny random models built
offline (:func:`vqa_ood_bench.models.families.llava.build_tiny`, ``idefics3.build_tiny``). The
expectations are built by hand from the tokenizer and the sizes, not read back from the code
under test: the answer's token ids tokenized on their own, the image token count from the image
and patch sizes, the question's ids from tokenizing the prompt text alone.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from fixtures.mini_suite import register

from vqa_ood_bench.cli import main
from vqa_ood_bench.data.embedded.broad import all_words, make_example
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.models.families import detect_family, family_of, family_of_processor, get_family
from vqa_ood_bench.models.families.tiny import TinySizes
from vqa_ood_bench.numerics import fixed_cpu_numerics
from vqa_ood_bench.predict.generate import generate_answers
from vqa_ood_bench.shift.features import special_token_ids
from vqa_ood_bench.train.engine import TrainExample, VQACollator

FAMILY_NAMES = ("paligemma", "llava", "idefics3")
SIZES = TinySizes()
# image placeholders per image, by hand: PaliGemma's shipped model 64 px / 8 px patches; LLaVA one
# per patch (CLS dropped); Idefics3 one per 2 x 2 patches after the pixel shuffle
IMAGE_TOKENS = {
    "paligemma": (64 // 8) ** 2,
    "llava": (SIZES.image_size // SIZES.patch_size) ** 2,
    "idefics3": (SIZES.image_size // SIZES.patch_size) ** 2 // 4,
}
BATCH_SIZES = (1, 7, 20)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def tiny(request):
    """``(family name, model, processor)``."""
    name = request.param
    if name == "paligemma":
        from vqa_ood_bench.models.tiny_artifact import load_shipped

        model, processor, _ = load_shipped()
    else:
        import importlib

        module = importlib.import_module(f"vqa_ood_bench.models.families.{name}")
        model, processor = module.build_tiny(all_words(), SIZES)
    return name, model.eval(), processor


@pytest.fixture(scope="module")
def examples():
    # 20 questions of the pre-training mixture: prompts of several lengths share each batch
    exs = [make_example(5, i) for i in range(20)]
    return [e.image for e in exs], [e.prompt for e in exs], [e.answer for e in exs]


def _answer_end(name: str, tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<end_of_utterance>") if name == "idefics3" else tokenizer.eos_token_id


def _question_ids(name: str, tokenizer, prompt: str) -> list[int]:
    """The prompt's text tokens as the layout puts them, tokenized here on their own."""
    if name == "paligemma":  # <image>... <bos> prompt \n
        return tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]
    text = "<image>\n" + prompt if name == "llava" else "<image>" + prompt
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    return [t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t != image_id]


def test_family_is_found_from_the_model_and_the_processor(tiny) -> None:
    name, model, processor = tiny
    assert family_of(model).name == name
    assert family_of_processor(processor).name == name
    assert get_family(name) is family_of(model)


def test_a_training_step_labels_only_the_answer(tiny, examples) -> None:
    name, model, processor = tiny
    images, prompts, answers = (x[:4] for x in examples)
    tok = processor.tokenizer
    batch = VQACollator(processor, family_of(model))([TrainExample(i, p, a) for i, p, a in zip(images, prompts, answers)])
    labels, ids, attn = batch["labels"], batch["input_ids"], batch["attention_mask"]
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        want = tok(answer, add_special_tokens=False)["input_ids"] + [_answer_end(name, tok)]
        attended = attn[row].nonzero().flatten().tolist()
        answer_positions = attended[-len(want):]
        # the answer and its end token, at the end of the row's real tokens; nothing else
        assert labels[row][labels[row] != -100].tolist() == want, (name, answer)
        assert (labels[row] != -100).nonzero().flatten().tolist() == answer_positions
        assert ids[row, answer_positions].tolist() == want
        assert tok.decode(want, skip_special_tokens=True).strip() == answer
        # the prompt part is the prompt as generation sends it
        gen = get_family(name).generation_inputs(processor, [images[row]], [prompt])
        sent = gen["input_ids"][0][gen["attention_mask"][0].bool()].tolist()
        assert ids[row, attended[: -len(want)]].tolist() == sent

    trained = copy.deepcopy(model).train()
    out = trained(**batch)
    # the loss is the mean cross entropy of the next-token predictions at the labelled positions
    logits, targets = out.logits[:, :-1].float(), labels[:, 1:]
    by_hand = torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100])
    assert torch.isfinite(out.loss) and abs(out.loss.item() - by_hand.item()) < 1e-4
    out.loss.backward()
    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    torch.optim.SGD(trained.parameters(), lr=1e-2).step()
    changed = [n for n, p in trained.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed and torch.isfinite(trained(**batch).loss)


def _batched(model, processor, images, prompts, batch_size):
    out = []
    for i in range(0, len(prompts), batch_size):
        out += generate_answers(model, processor, images[i:i + batch_size], prompts[i:i + batch_size], max_new_tokens=3, details=True)
    return out


@pytest.fixture(scope="module")
def alone(tiny, examples):
    """Every question answered on its own: the reference."""
    _, model, processor = tiny
    with fixed_cpu_numerics(1):
        return _batched(model, processor, *examples[:2], 1)


def test_greedy_answers_do_not_depend_on_the_batch(tiny, examples, alone) -> None:
    name, model, processor = tiny
    images, prompts, _ = examples
    lengths = {len(processor.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) >= 3  # batches mix prompt lengths, so padding is exercised
    with fixed_cpu_numerics(1):
        runs = {bs: _batched(model, processor, images, prompts, bs) for bs in BATCH_SIZES[1:]}
    assert all(g.token_ids and g.image_tokens == IMAGE_TOKENS[name] for g in alone)
    assert len({tuple(g.token_ids) for g in alone}) >= 2  # the answers depend on the input
    for bs in BATCH_SIZES[1:]:
        assert runs[bs] == alone, (name, bs)  # answers, raw generations, token ids and prompts as sent


def test_right_padding_would_change_the_answers(tiny, examples, alone) -> None:
    """What the invariance test guards against is real for each family's model: padded on the
    right, a batch answers differently than its questions alone."""
    name, model, processor = tiny
    images, prompts, _ = examples
    family = family_of(model)
    with fixed_cpu_numerics(1):
        keys = family.generation_inputs(processor, images[:1], prompts[:1]).keys()  # the inputs generation sends
        encoded = processor(text=[family.prompt_text(processor, p) for p in prompts], images=images, return_tensors="pt",
                            padding="longest", padding_side="right")
        inputs = {k: encoded[k] for k in keys}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    right = family.decode(model, processor, inputs, out)
    assert sum(a.token_ids != b.token_ids for a, b in zip(right, alone)) >= 5, name


def test_shift_feature_positions_match_the_layout(tiny, examples) -> None:
    name, model, processor = tiny
    images, prompts, _ = (x[:5] for x in examples)
    family = family_of(model)
    inputs = family.feature_inputs(processor, images, prompts)
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    image_id = int(model.config.image_token_id)
    is_image, is_text, is_question = family.token_masks(ids, attn, image_id, special_token_ids(model, processor))
    tok = processor.tokenizer
    for row, prompt in enumerate(prompts):
        where = is_image[row].nonzero().flatten().tolist()
        assert len(where) == IMAGE_TOKENS[name] and where == list(range(where[0], where[0] + len(where)))  # one block
        assert ids[row, is_question[row]].tolist() == _question_ids(name, tok, prompt)
        assert not (is_image[row] & is_text[row]).any() and bool((is_image[row] | is_text[row]).eq(attn[row].bool()).all())
        if name == "idefics3":  # the frame around the image is neither image nor question
            frame = [tok.convert_tokens_to_ids(t) for t in ("<fake_token_around_image>", "<global-img>")]
            assert ids[row, where[0] - 2: where[0]].tolist() == frame and ids[row, where[-1] + 1].item() == frame[0]


def test_shift_features_of_every_family(tiny, examples) -> None:
    """Features through the family's processor path; the vision feature of a record equals the
    decoder run on that image's tokens alone (the independent reference of tests/test_features.py)."""
    import numpy as np

    from vqa_ood_bench.data.records import VQARecord
    from vqa_ood_bench.shift.features import FEATURE_KINDS, extract_features

    name, model, processor = tiny
    images, prompts, _ = (x[:6] for x in examples)
    questions = [p.removeprefix("answer en ") for p in prompts]
    recs = [VQARecord(question_id=f"q{i}", image=img, question=q, answers=["x"]) for i, (img, q) in enumerate(zip(images, questions))]
    fs = extract_features(model, processor, recs, batch_size=4)
    hidden = model.config.get_text_config().hidden_size
    for kind in FEATURE_KINDS:
        assert fs.arrays[kind].shape == (6, hidden) and np.isfinite(fs.arrays[kind]).all()
    assert np.abs(fs.arrays["vision"] - fs.arrays["joint"]).max() > 1e-4

    family = family_of(model)
    single = family.feature_inputs(processor, images[:1], ["answer en " + questions[0]])
    ids = torch.full((1, IMAGE_TOKENS[name]), int(model.config.image_token_id))
    with torch.no_grad():
        h = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), **family.text_only_inputs(ids),
                        **{k: single[k] for k in family.image_input_names if k in single}).last_hidden_state[0]
    np.testing.assert_allclose(fs.arrays["vision"][0], h.mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_lora_sits_on_the_language_models_attention_only(tiny) -> None:
    name, model, _ = tiny
    family = family_of(model)
    wrapped = family.apply_lora(copy.deepcopy(model), r=2, alpha=4)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    modules = {n.split(".lora_")[0] for n in trainable}
    assert trainable and all(".lora_" in n and family.part_of(n) == "language" for n in trainable)
    assert {m.rsplit(".", 1)[1] for m in modules} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(modules) == 4 * model.config.get_text_config().num_hidden_layers


def test_probe_head_and_parts(tiny) -> None:
    name, model, _ = tiny
    family = family_of(model)
    assert family.probe_head(model) is model.lm_head
    inner = model.model
    vision = inner.vision_model if name == "idefics3" else inner.vision_tower
    connector = inner.connector if name == "idefics3" else inner.multi_modal_projector
    language = inner.text_model if name == "idefics3" else inner.language_model
    by_part: dict[str, int] = {}
    for n, p in model.named_parameters():
        by_part[family.part_of(n)] = by_part.get(family.part_of(n), 0) + p.numel()
    assert by_part.pop("vision") == sum(p.numel() for p in vision.parameters())
    assert by_part.pop("connector") == sum(p.numel() for p in connector.parameters())
    head = 0 if model.lm_head.weight is language.get_input_embeddings().weight else model.lm_head.weight.numel()
    assert by_part.pop("language") == sum(p.numel() for p in language.parameters()) + head
    assert by_part == {}


def test_a_saved_checkpoint_is_detected_and_loads_with_the_same_answers(tiny, examples, tmp_path) -> None:
    name, model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    family = detect_family(str(tmp_path))
    assert family.name == name
    loaded, loaded_processor = family.load(str(tmp_path))
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    images, prompts, _ = (x[:6] for x in examples)
    # the processor: the same tokens, and pixel values up to the image backend's last bit (the
    # default backend on loading may be torchvision where the tiny one was built with PIL)
    here, there = (family.generation_inputs(p, images, prompts) for p in (processor, loaded_processor))
    assert torch.equal(here["input_ids"], there["input_ids"])
    assert torch.allclose(here["pixel_values"], there["pixel_values"], atol=1e-5)
    # the weights: the same answers from the same inputs
    with fixed_cpu_numerics(1):
        assert _batched(loaded.eval(), processor, images, prompts, 6) == _batched(model, processor, images, prompts, 6)


def test_an_unknown_model_type_is_one_clear_error(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"model_type 'bert'.*idefics3, llava, paligemma"):
        detect_family(str(tmp_path))
    assert main(["eval", "--model", str(tmp_path), "--suite", register(), "--out", str(tmp_path / "ev"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "'bert'" in err and "paligemma" in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--family", "gpt"], "--family: unknown model family 'gpt'; known: idefics3, llava, paligemma"),
    (["eval", "--model", "tiny", "--family", "nope"], "--family: unknown model family 'nope'"),
    (["run", "--family", "llava"], "the tiny model is a PaliGemma"),
])
def test_bad_family_options_give_one_line(capsys, argv, fragment) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["llava", "idefics3"])
def test_run_end_to_end_on_a_tiny_checkpoint(name, tmp_path) -> None:
    """`run --limit` trains LoRA, predicts and scores a family's checkpoint from a folder."""
    import importlib

    from vqa_ood_bench.report.schema import read_results

    model, processor = importlib.import_module(f"vqa_ood_bench.models.families.{name}").build_tiny(all_words(), SIZES)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    out = tmp_path / "run"
    suite = register()
    assert main(["run", "--model", str(folder), "--suite", suite, "--limit", "4", "--cpu-threads", "1", "--out", str(out), "--json"]) == 0
    results = read_results(out / "results.json")
    assert results.model.name_or_path == str(folder) and results.method_params["fit"]["steps"] == 1
    for split in results.splits.values():
        assert split.n == 4 and len((out / split.predictions_file).read_text().splitlines()) == 4
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_eval_of_a_run_told_its_family_takes_the_family_and_gives_the_runs_predictions(tmp_path) -> None:
    """A run made with `--family` records it beside its adapter; `eval --adapter RUN` uses it
    (no `--family` again) and reproduces the run's predictions byte for byte."""
    from vqa_ood_bench.models.families import llava
    from vqa_ood_bench.report.schema import read_results

    model, processor = llava.build_tiny(all_words(), SIZES)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    run, ev, suite = tmp_path / "run", tmp_path / "eval", register()
    assert main(["run", "--model", str(folder), "--family", "llava", "--suite", suite, "--limit", "4", "--cpu-threads", "1",
                 "--out", str(run), "--json"]) == 0
    assert json.loads((run / "adapter" / "vqa_ood_bench.json").read_text())["family"] == "llava"
    assert main(["eval", "--adapter", str(run), "--suite", suite, "--limit", "4", "--out", str(ev), "--json"]) == 0
    assert read_results(ev / "results.json").config["family"] == "llava"
    for split in read_results(run / "results.json").splits.values():
        assert (ev / split.predictions_file).read_bytes() == (run / split.predictions_file).read_bytes()
